"""Rule set "matmul_add": a 2-D MatMul plus bias becomes one Gemm; higher-rank MatMuls stay as they are."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from edgeopt.passes.graph.rules import apply_rule_sets

RNG = np.random.default_rng(0)


def _graph(x_shape: list, transpose_w: bool = False):
    """x @ W (+ W transposed first when `transpose_w`) + b, built with onnx.helper at opset 17."""
    from onnx import TensorProto, helper, numpy_helper

    w = RNG.standard_normal((6, 4) if transpose_w else (4, 6)).astype(np.float32)
    b = RNG.standard_normal(6).astype(np.float32)
    nodes = []
    w_name = "W"
    if transpose_w:
        nodes.append(helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0], name="t"))
        w_name = "Wt"
    nodes += [helper.make_node("MatMul", ["x", w_name], ["m"], name="mm"),
              helper.make_node("Add", ["m", "b"], ["y"], name="add")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _run(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("transpose_w", [False, True])
def test_2d_matmul_add_becomes_gemm(transpose_w):
    model = _graph([3, 4], transpose_w)
    fused, counts, replaced = apply_rule_sets(model, ["matmul_add"])
    ops = Counter(n.op_type for n in fused.graph.node)
    assert ops == {"Gemm": 1}, ops
    gemm = fused.graph.node[0]
    assert {a.name: a.i for a in gemm.attribute}.get("transB", 0) == int(transpose_w)
    assert counts == {"matmul_add": 1} and {"mm", "add"} <= set(replaced["matmul_add"])
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(fused, x), _run(model, x), atol=1e-5)


def test_3d_matmul_add_is_kept():
    model = _graph([2, 3, 4])
    fused, counts, _ = apply_rule_sets(model, ["matmul_add"])
    assert counts == {} and [n.op_type for n in fused.graph.node] == ["MatMul", "Add"]
    x = RNG.standard_normal((2, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(_run(fused, x), _run(model, x))
