"""graph.quantize_mixed: sensitivity ranking, and float layers kept until the fidelity target holds."""

from __future__ import annotations

import onnx
import pytest
from helpers import cosine_rows, run_onnx

from edgeopt.errors import PassError
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.graph.mixed import _candidate_counts
from edgeopt.passes.graph._quant import quantizable_nodes


def test_candidate_counts_cover_all():
    assert _candidate_counts(10) == [0, 1, 2, 3, 4, 6, 9, 10]
    assert _candidate_counts(1) == [0, 1]


def test_mixed_ranks_every_layer_and_meets_target(tmp_path, tiny_bert_onnx, tiny_bert_feeds):
    ctx = PassContext(stage_dir=tmp_path, calibration=tiny_bert_feeds)
    out = build_pass("graph.quantize_mixed", {"min_mean_cosine": 0.9999, "min_cosine": None})(tiny_bert_onnx, ctx)
    ranking = ctx.notes["sensitivity"]
    layers = quantizable_nodes(tiny_bert_onnx.path)
    assert {r["node"] for r in ranking} == {n for n, _ in layers}
    drifts = [r["drift"] for r in ranking]
    assert drifts == sorted(drifts, reverse=True)
    q = ctx.notes["quantization"]
    names = {n.name for n in onnx.load(str(out.path)).graph.node}
    assert set(q["excluded"]) <= names  # excluded layers are still the float nodes
    assert [r["node"] for r in ranking[: q["kept_float"]]] == q["excluded"]
    ref, got = run_onnx(tiny_bert_onnx.path, tiny_bert_feeds), run_onnx(out.path, tiny_bert_feeds)
    cos = [cosine_rows(r, g)[0] for r, g in zip(ref, got)]
    assert sum(cos) / len(cos) >= 0.9999 - 1e-6


def test_mixed_without_data_fails(tmp_path, tiny_bert_onnx):
    with pytest.raises(PassError, match="calibration"):
        build_pass("graph.quantize_mixed", {})(tiny_bert_onnx, PassContext(stage_dir=tmp_path))
