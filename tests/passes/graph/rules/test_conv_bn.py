"""Rule set "conv_bn": a BatchNormalization after a Conv folds into the Conv's weights and bias."""

from __future__ import annotations

from collections import Counter

import numpy as np

from edgeopt.passes.graph.rules import apply_rule_sets

RNG = np.random.default_rng(0)


def _conv_bn_relu(shared_weight: bool = False):
    """x -> Conv(W, B) -> BatchNormalization -> Relu (+ a second Conv sharing W when `shared_weight`)."""
    from onnx import TensorProto, helper, numpy_helper

    c_in, c_out = 3, 4
    inits = {
        "W": RNG.standard_normal((c_out, c_in, 3, 3)).astype(np.float32),
        "B": RNG.standard_normal(c_out).astype(np.float32),
        "gamma": RNG.uniform(0.5, 1.5, c_out).astype(np.float32),
        "beta": RNG.standard_normal(c_out).astype(np.float32),
        "mean": RNG.standard_normal(c_out).astype(np.float32),
        "var": RNG.uniform(0.5, 1.5, c_out).astype(np.float32),
    }
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], epsilon=1e-3,
                              name="bn"),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if shared_weight:
        nodes.append(helper.make_node("Conv", ["x", "W"], ["y2"], pads=[1, 1, 1, 1], name="conv2"))
        outputs.append(helper.make_tensor_value_info("y2", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, 8, 8])],
                              outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def _run(model, x):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_batchnorm_folds_into_conv():
    model = _conv_bn_relu()
    fused, counts, replaced = apply_rule_sets(model, ["conv_bn"])
    assert Counter(n.op_type for n in fused.graph.node) == {"Conv": 1, "Relu": 1}
    assert counts == {"conv_bn": 1} and set(replaced["conv_bn"]) == {"conv", "bn"}
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(_run(fused, x)[0], _run(model, x)[0], atol=1e-4, rtol=1e-4)


def test_shared_weights_are_not_folded():
    model = _conv_bn_relu(shared_weight=True)
    fused, counts, _ = apply_rule_sets(model, ["conv_bn"])
    assert counts == {} and Counter(n.op_type for n in fused.graph.node)["BatchNormalization"] == 1
    x = RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)
    for a, b in zip(_run(fused, x), _run(model, x)):
        np.testing.assert_allclose(a, b)
