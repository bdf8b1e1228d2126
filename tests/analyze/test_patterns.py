"""Shared graph matchers: attention blocks and the Conv + activation pairs ONNX Runtime fuses in a session."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeopt.analyze.patterns import GraphIndex, find_attention, find_conv_activations


def _convs(acts: list[str], last_is_output: bool = False):
    """x -> (Conv -> act) per entry of `acts`, chained; with `last_is_output` the last Conv is also a graph output."""
    n = helper.make_node
    nodes, inits, cur = [], [], "x"
    for i, act in enumerate(acts):
        inits.append(numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), f"w{i}"))
        nodes += [n("Conv", [cur, f"w{i}"], [f"c{i}"], name=f"conv{i}"), n(act, [f"c{i}"], [f"a{i}"], name=f"act{i}")]
        cur = f"a{i}"
    outs = [helper.make_tensor_value_info(cur, TensorProto.FLOAT, None)]
    if last_is_output:
        outs.append(helper.make_tensor_value_info(f"c{len(acts) - 1}", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              outs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_conv_activations_are_the_ones_onnxruntime_fuses():
    found = find_conv_activations(_convs(["Relu", "Sigmoid", "HardSwish", "Elu", "LeakyRelu"]))
    assert found == [["conv0", "act0"], ["conv1", "act1"], ["conv4", "act4"]]  # not HardSwish, not Elu
    assert find_conv_activations(_convs(["Relu"], last_is_output=True)) == []  # the Conv's output is used twice


def test_attention_blocks_by_name_and_index(tiny_bert_onnx):
    model = onnx.load(str(tiny_bert_onnx.path))
    blocks = find_attention(model)
    assert blocks == find_attention(GraphIndex(model)) and len(blocks) == 2
    ops = {n.name: n.op_type for n in model.graph.node}
    assert all(ops[b[0]] == "MatMul" and ops[b[-2]] == "Softmax" and ops[b[-1]] == "MatMul" for b in blocks)
