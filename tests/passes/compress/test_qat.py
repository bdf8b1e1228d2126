"""quant.qat: a QDQ ONNX model that computes what the fake-quantized PyTorch model computes, next to PTQ."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import run_onnx

from edgeopt.errors import RecipeError
from edgeopt.passes.base import build_pass
from edgeopt.passes.compress import qat
from edgeopt.zoo import digits as d


def test_qat_exports_qdq_and_compares_with_ptq(tiny_digits_cnn, ctx):
    state = {k: v.clone() for k, v in tiny_digits_cnn.module.state_dict().items()}
    out = build_pass("quant.qat", {"limit": 512, "train": {"epochs": 1, "lr": 1e-3}})(tiny_digits_cnn, ctx)
    assert out.kind == "onnx" and out.path.parent == ctx.stage_dir
    ops = [n.op_type for n in onnx.load(str(out.path)).graph.node]
    n_layers = ctx.notes["quant.qat"]["quantized_layers"]
    assert ops.count("QuantizeLinear") >= 2 * n_layers and ops.count("DequantizeLinear") >= 3 * n_layers
    inits = {i.name: i for i in onnx.load(str(out.path)).graph.initializer}
    assert ctx.notes["quant.qat"]["int8_weight_initializers"] == n_layers
    assert sum(i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1 for i in inits.values()) == n_layers
    assert "BatchNormalization" not in ops, "BatchNorm folded before QAT"
    graph = onnx.load(str(out.path)).graph
    consumers = {i: [m.op_type for m in graph.node if i in m.input] for n in graph.node for i in n.output}
    acts = [n for n in graph.node if n.op_type in ("Clip", "Relu")]
    assert ctx.notes["quant.qat"]["activations_before_output_quant"] == len(acts) > 0
    assert all(consumers[a.output[0]] == ["QuantizeLinear"] for a in acts), "outputs quantized after the activation"
    producer = {o: n.op_type for n in graph.node for o in n.output}
    assert all(producer[a.input[0]] in ("Conv", "Gemm", "MatMul") for a in acts), "no Q/DQ between layer and activation"
    notes = ctx.notes["quant.qat"]
    assert notes["batchnorm"] == "folded" and notes["metric"] == "accuracy"
    for k in ("score_float", "score_qat_torch", "score_qat_onnx", "score_ptq_onnx", "score_float_onnx"):
        assert 0.5 <= notes[k] <= 1.0, k
    assert abs(notes["score_qat_onnx"] - notes["score_qat_torch"]) <= 0.02, "ONNX runs what PyTorch trained"
    assert notes["score_qat_onnx"] >= notes["score_float"] - 0.05
    assert all(torch.equal(tiny_digits_cnn.module.state_dict()[k], v) for k, v in state.items()), "input untouched"
    x = d.load_split("test")[0][:8]
    got = run_onnx(out.path, [{"image": x}])[0]
    with torch.no_grad():
        ref = tiny_digits_cnn.module(torch.from_numpy(x.copy())).numpy()
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.75 and np.abs(got - ref).max() < 5


def test_fake_quant_matches_integer_arithmetic():
    """A wrapped Linear computes dequant(quant(x)) @ dequant(quant(W)).T + b."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 3)
    fq = qat._fq_class()(lin, (0, 255), True, 0.1, quant_output=False)
    x = torch.randn(16, 6)
    fq(x)  # observe
    fq.mode = "frozen"
    s, z = float(fq.in_scale), int(fq.in_zero)
    xq = (torch.clamp(torch.round(x / s) + z, 0, 255) - z) * s
    ws = lin.weight.abs().amax(1, keepdim=True) / 127
    wq = torch.clamp(torch.round(lin.weight / ws), -128, 127) * ws
    assert torch.allclose(fq.eval()(x), xq @ wq.T + lin.bias, atol=1e-5)


def test_bad_config():
    with pytest.raises(RecipeError, match="activation_type"):
        build_pass("quant.qat", {"activation_type": "int4"})
