"""graph.simplify: onnxslim folds and prunes, keeps outputs, and leaves ONNX Runtime's attention fusion intact."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import onnx
import pytest
from helpers import cosine_rows, run_onnx
from onnx import TensorProto, helper, numpy_helper

from edgeopt.artifact import Artifact, sha256_file
from edgeopt.data import random_feeds
from edgeopt.errors import RecipeError
from edgeopt.passes.base import PassContext, build_pass, get_pass


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _min_cosine(a, b, feeds) -> float:
    return min(float(cosine_rows(x, y).min()) for x, y in zip(run_onnx(a, feeds), run_onnx(b, feeds)))


def _foldable(path):
    """y = x * (c1 + c2) + 0, with an Identity: a constant subgraph and two no-ops for onnxslim to remove."""
    c1, c2 = (numpy_helper.from_array(np.full(4, v, np.float32), n) for v, n in ((1.5, "c1"), (2.0, "c2")))
    zero = numpy_helper.from_array(np.zeros(4, np.float32), "zero")
    nodes = [helper.make_node("Add", ["c1", "c2"], ["c"]),
             helper.make_node("Identity", ["x"], ["xi"]),
             helper.make_node("Mul", ["xi", "c"], ["m"]),
             helper.make_node("Add", ["m", "zero"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [c1, c2, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return Artifact.from_onnx(path, meta={"family": "toy"})


FEEDS = [{"x": np.random.default_rng(i).standard_normal((3, 4)).astype(np.float32)} for i in range(3)]


def test_folds_constants_and_drops_dead_nodes(tmp_path):
    art = _foldable(tmp_path / "in.onnx")
    before = sha256_file(art.path)
    ctx = PassContext(stage_dir=tmp_path / "stage")
    out = build_pass("graph.simplify", {})(art, ctx)
    assert _ops(out.path) == {"Mul": 1}
    notes = ctx.notes["simplify"]
    assert notes["nodes_before"] == 4 and notes["nodes_after"] == 1
    assert notes["ops_before"] == {"Add": 2, "Identity": 1, "Mul": 1} and notes["ops_after"] == {"Mul": 1}
    assert _min_cosine(art.path, out.path, FEEDS) > 0.99999
    np.testing.assert_allclose(run_onnx(out.path, FEEDS)[0], FEEDS[0]["x"] * 3.5, rtol=1e-6)
    assert sha256_file(art.path) == before and out.path == tmp_path / "stage" / "model.onnx"
    assert out.meta == {"family": "toy"}
    assert not list((tmp_path / "stage").glob("*.tmp"))


def test_skip_constant_folding(tmp_path):
    art = _foldable(tmp_path / "in.onnx")
    simplify = build_pass("graph.simplify", {"skip_optimizations": ["constant_folding"]})
    out = simplify(art, PassContext(stage_dir=tmp_path / "s"))
    assert _ops(out.path)["Mul"] == 1 and _ops(out.path)["Add"] >= 1, "c1 + c2 is left unfolded"
    assert _min_cosine(art.path, out.path, FEEDS) > 0.99999


@pytest.mark.parametrize("fixture", ["tiny_mlp", "tiny_cnn"])
def test_small_models_keep_outputs(fixture, request, tmp_path):
    art = request.getfixturevalue(f"{fixture}_onnx")
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("graph.simplify", {})(art, ctx)
    assert ctx.notes["simplify"]["nodes_after"] <= ctx.notes["simplify"]["nodes_before"]
    assert ctx.notes["simplify"]["skipped_for_ort_fusion"] == {}, "no attention: onnxslim runs in full"
    feeds = random_feeds(art.input_spec, 2, {"batch": 2}, seed=1)
    assert _min_cosine(art.path, out.path, feeds) > 0.9999


def _ort_fused(path, num_heads=4, hidden_size=32) -> dict:
    from onnxruntime.transformers.optimizer import optimize_model

    logging.disable(logging.WARNING)
    try:
        stats = optimize_model(str(path), model_type="bert", num_heads=num_heads, hidden_size=hidden_size,
                               opt_level=0).get_fused_operator_statistics()
    finally:
        logging.disable(logging.NOTSET)
    return {k: v for k, v in stats.items() if v}


def _with_nonzero_biases(art, path):
    """The tiny BERT with every all-zero float tensor (its untrained biases) set to small random values."""
    model = onnx.load(str(art.path))
    rng = np.random.default_rng(0)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.dtype == np.float32 and a.size > 1 and not a.any():
            t.CopyFrom(numpy_helper.from_array((rng.standard_normal(a.shape) * 0.02).astype(np.float32), t.name))
    onnx.save(model, str(path))
    return Artifact.from_onnx(path, meta=dict(art.meta))


def test_default_keeps_ort_attention_fusion_that_full_onnxslim_breaks(tiny_bert_onnx, tiny_bert_feeds, tmp_path):
    art = _with_nonzero_biases(tiny_bert_onnx, tmp_path / "bert.onnx")
    assert _ort_fused(art.path)["Attention"] == 2
    ctx = PassContext(stage_dir=tmp_path / "safe")
    safe = build_pass("graph.simplify", {})(art, ctx)
    assert list(ctx.notes["simplify"]["skipped_for_ort_fusion"]) == ["EliminationReshape"]
    assert ctx.notes["simplify"]["nodes_after"] < ctx.notes["simplify"]["nodes_before"]
    fused = _ort_fused(safe.path)
    assert fused["Attention"] == 2 and fused["EmbedLayerNormalization"] == 1 and fused["BiasGelu"] == 2
    unsafe = build_pass("graph.simplify", {"keep_ort_fusable": False})(art, PassContext(stage_dir=tmp_path / "unsafe"))
    assert "Attention" not in _ort_fused(unsafe.path), "onnxslim in full loses the attention fusion"
    assert _min_cosine(art.path, safe.path, tiny_bert_feeds) > 0.9999


def test_zero_biases_keep_their_adds_then_fuse_gets_attention(tiny_bert_onnx, tiny_bert_feeds, tmp_path):
    ctx = PassContext(stage_dir=tmp_path / "simplify")
    simple = build_pass("graph.simplify", {})(tiny_bert_onnx, ctx)
    assert set(ctx.notes["simplify"]["skipped_for_ort_fusion"]) == {"EliminationReshape", "dead_node_elimination"}
    fctx = PassContext(stage_dir=tmp_path / "fuse")
    fused = build_pass("graph.fuse", {})(simple, fctx)
    assert _ops(fused.path)["Attention"] == 2 and fctx.notes["fusions"]["ort.Attention"] == 2
    assert fused.meta == tiny_bert_onnx.meta
    assert _min_cosine(tiny_bert_onnx.path, fused.path, tiny_bert_feeds) > 0.9999


def test_unknown_onnxslim_pattern_is_refused():
    with pytest.raises(ValueError, match="skip_fusion_patterns.*'FuseAll'.*EliminationReshape"):
        get_pass("graph.simplify").Config(skip_fusion_patterns=("FuseAll",))
    with pytest.raises(RecipeError, match="skip_optimizations"):
        build_pass("graph.simplify", {"skip_optimizations": ["folding"]})
