"""channels: one prune step (importance → policy → surgery) from a typed PruneStep, and its refusals."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeopt.passes.compress import channels, depgraph


def test_one_step_keeps_the_highest_scored_channels():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].weight.mul_(torch.arange(1.0, 9.0)[:, None])  # row i's l1 grows with i: rows 4..7 score highest
    example = (torch.randn(2, 4),)
    groups = depgraph.probe_groups(model, example)
    pruned = copy.deepcopy(model)
    counts, used = channels.prune_to(pruned, example, groups.original, 0.5, channels.PruneStep(round_to=1))
    assert counts == {"0": 4} and used == "l1"
    assert torch.equal(pruned[0].weight, model[0].weight[4:]) and torch.equal(pruned[2].weight, model[2].weight[:, 4:])


def test_step_refusals():
    with pytest.raises(ValueError, match="importance"):
        channels.PruneStep(importance="random")
    with pytest.raises(ValueError, match="max_layer_sparsity"):
        channels.PruneStep(max_layer_sparsity=1.0)
    with pytest.raises(ValueError, match="needs data"):
        channels.prune_to(torch.nn.Linear(2, 2), (torch.randn(1, 2),), {}, 0.5, channels.PruneStep(importance="taylor"))
