"""benchmarks/cnn_compression.py: MACs from the exported graphs, heads counted, checks that can fail."""

from __future__ import annotations

import copy

import torch
from torch import nn

from edgeopt.report.claims import exit_code


def _course_rows(cnn, fp32_b16=3.0, int8_b16=3.5):
    row = {"b16_speedup": fp32_b16, "b1_speedup": 1.5, "drop_points": 0.5}
    return {cnn.FP32_FINAL: row, cnn.INT8_FINAL: {**row, "b16_speedup": int8_b16}}


def test_course_claims_fail_on_a_slow_final_and_the_fastest_final_is_a_statement(load_benchmark):
    cnn = load_benchmark("cnn_compression")
    claims = cnn.course_claims(_course_rows(cnn))
    assert exit_code(claims) == 0 and claims[-1].holds is None and "INT8" in claims[-1].numbers
    slow = cnn.course_claims(_course_rows(cnn, fp32_b16=2.0, int8_b16=3.0))
    assert slow[0].holds is False and exit_code(slow) == 1
    lossy = _course_rows(cnn)
    lossy[cnn.INT8_FINAL]["drop_points"] = 2.0
    assert exit_code(cnn.course_claims(lossy)) == 1


def test_depthwise_claims_compare_graph_ratios_with_the_prediction(load_benchmark):
    cnn = load_benchmark("cnn_compression")
    replaced = {"a": {"predicted_ratio": 7.0}, "b": {"predicted_ratio": 8.0}}
    assert [c.holds for c in cnn.depthwise_claims(replaced, {"a": 7.0, "b": 8.0}, 0.5)] == [True, True]
    assert cnn.depthwise_claims(replaced, {"a": 7.0, "b": 7.5}, 0.5)[0].holds is False
    assert cnn.depthwise_claims(replaced, {"a": 7.0, "b": None}, 0.5)[0].holds is False  # a conv not found
    assert cnn.depthwise_claims({}, {}, 0.5)[0].holds is False  # nothing replaced: nothing shown
    assert cnn.depthwise_claims(replaced, {"a": 7.0, "b": 8.0}, 2.0)[1].holds is False


class _Block(nn.Module):
    def __init__(self, separable: bool):
        super().__init__()
        self.conv = (nn.Sequential(nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16), nn.ReLU(),
                                   nn.Conv2d(16, 32, 1)) if separable else nn.Conv2d(16, 32, 3, padding=1))

    def forward(self, x):
        return self.conv(x).relu()


class _Net(nn.Module):
    def __init__(self, separable: bool):
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.block = _Block(separable)
        self.head = nn.Linear(32, 2)

    def forward(self, x):
        return self.head(self.block(self.stem(x)).mean((2, 3)))


def test_graph_macs_of_a_rewritten_conv_match_flops_reduction(load_benchmark, tmp_path):
    from edgeopt.load import load_model
    from edgeopt.passes.compress.depthwise import flops_reduction

    cnn = load_benchmark("cnn_compression")
    macs = {}
    for sep in (False, True):
        torch.manual_seed(0)
        art = load_model(_Net(sep).eval(), {"image": torch.randn(1, 3, 8, 8)})
        macs[sep] = cnn.onnx_macs_by_module(cnn.to_onnx(art, tmp_path / str(sep)).path)
    assert macs[False]["block.conv"] == 8 * 8 * 16 * 32 * 9
    assert macs[False]["stem"] == macs[True]["stem"] == 8 * 8 * 3 * 16 * 9 and macs[True]["head"] == 32 * 2
    ratio = cnn.graph_ratio(macs[False], macs[True], "block.conv")
    assert abs(ratio - flops_reduction(16, 32, 3, 8)) < 1e-12
    assert cnn.graph_ratio(macs[False], macs[True], "nowhere") is None


def test_heads_are_counted_from_the_model(load_benchmark, tiny_bert_torch):
    from edgeopt.passes.compress.prune_heads import find_attention

    cnn = load_benchmark("cnn_compression")
    model = copy.deepcopy(tiny_bert_torch.module)
    assert cnn.count_heads(model, head_dim=8) == 8  # 2 layers x 4 heads of 8
    units, _ = find_attention(model)
    units[0].set_heads([0, 1])
    assert cnn.count_heads(model, head_dim=8) == 6
    rows = {"50% heads pruned + KD": {"speedup": 1.3, "mean_cosine": 0.95}}
    half = {"MiniLM-L6 fp32": 8, "50% heads pruned + KD": 4}
    assert exit_code(cnn.heads_claims(rows, half)) == 0
    assert cnn.heads_claims(rows, {**half, "50% heads pruned + KD": 6})[0].holds is False
