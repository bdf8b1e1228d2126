"""Rule set "layernorm": hand-decomposed layer norms exported by PyTorch fuse into one LayerNormalization."""

from __future__ import annotations

import io
import warnings
from collections import Counter

import numpy as np
import pytest

from edgeopt.passes.graph.rules import apply_rule_sets


class DecomposedLayerNorm:
    """Factory of a torch module computing layer norm op by op (torch would export nn.LayerNorm as one op)."""

    @staticmethod
    def make(dim: int, affine: bool = True, rsqrt: bool = False, axis: int = -1, residual: bool = False):
        import torch

        class Module(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.w = torch.nn.Parameter(torch.randn(dim)) if affine else None
                self.b = torch.nn.Parameter(torch.randn(dim)) if affine else None

            def forward(self, x):  # x: (B, T, D)
                mean = x.mean(axis, keepdim=True)  # (B, T, 1)
                d = x - mean
                var = d.pow(2).mean(axis, keepdim=True)  # (B, T, 1)
                n = d * torch.rsqrt(var + 1e-5) if rsqrt else d / torch.sqrt(var + 1e-5)
                if self.w is None:
                    return n
                n = n * self.w
                return n + x if residual else n + self.b  # a residual is not a bias

        return Module().eval()


def _export(module, opset: int):
    import onnx
    import torch

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(2, 5, 8),), f, input_names=["x"], output_names=["y"],
                          opset_version=opset, dynamo=False)
    return onnx.load_from_string(f.getvalue())


def _ops(model) -> Counter:
    return Counter(n.op_type for n in model.graph.node if n.op_type != "Constant")


def _run(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare the graphs as written
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


def _assert_same(a, b, x):
    np.testing.assert_allclose(_run(a, x), _run(b, x), atol=2e-5, rtol=1e-4)


X = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)


@pytest.mark.parametrize("opset", [17, 18])  # ReduceMean axes: attribute at 17, input at 18
def test_affine_layernorm_fuses_with_scale_and_bias(opset):
    model = _export(DecomposedLayerNorm.make(8), opset)
    fused, counts, replaced = apply_rule_sets(model, ["layernorm"])
    ops = _ops(fused)
    assert ops == {"LayerNormalization": 1}, ops
    ln = next(n for n in fused.graph.node if n.op_type == "LayerNormalization")
    assert len(ln.input) == 3, "scale and bias both folded in"
    assert counts == {"layernorm": 2}  # the norm, then its bias
    assert len(replaced["layernorm"]) == 9
    _assert_same(model, fused, X)


@pytest.mark.parametrize("rsqrt", [False, True])  # d / sqrt(v)  or  d * (1 / sqrt(v))
def test_layernorm_without_affine_gets_unit_scale(rsqrt):
    model = _export(DecomposedLayerNorm.make(8, affine=False, rsqrt=rsqrt), 17)
    fused, counts, _ = apply_rule_sets(model, ["layernorm"])
    assert _ops(fused) == {"LayerNormalization": 1}
    assert counts == {"layernorm": 1}
    _assert_same(model, fused, X)


def test_residual_add_is_not_taken_as_bias():
    model = _export(DecomposedLayerNorm.make(8, residual=True), 17)
    fused, counts, _ = apply_rule_sets(model, ["layernorm"])
    ops = _ops(fused)
    assert ops["LayerNormalization"] == 1 and ops["Add"] == 1 and "ReduceMean" not in ops
    _assert_same(model, fused, X)


@pytest.mark.parametrize("opset,axis", [(13, -1), (17, 1)])
def test_declines_below_opset_17_and_off_last_axis(opset, axis):
    dim = 8 if axis == -1 else 5
    model = _export(DecomposedLayerNorm.make(dim, affine=False, axis=axis), opset)
    fused, counts, _ = apply_rule_sets(model, ["layernorm"])
    assert counts == {} and _ops(fused) == _ops(model) and "LayerNormalization" not in _ops(fused)
    _assert_same(model, fused, X)
