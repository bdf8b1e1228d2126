"""compress.ofa: a supernet trained once per run folder, a subnet per budget, extracted dense and rebuildable."""

from __future__ import annotations

import pytest
import torch

from edgeopt.errors import RecipeError
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.compress.ofa import rebuild_ofa

SPACE = {"depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [2, 3], "resolutions": [24, 32],
         "widths": [8, 16], "strides": [2, 2], "stem_width": 8, "stem_stride": 2, "head_width": 16}
CFG = {"space": SPACE, "epochs": 3, "samples": 6, "trials": 30, "threads": 1, "limit": 400,
       "train": {"lr": 0.01, "batch_size": 32}}


def test_subnets_for_two_budgets_from_one_supernet(tiny_digits_resnet, tmp_path):
    runs = {}
    for name, budget in (("fast", 0.1), ("slow", 0.9)):
        ctx = PassContext(stage_dir=tmp_path / name)
        out = build_pass("compress.ofa", {**CFG, "budget": budget})(tiny_digits_resnet, ctx)
        runs[name] = (out, ctx.notes["compress.ofa"])
    (fast, nf), (slow, ns) = runs["fast"], runs["slow"]
    assert nf["cache"] == ns["cache"]  # the second budget reused the supernet, table and samples
    for out, n in runs.values():
        kinds = {type(m).__name__ for m in out.module.modules()}
        assert not kinds & {"ElasticKernelConv", "ElasticInvertedResidual", "OFANet"}
        assert out.module(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
        assert n["predicted_ms"] <= n["budget"] + 1e-9 and n["val_accuracy"] > 0.3  # 10 classes: chance is 0.1
        assert out.meta["ofa"] == n["subnet"]
    assert nf["budget"] < ns["budget"] and nf["complexity"]["macs"] <= ns["complexity"]["macs"]
    # the resume builder rebuilds the same architecture; the saved weights then give the same outputs
    rebuilt = rebuild_ofa(tiny_digits_resnet, fast.rebuild["args"], None)
    rebuilt.load_state_dict(fast.module.state_dict())
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), fast.module(x))


def test_bad_space_and_budget_are_recipe_errors():
    with pytest.raises(RecipeError, match="kernel_sizes"):
        build_pass("compress.ofa", {"space": {"kernel_sizes": [3, 4]}})
    with pytest.raises(RecipeError, match="budget"):
        build_pass("compress.ofa", {"budget": 1.5})
    with pytest.raises(RecipeError, match="space"):
        build_pass("compress.ofa", {"space": {"kernels": [3]}})
