"""prune.channels: channel counts after pruning, equivalence when nothing is pruned, the accuracy floor,
skipped layers, latency-aware mode, and the policy rules on their own."""

from __future__ import annotations

import pytest
import torch

from edgeopt import train as tr
from edgeopt.errors import RecipeError
from edgeopt.passes.base import build_pass
from edgeopt.passes.compress import policy
from edgeopt.zoo import digits as d

FAST = {"train": {"epochs": 0}, "floor": None, "limit": 256, "round_to": 1}


def _convs(model):
    return {n: (m.in_channels, m.out_channels) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}


def _test_acc(art):
    return tr.evaluate(art.module, d.tensor_data("test"))


def test_layer_scope_halves_every_group_and_keeps_the_classifier(tiny_digits_cnn, ctx):
    before = {k: v.clone() for k, v in tiny_digits_cnn.module.state_dict().items()}
    out = build_pass("prune.channels", {**FAST, "sparsity": 0.5, "round_to": 4})(tiny_digits_cnn, ctx)
    notes = ctx.notes["prune.channels"]
    assert notes["output_coupled"] == ["classifier"] and not notes["skipped"]
    for name, g in notes["groups"].items():
        assert g["after"] % 4 == 0 or g["after"] == g["before"], name
        assert g["after"] == max(4, round(g["before"] * 0.5 / 4) * 4) or g["before"] <= 4, name
    conv_before, conv_after = _convs(tiny_digits_cnn.module), _convs(out.module)
    assert conv_after["features.0.0"][1] == conv_before["features.0.0"][1] // 2
    assert out.module.classifier.out_features == 10
    assert notes["params_after"] < 0.5 * notes["params_before"]
    x = tiny_digits_cnn.meta["example_inputs"]["image"]
    assert out.module(x).shape == (1, 10)
    assert all(torch.equal(tiny_digits_cnn.module.state_dict()[k], v) for k, v in before.items()), "input untouched"


def test_zero_sparsity_is_the_same_function(tiny_digits_cnn, ctx):
    out = build_pass("prune.channels", {**FAST, "sparsity": 0.0})(tiny_digits_cnn, ctx)
    x = torch.from_numpy(d.load_split("test")[0][:16].copy())
    with torch.no_grad():
        assert torch.allclose(out.module(x), tiny_digits_cnn.module(x), atol=1e-6)
    assert ctx.notes["prune.channels"]["params_after"] == ctx.notes["prune.channels"]["params_before"]


@pytest.mark.parametrize("importance", ["l2", "bn_scale", "taylor", "activation"])
def test_every_importance_prunes_to_target(tiny_digits_cnn, ctx, importance):
    out = build_pass("prune.channels", {**FAST, "sparsity": 0.5, "importance": importance})(tiny_digits_cnn, ctx)
    notes = ctx.notes["prune.channels"]
    assert notes["rounds"][0]["importance_used"] == importance
    assert notes["channel_sparsity"] == pytest.approx(0.5, abs=0.05)
    assert out.module(tiny_digits_cnn.meta["example_inputs"]["image"]).shape == (1, 10)


def test_global_scope_prunes_layers_unevenly(tiny_digits_cnn, ctx):
    build_pass("prune.channels", {**FAST, "sparsity": 0.5, "scope": "global"})(tiny_digits_cnn, ctx)
    notes = ctx.notes["prune.channels"]
    ratios = {round(g["after"] / g["before"], 2) for g in notes["groups"].values()}
    assert len(ratios) > 2 and notes["channel_sparsity"] == pytest.approx(0.5, abs=0.02)
    assert all(g["after"] >= 0.2 * g["before"] - 1 for g in notes["groups"].values()), "max_layer_sparsity holds"


def test_rounds_with_fine_tuning_recover_accuracy(tiny_digits_cnn, ctx):
    base = _test_acc(tiny_digits_cnn)
    out = build_pass("prune.channels", {"sparsity": 0.4, "rounds": 2, "round_to": 1, "floor": 0.5,
                                        "train": {"epochs": 3, "lr": 1e-2}})(tiny_digits_cnn, ctx)
    notes = ctx.notes["prune.channels"]
    assert [r["accepted"] for r in notes["rounds"]] == [True, True] and notes["metric"] == "accuracy"
    assert notes["channel_sparsity"] == pytest.approx(0.4, abs=0.05)
    assert _test_acc(out) >= base - 0.08, "a few epochs of fine-tuning per round keep the tiny model close"


