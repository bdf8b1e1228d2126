"""Depthwise-separable building blocks: exact savings that match the exported graphs, the layer, the rewrite."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.nn import separable as S


def _graph_conv_macs(module: nn.Module, x: torch.Tensor, tmp_path, name: str) -> tuple[int, int]:
    """(MACs, FLOPs) of the Conv nodes of `module`'s exported ONNX graph, counted by edgeopt.analyze."""
    import onnx

    from edgeopt.analyze.flops import count_flops, prepare

    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(module.eval(), (x,), str(path), input_names=["x"], opset_version=17, dynamo=False)
    p = prepare(onnx.load(str(path)))
    rep = count_flops(p["model"], p["shapes"])
    convs = [n for n in rep["nodes"] if n["op_type"] == "Conv"]
    return sum(n["macs"] for n in convs), sum(n["flops"] for n in convs)


def test_reduction_for_64_to_128_at_56_is_8_4x_and_matches_the_exported_graphs(tmp_path):
    r = S.compute_flops_reduction(64, 128, 3, 56)
    assert r["reduction_ratio"] == pytest.approx(128 * 9 / (9 + 128)) and round(r["reduction_ratio"], 1) == 8.4
    assert r["dense_flops"] == 2 * r["dense_macs"] == 2 * 56 * 56 * 64 * 128 * 9
    x = torch.randn(1, 64, 56, 56)
    dense_macs, dense_flops = _graph_conv_macs(nn.Conv2d(64, 128, 3, padding=1, bias=False), x, tmp_path, "dense")
    sep_macs, sep_flops = _graph_conv_macs(S.DepthwiseSeparableConv2d(64, 128, 3), x, tmp_path, "sep")
    assert (dense_macs, sep_macs) == (r["dense_macs"], r["separable_macs"])
    # the exported separable layer has its BatchNorms folded into conv biases: one add per output element more
    assert dense_flops == r["dense_flops"]
    assert sep_flops == r["separable_flops"] + 56 * 56 * (64 + 128)
    assert dense_macs / sep_macs == pytest.approx(r["reduction_ratio"])


def test_bad_sizes_name_the_field():
    with pytest.raises(ValueError, match="in_channels must be positive"):
        S.compute_flops_reduction(0, 8, 3, 4)
    with pytest.raises(ValueError, match="kernel_size must be >= 1"):
        S.DepthwiseSeparableConv2d(8, 8, kernel_size=0)
    with pytest.raises(ValueError, match="multiplier must be > 0"):
        S.apply_width_multiplier(32, 0)


def test_layer_shapes_and_width_multiplier():
    layer = S.DepthwiseSeparableConv2d(16, 32, kernel_size=3, stride=2, activation="relu6")
    assert layer(torch.randn(2, 16, 20, 20)).shape == (2, 32, 10, 10)
    assert layer.depthwise[0].groups == 16 and isinstance(layer.pointwise[2], nn.ReLU6)
    assert S.apply_width_multiplier(32, 0.5) == 16 and S.apply_width_multiplier([32, 64, 24], 0.75) == [24, 48, 24]
    assert S.apply_width_multiplier(10, 0.5) == 8  # never below 8, a multiple of 8


def test_replace_convs_in_place_keeps_shapes_and_skips_what_it_cannot_handle():
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, padding=1),
                          nn.Conv2d(64, 64, 1), nn.Conv2d(64, 64, 3, padding=1, groups=64),
                          nn.Conv2d(64, 48, 5, stride=2, padding=2))
    x = torch.randn(1, 3, 16, 16)
    before = model(x).shape
    report: dict = {}
    n = S.replace_conv_with_depthwise_separable(model, min_channels=32, report=report)
    assert n == 2 and sorted(report["replaced"]) == ["2", "5"]
    assert report["skipped"] == {"0": "3→32 channels < min_channels 32", "3": "1×1 kernel",
                                 "4": "already grouped (groups=64)"}
    assert model(x).shape == before
    dw = model[2][0]
    assert isinstance(dw, nn.Conv2d) and dw.groups == 32 and dw.kernel_size == (3, 3)
    assert model[5][0].stride == (2, 2) and model[5][0].kernel_size == (5, 5)
    skip = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1))
    assert S.replace_conv_with_depthwise_separable(skip, exclude=lambda name: name == "0") == 0
