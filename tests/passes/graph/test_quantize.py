"""graph.quantize_dynamic / graph.quantize_static: INT8 nodes appear and outputs stay close to float."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from helpers import cosine_rows, run_onnx

from edgeopt.artifact import sha256_file
from edgeopt.errors import PassError, RecipeError
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.target import get_target


def ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def test_dynamic_quantizes_matmuls_and_keeps_outputs(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    """Numbers only mean something on the host's own target: a model quantized for VNNI (full-range u8×s8)
    saturates on a CPU without VNNI, so the outputs are compared for the detected target."""
    before = sha256_file(tiny_mlp_onnx.path)
    ctx = PassContext(stage_dir=tmp_path, target=get_target("auto"))
    out = build_pass("graph.quantize_dynamic", {})(tiny_mlp_onnx, ctx)
    c = ops(out.path)
    assert c["MatMul"] == 0 and c["DynamicQuantizeLinear"] + c["MatMulInteger"] + c["DynamicQuantizeMatMul"] > 0
    assert out.size_bytes < tiny_mlp_onnx.size_bytes
    assert sha256_file(tiny_mlp_onnx.path) == before
    ref, got = run_onnx(tiny_mlp_onnx.path, tiny_mlp_feeds), run_onnx(out.path, tiny_mlp_feeds)
    assert min(cosine_rows(r, g).min() for r, g in zip(ref, got)) > 0.98


@pytest.mark.parametrize("declared, reduce_range", [("cpu-avx2", True), ("cpu-avx512-vnni", False)])
def test_dynamic_reduce_range_follows_target(tmp_path, tiny_mlp_onnx, declared, reduce_range):
    """A declared target sets the format whatever the host (structure only: its numbers belong to that CPU)."""
    ctx = PassContext(stage_dir=tmp_path, target=get_target(declared))
    out = build_pass("graph.quantize_dynamic", {})(tiny_mlp_onnx, ctx)
    assert ctx.notes["quantization"]["reduce_range"] is reduce_range
    assert ops(out.path)["MatMul"] == 0


def test_dynamic_exclude_keeps_node_float(tmp_path, tiny_mlp_onnx):
    model = onnx.load(str(tiny_mlp_onnx.path))
    first = next(n.name for n in model.graph.node if n.op_type in ("MatMul", "Gemm"))
    out = build_pass("graph.quantize_dynamic", {"exclude": [first]})(tiny_mlp_onnx, PassContext(stage_dir=tmp_path))
    kept = {n.name: n.op_type for n in onnx.load(str(out.path)).graph.node}
    assert kept.get(first) == "Gemm" or kept.get(f"{first}_MatMul") == "MatMul"
    assert any(op.startswith("DynamicQuantize") or "Integer" in op for op in kept.values())  # the other one is int8


def test_dynamic_warns_when_convolutions_become_conv_integer(tmp_path, tiny_cnn_onnx, tiny_mlp_onnx):
    """ConvInteger runs slowly on ONNX Runtime's CPU kernels (a CNN at 0.05x its fp32): the stage says so and how to
    avoid it; a model without convolutions gets no such warning, nor does one whose Convs stay float."""
    ctx = PassContext(stage_dir=tmp_path / "cnn")
    out = build_pass("graph.quantize_dynamic", {})(tiny_cnn_onnx, ctx)
    n = ops(out.path)["ConvInteger"]
    assert n > 0 and any(w.startswith(f"graph.quantize_dynamic: {n} Conv layer") and "graph.quantize_static" in w
                         for w in ctx.warnings)
    kept = PassContext(stage_dir=tmp_path / "kept")
    out = build_pass("graph.quantize_dynamic", {"op_types": ["MatMul", "Gemm"]})(tiny_cnn_onnx, kept)
    assert ops(out.path)["ConvInteger"] == 0 and not kept.warnings
    mlp = PassContext(stage_dir=tmp_path / "mlp")
    build_pass("graph.quantize_dynamic", {})(tiny_mlp_onnx, mlp)
    assert not mlp.warnings


def test_dynamic_quantizes_fused_bert_attention(tmp_path, tiny_bert_onnx, tiny_bert_feeds):
    out = build_pass("graph.quantize_dynamic", {})(tiny_bert_onnx, PassContext(stage_dir=tmp_path))
    c = ops(out.path)
    assert sum(v for k, v in c.items() if "Integer" in k or "Quantize" in k) > 0
    ref, got = run_onnx(tiny_bert_onnx.path, tiny_bert_feeds), run_onnx(out.path, tiny_bert_feeds)
    assert min(cosine_rows(r, g).min() for r, g in zip(ref, got)) > 0.95


@pytest.mark.parametrize("method", ["minmax", "percentile"])
def test_static_qdq_with_calibration(tmp_path, tiny_cnn_onnx, method):
    from edgeopt.data import random_feeds

    feeds = random_feeds(tiny_cnn_onnx.input_spec, 8, {"batch": 1}, seed=5)
    ctx = PassContext(stage_dir=tmp_path, calibration=feeds, target=get_target("npu-qdq"))
    out = build_pass("graph.quantize_static", {"method": method})(tiny_cnn_onnx, ctx)
    c = ops(out.path)
    assert c["QuantizeLinear"] > 0 and c["DequantizeLinear"] > 0
    assert ctx.notes["quantization"]["format"] == "QDQ"
    ref, got = run_onnx(tiny_cnn_onnx.path, feeds), run_onnx(out.path, feeds)
    assert min(cosine_rows(r, g).min() for r, g in zip(ref, got)) > 0.95


def test_static_needs_calibration(tmp_path, tiny_cnn_onnx):
    with pytest.raises(PassError, match="calibration"):
        build_pass("graph.quantize_static", {})(tiny_cnn_onnx, PassContext(stage_dir=tmp_path))


def test_bad_config_names_field():
    with pytest.raises(RecipeError, match="method"):
        build_pass("graph.quantize_static", {"method": "kmeans"})
    with pytest.raises(RecipeError, match="per_channel"):
        build_pass("graph.quantize_dynamic", {"per_channel": "sometimes"})


def test_fp16_keeps_io_float32(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    out = build_pass("graph.fp16", {})(tiny_mlp_onnx, PassContext(stage_dir=tmp_path))
    m = onnx.load(str(out.path))
    assert m.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in m.graph.initializer)
    assert out.size_bytes < 0.7 * tiny_mlp_onnx.size_bytes
    ref, got = run_onnx(tiny_mlp_onnx.path, tiny_mlp_feeds), run_onnx(out.path, tiny_mlp_feeds)
    assert min(cosine_rows(r, g).min() for r, g in zip(ref, got)) > 0.999


def _shared_bias_model(path, second: str, bias: float):
    """x -> Conv(W1, B) -> `second`, where B (the Conv's bias initializer) is read again by `second`: an Add
    ("add": y = conv + B) or a second Conv ("conv": y = Conv(Relu(conv), W2, B)); opset 13, 8 channels."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeopt.artifact import Artifact

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array((0.3 * rng.standard_normal((8, 4, 3, 3))).astype(np.float32), "W1"),
             numpy_helper.from_array((0.3 * rng.standard_normal((8, 8, 3, 3))).astype(np.float32), "W2"),
             numpy_helper.from_array(np.full(8, bias, np.float32), "B")]
    nodes = [helper.make_node("Conv", ["x", "W1", "B"], ["c"], pads=[1, 1, 1, 1], name="conv1")]
    if second == "add":  # B (8,) broadcasts over the last axis (width 8)
        nodes.append(helper.make_node("Add", ["c", "B"], ["y"], name="add"))
        inits.pop(1)
    elif second == "identity":  # both Convs read B through Identity nodes (the TorchScript exporter's sharing)
        nodes = [helper.make_node("Identity", ["B"], ["B1"], name="id1"), helper.make_node("Identity", ["B"], ["B2"], name="id2"),
                 helper.make_node("Conv", ["x", "W1", "B1"], ["c"], pads=[1, 1, 1, 1], name="conv1"),
                 helper.make_node("Relu", ["c"], ["r"], name="relu"),
                 helper.make_node("Conv", ["r", "W2", "B2"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    else:
        nodes += [helper.make_node("Relu", ["c"], ["r"], name="relu"),
                  helper.make_node("Conv", ["r", "W2", "B"], ["y"], pads=[1, 1, 1, 1], name="conv2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 8, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return Artifact.from_onnx(path)


@pytest.mark.parametrize("second, bias", [("add", 0.0), ("conv", 3.0), ("identity", 0.5)])
def test_static_qoperator_with_shared_conv_bias(tmp_path, second, bias):
    """A Conv bias initializer also read by another node: ONNX Runtime's quantizer used to hand its int32
    bias to the Add (QLinearAdd: the model did not load) or to the second Conv at the first one's scale."""
    from edgeopt.data import random_feeds
    from edgeopt.passes.base import get_pass

    art = _shared_bias_model(tmp_path / "in.onnx", second, bias)
    before = sha256_file(art.path)
    feeds = random_feeds(art.input_spec, 8, {"batch": 1}, seed=1)
    ctx = PassContext(stage_dir=tmp_path / "q", calibration=feeds, target=get_target("auto"))
    out = build_pass("graph.quantize_static", {"format": "QOperator"})(art, ctx)
    c = ops(out.path)
    assert c["QLinearConv"] == 2 if second != "add" else c["QLinearConv"] == 1 and c["QLinearAdd"] == 1
    assert ctx.notes["quantization"]["unshared_biases"] == (1 if second == "add" else 2)
    assert c["Identity"] == 0
    assert sha256_file(art.path) == before, "the input file is never modified"
    assert not [p for p in (tmp_path / "q").iterdir() if p.name != "model.onnx"], "the working copy is removed"
    ref, got = run_onnx(art.path, feeds), run_onnx(out.path, feeds)  # loads in ONNX Runtime
    assert min(cosine_rows(r, g).min() for r, g in zip(ref, got)) > get_pass("graph.quantize_static").tolerance


def test_unshare_biases_copies_only_shared_conv_gemm_biases(tmp_path):
    from edgeopt.passes.graph._quant import shared_biases, unshare_biases

    model = onnx.load(str(_shared_bias_model(tmp_path / "m.onnx", "conv", 1.0).path))
    assert [name for _, name in shared_biases(model)] == ["B", "B"]
    assert unshare_biases(model) == 2 and shared_biases(model) == []
    biases = [n.input[2] for n in model.graph.node if n.op_type == "Conv"]
    assert len(set(biases)) == 2 and "B" not in {i.name for i in model.graph.initializer}, "no reader left"
    onnx.checker.check_model(model)
    assert unshare_biases(onnx.load(str(_shared_bias_model(tmp_path / "a.onnx", "add", 0.0).path))) == 1
    via = onnx.load(str(_shared_bias_model(tmp_path / "i.onnx", "identity", 0.5).path))
    assert unshare_biases(via) == 2 and shared_biases(via) == []
    assert not [n for n in via.graph.node if n.op_type == "Identity"] and "B" not in {i.name for i in via.graph.initializer}
    onnx.checker.check_model(via)
