"""depgraph: channel groups sorted into safe / output-coupled, and cutting groups to given channel counts."""

from __future__ import annotations

import copy

import torch

from edgeopt.passes.compress import depgraph


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                               torch.nn.Conv2d(8, 12, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(12, 5)).eval()


def test_groups_and_counts():
    model, example = _net(), (torch.randn(2, 1, 8, 8),)
    groups = depgraph.probe_groups(model, example)
    assert sorted(groups.safe) == ["0", "3"] and groups.output_coupled == ["7"] and not groups.skipped
    assert groups.original == {"0": 8, "3": 12}
    assert model[0].out_channels == 8, "probing works on a copy"
    pruned = copy.deepcopy(model)
    depgraph.prune_counts(pruned, example, {"0": 4, "3": 6})
    assert (pruned[0].out_channels, pruned[1].num_features, pruned[3].in_channels) == (4, 4, 4)
    assert (pruned[3].out_channels, pruned[7].in_features) == (6, 6)
    assert depgraph.channel_counts(pruned, example, ["0", "3"]) == {"0": 4, "3": 6}
    assert pruned(*example).shape == (2, 5)
