"""Rule set "gelu": GELU spelled with erf (or tanh) in PyTorch exports fuses into one com.microsoft op."""

from __future__ import annotations

import io
import math
import warnings
from collections import Counter

import numpy as np
import pytest

from edgeopt.passes.graph.rules import apply_rule_sets

X = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32) * 3


def _module(fn):
    import torch

    class Fn(torch.nn.Module):
        def forward(self, x):
            return fn(x)

    return Fn().eval()


def _export(module):
    import onnx
    import torch

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(X),), f, input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False)
    return onnx.load_from_string(f.getvalue())


def _ops(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node if n.op_type != "Constant")


def _run(model):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare the graphs as written
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]


def _spellings():
    import torch

    return {
        "nn.GELU": (torch.nn.GELU(), "Gelu"),
        "0.5*x*(1+erf(x/sqrt2))": (_module(lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))), "Gelu"),
        "x*0.5*(1+erf(x*0.7071))": (_module(lambda x: x * 0.5 * (1.0 + torch.erf(x * 0.7071067811865476))), "Gelu"),
        "x*(0.5*(erf(x/sqrt2)+1))": (_module(lambda x: x * (0.5 * (torch.erf(x / math.sqrt(2)) + 1))), "Gelu"),
        "nn.GELU(tanh)": (torch.nn.GELU(approximate="tanh"), "FastGelu"),
    }


@pytest.mark.parametrize("spelling", ["nn.GELU", "0.5*x*(1+erf(x/sqrt2))", "x*0.5*(1+erf(x*0.7071))",
                                      "x*(0.5*(erf(x/sqrt2)+1))", "nn.GELU(tanh)"])
def test_gelu_spellings_fuse_to_one_op(spelling):
    module, fused_op = _spellings()[spelling]
    model = _export(module)
    fused, counts, replaced = apply_rule_sets(model, ["gelu"])
    assert _ops(fused) == {fused_op: 1}, _ops(fused)
    node = next(iter(fused.graph.node))
    assert node.domain == "com.microsoft"
    assert counts == {"gelu": 1} and len(replaced["gelu"]) >= 5
    np.testing.assert_allclose(_run(fused), _run(model), atol=1e-5, rtol=1e-5)


def test_wrong_constant_is_not_gelu():
    import torch

    model = _export(_module(lambda x: 0.5 * x * (1 + torch.erf(x / 2.0))))
    fused, counts, _ = apply_rule_sets(model, ["gelu"])
    assert counts == {} and _ops(fused) == _ops(model)
    np.testing.assert_allclose(_run(fused), _run(model))