def test_floor_keeps_the_last_model_above_it(tiny_digits_cnn, ctx):
    out = build_pass("prune.channels", {**FAST, "sparsity": 0.9, "max_layer_sparsity": 0.95, "floor": 1.0})(tiny_digits_cnn, ctx)
    notes = ctx.notes["prune.channels"]
    assert notes["rounds"][0]["accepted"] is False and notes["channel_sparsity"] == 0
    assert _convs(out.module) == _convs(tiny_digits_cnn.module), "no round met the floor: the input model is kept"
    assert any("floor" in w for w in ctx.warnings)


class _HardReshape(torch.nn.Module):
    """conv2's output is flattened with a hard-coded size: pruning conv2 breaks the forward pass."""

    def __init__(self):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = torch.nn.BatchNorm2d(8)
        self.conv2 = torch.nn.Conv2d(8, 4, 3, stride=8, padding=1)
        self.fc = torch.nn.Linear(4 * 4 * 4, 10)

    def forward(self, x):
        h = self.conv2(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(h.reshape(x.shape[0], 64))


def test_unprunable_layer_is_skipped_with_a_warning(ctx):
    art = d.artifact(_HardReshape().eval(), "hard-reshape")
    out = build_pass("prune.channels", {**FAST, "sparsity": 0.5})(art, ctx)
    notes = ctx.notes["prune.channels"]
    assert "conv2" in notes["skipped"] and any("conv2" in w for w in ctx.warnings)
    assert out.module.conv1.out_channels == 4 and out.module.conv2.out_channels == 4
    assert out.module(art.meta["example_inputs"]["image"]).shape == (1, 10)


def test_latency_aware_records_measured_latency_and_macs(tiny_digits_cnn, ctx):
    build_pass("prune.channels", {**FAST, "sparsity": 0.5, "latency_aware": True, "latency_runs": 3,
                                  "scope": "global"})(tiny_digits_cnn, ctx)
    lat = ctx.notes["prune.channels"]["latency"]
    assert set(lat["group_ms"]) == set(ctx.notes["prune.channels"]["groups"])
    assert all(v > 0 for v in lat["group_ms"].values()) and all(v > 0 for v in lat["group_macs"].values())
    assert lat["rank_correlation_ms_vs_macs"] is not None


@pytest.mark.parametrize("field,value", [("sparsity", 1.0), ("floor", 0.0), ("floor", 1.2), ("importance", "random")])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(RecipeError, match=field):
        build_pass("prune.channels", {field: value})


def test_policy_rounding_and_caps():
    assert policy.round_keep(37.0, 64, 64, 8) == 40 and policy.round_keep(3.0, 64, 64, 8) == 8
    assert policy.round_keep(30.0, 6, 6, 8) == 6, "a group smaller than one multiple keeps what it has"
    assert policy.round_keep(0.2, 5, 5, 1) == 1, "never zero channels"
    groups = [policy.GroupPlan("a", 16, 16, torch.arange(16.0) + 1), policy.GroupPlan("b", 16, 16, torch.ones(16))]
    policy.plan_global(groups, 0.5, 1, 0.75)
    assert sum(g.keep for g in groups) == 16 and min(g.keep for g in groups) >= 4
    slow = [policy.GroupPlan("fast", 32, 32, torch.ones(32), cost=1.0), policy.GroupPlan("slow", 32, 32, torch.ones(32), cost=3.0)]
    policy.plan_layer(slow, 0.5, 1, 0.9)
    assert slow[1].keep < slow[0].keep and sum(g.keep for g in slow) == 32, "latency-aware: slow groups lose more"
    assert policy.channel_multiple(type("T", (), {"isa": ("avx2",), "arch": "x86_64"})()) == 8
