"""FLOP and MAC counts against hand-computed values, and the activation-memory walk."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeopt.analyze.flops import activation_memory, count_flops, dim_bindings, prepare, total_flops


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])


def _vi(name, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _w(name, *shape):
    return numpy_helper.from_array(np.zeros(shape, np.float32), name)


def _count(model, **kw):
    p = prepare(model, **kw)
    return count_flops(p["model"], p["shapes"])


def _node(report, name):
    return next(n for n in report["nodes"] if n["name"] == name)


def test_matmul_with_bound_sequence_dim(tmp_path):
    m = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
               [_vi("x", ["batch", "sequence", 384])], [_vi("y", None)], [_w("w", 384, 1536)])
    assert dim_bindings(m, batch=1, seq_len=128) == {"batch": 1, "sequence": 128}
    r = _count(m, batch=1, seq_len=128)
    assert r["macs"] == 128 * 384 * 1536
    assert r["total"] == 2 * 128 * 384 * 1536
    assert _node(r, "mm")["output_shapes"] == [[1, 128, 1536]]
    onnx.save(m, str(tmp_path / "mm.onnx"))
    assert total_flops(tmp_path / "mm.onnx", batch=2, seq_len=64) == 2 * 2 * 64 * 384 * 1536


def test_gemm_trans_b_with_bias():
    m = _model([helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1, name="gemm")],
               [_vi("a", [4, 32])], [_vi("y", None)], [_w("w", 16, 32), _w("c", 16)])
    r = _count(m)
    assert r["macs"] == 4 * 16 * 32
    assert r["total"] == 2 * 4 * 16 * 32 + 4 * 16


def test_conv_grouped_and_depthwise():
    nodes = [helper.make_node("Conv", ["x", "wg", "bg"], ["g"], group=4, pads=[1, 1, 1, 1], name="grouped"),
             helper.make_node("Conv", ["g", "wd"], ["y"], group=16, pads=[1, 1, 1, 1], name="depthwise")]
    m = _model(nodes, [_vi("x", [1, 8, 16, 16])], [_vi("y", None)],
               [_w("wg", 16, 2, 3, 3), _w("bg", 16), _w("wd", 16, 1, 3, 3)])
    r = _count(m)
    grouped, depthwise = _node(r, "grouped"), _node(r, "depthwise")
    assert grouped["output_shapes"] == [[1, 16, 16, 16]]
    assert grouped["macs"] == 16 * 16 * 16 * (8 // 4) * 9  # out elements x C_in/group x kernel
    assert grouped["flops"] == 2 * grouped["macs"] + 16 * 16 * 16  # + bias
    assert depthwise["macs"] == 16 * 16 * 16 * 9
    assert r["total"] == grouped["flops"] + depthwise["flops"]


def test_conv_transpose():
    m = _model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], name="up")],
               [_vi("x", [1, 4, 8, 8])], [_vi("y", None)], [_w("w", 4, 2, 2, 2)])
    r = _count(m)
    assert _node(r, "up")["output_shapes"] == [[1, 2, 16, 16]]
    assert r["macs"] == 4 * 8 * 8 * 2 * 2 * 2  # each input element x (C_out/group) x kernel


def test_contrib_attention_and_composites():
    nodes = [helper.make_node("Attention", ["x", "w", "b"], ["a"], domain="com.microsoft", num_heads=4, name="attn"),
             helper.make_node("LayerNormalization", ["a", "g", "beta"], ["ln"], axis=-1, name="ln"),
             helper.make_node("Softmax", ["ln"], ["sm"], name="sm"),
             helper.make_node("Relu", ["sm"], ["y"], name="relu")]
    m = _model(nodes, [_vi("x", ["batch", "sequence", 32])], [_vi("y", None)],
               [_w("w", 32, 96), _w("b", 96), _w("g", 32), _w("beta", 32)],
               extra_opsets=[helper.make_opsetid("com.microsoft", 1)])
    r = _count(m, batch=1, seq_len=16)
    attn = _node(r, "attn")
    assert attn["macs"] == 16 * 32 * 96 + 2 * 16 * 16 * 32  # projections + Q·Kᵀ + P·V
    assert attn["flops"] == 2 * attn["macs"] + 16 * 96 + 7 * 4 * 16 * 16
    elems = 16 * 32
    assert _node(r, "ln")["flops"] == 7 * elems
    assert _node(r, "sm")["flops"] == 5 * elems
    assert _node(r, "relu")["flops"] == elems


def test_unknown_op_is_listed_not_guessed():
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Mystery", ["r"], ["y"], domain="my.ops", name="mystery")]
    m = _model(nodes, [_vi("x", [2, 8])], [_vi("y", None)], extra_opsets=[helper.make_opsetid("my.ops", 1)])
    r = _count(m)
    assert r["unestimated"] == {"my.ops.Mystery": 1}
    assert r["total"] == 16 and _node(r, "mystery")["flops"] == 0


def test_tiny_bert_matmul_macs_are_analytic(tiny_bert_onnx):
    model = onnx.load(str(tiny_bert_onnx.path))
    layers, hidden, inter = 2, 32, 64
    for seq in (16, 32):
        r = _count(model, batch=1, seq_len=seq)
        expected = layers * (4 * seq * hidden * hidden + 2 * seq * hidden * inter + 2 * seq * seq * hidden)
        assert r["by_op_type"]["MatMul"]["macs"] == expected
        assert r["total"] == sum(n["flops"] for n in r["nodes"])
        assert not r["unestimated"]


def test_activation_memory_frees_after_last_use():
    # x -> a = Relu(x) -> b = Relu(a) -> y = Add(a, b): `a` must stay alive until the Add
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2"),
             helper.make_node("Add", ["a", "b"], ["y"], name="n3")]
    m = _model(nodes, [_vi("x", [1, 1024])], [_vi("y", None)])
    p = prepare(m)
    mem = activation_memory(p["model"], p["shapes"])
    t = 1024 * 4
    assert mem["activation_peak_bytes"] == 3 * t  # a, b and y live together during n3
    assert mem["activation_peak_node"] == "n3"
    assert mem["activation_total_bytes"] == 4 * t  # x, a, b, y
    assert mem["input_bytes"] == t and mem["output_bytes"] == t
    assert mem["unknown_tensors"] == 0


def test_activation_memory_chain_keeps_two_alive():
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="n1"), helper.make_node("Relu", ["a"], ["b"], name="n2"),
             helper.make_node("Relu", ["b"], ["y"], name="n3")]
    m = _model(nodes, [_vi("x", [1, 512], TensorProto.FLOAT16)], [_vi("y", None, TensorProto.FLOAT16)])
    p = prepare(m)
    mem = activation_memory(p["model"], p["shapes"])
    assert mem["activation_peak_bytes"] == 2 * 512 * 2
    assert mem["activation_total_bytes"] == 4 * 512 * 2


def test_lstm_and_gru_macs_per_gate_bidirectional():
    seq, batch, inp, hid = 7, 2, 16, 32
    for op, gates in (("LSTM", 4), ("GRU", 3)):
        m = _model([helper.make_node(op, ["x", "W", "R"], ["y"], name="rnn", hidden_size=hid,
                                     direction="bidirectional")],
                   [_vi("x", [seq, batch, inp])], [_vi("y", None)],
                   [_w("W", 2, gates * hid, inp), _w("R", 2, gates * hid, hid)])
        node = _node(_count(m), "rnn")
        assert node["macs"] == 2 * seq * batch * gates * hid * (inp + hid), op  # input and recurrent products
        assert node["flops"] > 2 * node["macs"]  # plus the gates' pointwise work
