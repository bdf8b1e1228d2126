"""Per-layer measurement of a kernel swap: peak intermediate bytes, captured inputs, before/after records."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from edgeopt.kernels.layer_stats import capture_inputs, compare_layer, compare_layers, first_tensor, peak_intermediate_bytes


def test_peak_intermediate_bytes_counts_what_is_allocated_and_not_returned():
    x = torch.randn(64, 64)  # 16 KiB

    def two_temporaries():
        a = x * 2  # 16 KiB
        b = a + 1  # 16 KiB, a still alive: peak 32 KiB
        del a
        c = b.exp_()  # in place: nothing new
        return c.sum()  # returned: not counted

    assert peak_intermediate_bytes(two_temporaries, keep=x) == 2 * 64 * 64 * 4
    assert peak_intermediate_bytes(lambda: x.t().reshape(-1).sum(), keep=x) == 64 * 64 * 4  # reshape copies
    assert peak_intermediate_bytes(lambda: x.t().unsqueeze(-1).sum(), keep=x) == 0  # views are free
    w = torch.randn(8, 8)
    assert peak_intermediate_bytes(lambda: (w.t() @ w).relu(), keep=()) == 8 * 8 * 4  # a view of a weight is free


def test_capture_inputs_clones_the_first_call_of_each_named_module():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    x = torch.randn(3, 4)
    cap = capture_inputs(model, ["0", "2", "1"], x)
    assert set(cap) == {"0", "1", "2"}
    (a,), kw = cap["0"]
    assert kw == {} and torch.equal(a, x) and a.data_ptr() != x.data_ptr()
    assert cap["2"][0][0].shape == (3, 4)
    assert [h for m in model.modules() for h in m._forward_pre_hooks.values()] == []


def test_compare_layers_records_latency_memory_and_error_for_each_layer():
    torch.manual_seed(0)
    norm, act = nn.GroupNorm(2, 8), nn.SiLU()
    x = torch.randn(2, 8, 5, 5)

    def fused(t):
        return nn.functional.silu(nn.functional.group_norm(t, 2, norm.weight, norm.bias), inplace=True)

    items = {"gn": {"before": lambda t: act(norm(t)), "after": fused, "args": (x,), "label_before": "GroupNorm -> SiLU",
                    "label_after": "fused"},
             "scaled": {"before": lambda t: t * 2, "after": lambda t: t * 2 + 1e-3, "args": (x,)}}
    rec = compare_layers(items, runs=2, threads=1)
    json.dumps(rec)
    gn = rec["gn"]
    assert gn["before"] == "GroupNorm -> SiLU" and gn["input_shapes"] == [[2, 8, 5, 5]] and gn["batch"] == 2
    assert gn["rel_error"] == 0 and gn["max_abs_error"] == 0
    assert gn["latency_ms"]["before"] > 0 and gn["latency_ms"]["after"] > 0
    assert gn["throughput_per_s"]["after"] == pytest.approx(1000 * 2 / gn["latency_ms"]["after"])
    assert gn["speedup"] == pytest.approx(gn["latency_ms"]["before"] / gn["latency_ms"]["after"])
    out_bytes = x.numel() * 4
    assert gn["peak_intermediate_bytes"] == {"before": out_bytes, "after": 0}  # the pair keeps the norm output
    assert rec["scaled"]["max_abs_error"] == pytest.approx(1e-3, rel=1e-3) and rec["scaled"]["rel_error"] > 0
    assert gn["threads"] == 1 and gn["runs"] == 2


def test_compare_layer_refuses_a_different_output_shape():
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="output shape"):
        compare_layer(lambda t: t, lambda t: t[:2], (x,), runs=1)
    rec = compare_layer(lambda t: t + 1, lambda t: 1 + t, (x,), runs=1)
    assert rec["rel_error"] == 0


def test_first_tensor_of_module_outputs():
    t = torch.ones(2)
    assert first_tensor(t) is t and first_tensor((t, None)) is t and first_tensor({"a": [t]}) is t
    with pytest.raises(ValueError, match="no tensor"):
        first_tensor((None, 3))
