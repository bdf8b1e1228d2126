"""Pattern detection (attention, LayerNorm, GELU, Conv+BN, ...), merging with graph.fuse, int8 shares, advice."""

from __future__ import annotations

import types

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeopt.analyze import opportunities
from edgeopt.analyze.flops import count_flops, prepare
from edgeopt.analyze.opportunities import (find_opportunities, find_patterns, fusion_opportunities, int8_summary,
                                           merge_findings, suggest_passes)
from edgeopt.analyze.patterns import find_attention


def _rules(findings):
    return {f["rule"]: f for f in findings}


def _c(name, value):
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _decomposed_ln_gelu():
    """x -> LayerNorm written out op by op -> GELU (erf form) written out op by op."""
    n = helper.make_node
    nodes = [
        n("ReduceMean", ["x"], ["mu"], axes=[-1], name="ln_mean"),
        n("Sub", ["x", "mu"], ["d"], name="ln_sub"),
        n("Pow", ["d", "two"], ["d2"], name="ln_pow"),
        n("ReduceMean", ["d2"], ["var"], axes=[-1], name="ln_var"),
        n("Add", ["var", "eps"], ["ve"], name="ln_eps"),
        n("Sqrt", ["ve"], ["std"], name="ln_sqrt"),
        n("Div", ["d", "std"], ["xn"], name="ln_div"),
        n("Mul", ["xn", "gamma"], ["xs"], name="ln_scale"),
        n("Add", ["xs", "beta"], ["h"], name="ln_bias"),
        n("Div", ["h", "sqrt2"], ["hd"], name="gelu_div"),
        n("Erf", ["hd"], ["e"], name="gelu_erf"),
        n("Add", ["e", "one"], ["e1"], name="gelu_add"),
        n("Mul", ["h", "e1"], ["he"], name="gelu_mul"),
        n("Mul", ["he", "half"], ["y"], name="gelu_half"),
    ]
    inits = [_c("two", 2.0), _c("eps", 1e-5), _c("gamma", np.ones(16)), _c("beta", np.zeros(16)),
             _c("sqrt2", np.sqrt(2.0)), _c("one", 1.0), _c("half", 0.5)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 8, 16])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def test_attention_found_in_tiny_bert(tiny_bert_onnx):
    model = onnx.load(str(tiny_bert_onnx.path))
    found = _rules(find_patterns(model))
    names = {n.name: n.op_type for n in model.graph.node}
    assert found["attention"]["count"] == 2  # one per layer
    for match in found["attention"]["nodes"]:
        ops = [names[x] for x in match]
        assert ops[0] == "MatMul" and ops[-1] == "MatMul" and "Softmax" in ops
    assert found["gelu_erf"]["count"] == 2
    assert found["skip_layernorm"]["count"] >= 4  # the residual Adds before each encoder LayerNorm
    assert found["matmul_add"]["count"] == 12  # q, k, v, out, ffn1, ffn2 per layer
    assert found["attention"]["pass"] == "graph.fuse"
    assert found["identity"]["pass"] == "graph.simplify"


def test_layernorm_and_gelu_written_out():
    found = _rules(find_patterns(_decomposed_ln_gelu()))
    assert found["layernorm_decomposed"]["count"] == 1
    assert found["layernorm_decomposed"]["nodes"][0] == ["ln_mean", "ln_sub", "ln_pow", "ln_var", "ln_eps", "ln_sqrt",
                                                          "ln_div", "ln_scale", "ln_bias"]
    assert found["gelu_erf"]["count"] == 1
    assert sorted(found["gelu_erf"]["nodes"][0]) == sorted(["gelu_div", "gelu_erf", "gelu_add", "gelu_mul", "gelu_half"])
    assert "rmsnorm_decomposed" not in found  # a centred LayerNorm is not an RMS norm


def test_analysis_reports_what_graph_fuse_rewrites():
    """Analysis runs graph.fuse's own rule sets: where a rule declines (LayerNormalization needs opset 17),
    no LayerNorm is reported; what the rules fuse is reported with the nodes they replace."""
    from edgeopt.passes.graph.rules import apply_rule_sets

    model = _decomposed_ln_gelu()
    old = onnx.ModelProto()
    old.CopyFrom(model)
    old.opset_import[0].version = 13
    found = _rules(find_patterns(old))
    assert "layernorm_decomposed" not in found and apply_rule_sets(old, ["layernorm"])[1] == {}
    assert found["gelu_erf"]["count"] == 1
    _, counts, replaced = apply_rule_sets(model, ["layernorm", "gelu"])
    found = _rules(find_patterns(model))
    assert counts == {"layernorm": 2, "gelu": 1}  # the norm, then its bias, as one reported match
    assert found["layernorm_decomposed"]["nodes"] == [replaced["layernorm"]]
    assert sorted(found["gelu_erf"]["nodes"][0]) == sorted(replaced["gelu"])


def test_rmsnorm_written_out():
    n = helper.make_node
    nodes = [n("Pow", ["x", "two"], ["x2"], name="p"), n("ReduceMean", ["x2"], ["ms"], axes=[-1], name="m"),
             n("Add", ["ms", "eps"], ["mse"], name="a"), n("Sqrt", ["mse"], ["r"], name="s"),
             n("Div", ["x", "r"], ["y"], name="d")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [_c("two", 2.0), _c("eps", 1e-6)]))
    found = _rules(find_patterns(model))
    assert found["rmsnorm_decomposed"]["nodes"] == [["p", "m", "a", "s", "d"]]
    assert "layernorm_decomposed" not in found


def test_conv_activation_in_tiny_cnn(tiny_cnn_onnx):
    # the exporter folds BatchNormalization into the convs (eval mode), leaving Conv -> Relu
    found = _rules(find_patterns(onnx.load(str(tiny_cnn_onnx.path))))
    assert found["conv_activation"]["count"] == 2
    assert found["conv_activation"]["pass"] == "onnxruntime session"
    assert "conv_bn" not in found


def test_conv_bn_relu():
    n = helper.make_node
    nodes = [n("Conv", ["x", "w"], ["c"], name="conv"),
             n("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"], name="bn"),
             n("Relu", ["bn"], ["y"], name="relu")]
    inits = [_c("w", np.ones((4, 3, 3, 3))), _c("s", np.ones(4)), _c("b", np.zeros(4)), _c("m", np.zeros(4)),
             _c("v", np.ones(4))]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])
    found = _rules(find_patterns(helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))))
    assert found["conv_bn"]["nodes"] == [["conv", "bn", "relu"]]
    assert "conv_activation" not in found  # the Relu belongs to the Conv+BN match


def test_merge_prefers_graph_fuse():
    ours = [{"rule": "attention", "count": 1, "nodes": [["a", "b"]], "pass": "graph.fuse", "source": "analyze"},
            {"rule": "gelu_erf", "count": 1, "nodes": [["g1", "g2"]], "pass": "graph.fuse", "source": "analyze"},
            {"rule": "matmul_add", "count": 1, "nodes": [["m", "ad"]], "pass": "graph.fuse", "source": "analyze"}]
    theirs = [{"rule": "Attention", "count": 1, "nodes": [["a", "b", "c"]]},          # same name, other spelling
              {"rule": "gelu", "count": 1, "nodes": [["g2", "g1"]]},                  # same nodes
              {"rule": "bias_softmax", "count": 0, "nodes": []}]                      # matched nothing
    merged = _rules(merge_findings(ours, theirs))
    assert set(merged) == {"Attention", "gelu", "matmul_add"}
    assert merged["Attention"]["source"] == "graph.fuse" and merged["Attention"]["pass"] == "graph.fuse"
    assert merged["matmul_add"]["source"] == "analyze"
    # graph.fuse's own shape: one flat list of names over all matches, `handled_by` and `detail`
    flat = [{"rule": "gemm", "count": 1, "nodes": ["m", "ad", "other"], "handled_by": "onnxruntime session",
             "detail": "MatMul+Add"}]
    merged = _rules(merge_findings(ours, flat))
    assert "matmul_add" not in merged and "gelu_erf" in merged
    assert merged["gemm"]["pass"] == "onnxruntime session" and merged["gemm"]["description"] == "MatMul+Add"


def test_fusion_opportunities_uses_graph_fuse_when_present(monkeypatch):
    fake = types.SimpleNamespace()  # stands in for graph.fuse's findings
    fake.find_opportunities = lambda model: [{"rule": "custom_rule", "count": 2, "nodes": ["ln_mean", "ln_sub"]}]
    monkeypatch.setattr(opportunities, "find_opportunities", lambda model, matches=None: fake.find_opportunities(model))
    found, warnings = fusion_opportunities(_decomposed_ln_gelu(), {"ln_mean": 10, "ln_sub": 5})
    rules = _rules(found)
    assert rules["custom_rule"]["source"] == "graph.fuse" and rules["custom_rule"]["flops"] == 15
    assert "layernorm_decomposed" in rules and not warnings

    def broken(model):
        raise RuntimeError("boom")

    fake.find_opportunities = broken
    found, warnings = fusion_opportunities(_decomposed_ln_gelu())
    assert "gelu_erf" in _rules(found) and "boom" in warnings[0]


def test_find_opportunities_reports_without_rewriting(tiny_bert_onnx, tiny_cnn_onnx):
    model = onnx.load(str(tiny_bert_onnx.path))
    snapshot = model.SerializeToString()
    found = {f["rule"]: f for f in find_opportunities(model)}
    assert model.SerializeToString() == snapshot, "the model passed in is not changed"
    assert found["attention"]["count"] == 2 and found["attention"]["handled_by"] == "graph.fuse"
    assert found["gelu"]["count"] == 2 and any("Erf" in n for n in found["gelu"]["nodes"])
    assert set(found) == {"attention", "gelu"}
    assert len(find_attention(model)) == 2 and all("Softmax" in b[-2] for b in find_attention(model))
    cnn = {f["rule"]: f for f in find_opportunities(onnx.load(str(tiny_cnn_onnx.path)))}
    assert cnn["conv_activation"]["count"] == 2 and cnn["conv_activation"]["handled_by"] == "onnxruntime session"


def test_int8_shares_and_suggestions(tiny_bert_onnx, tiny_cnn_onnx):
    bert = onnx.load(str(tiny_bert_onnx.path))
    p = prepare(bert, seq_len=16)
    flops = count_flops(p["model"], p["shapes"])
    quant = int8_summary(bert, flops)
    assert quant["quantizable_flops_share"] > 0.8 and quant["int8_flops_share"] == 0
    assert "LayerNormalization" in {r["op_type"] for r in quant["no_int8_ops"]}
    only = int8_summary(bert, flops, no_int8_ops=("Softmax",))
    assert [r["op_type"] for r in only["no_int8_ops"]] == ["Softmax"] and only["no_int8_source"] == "target"
    assert abs(only["no_int8_flops_share"] - flops["by_op_type"]["Softmax"]["share"]) < 1e-12
    passes = [s["pass"] for s in suggest_passes(find_patterns(bert), quant, flops, {"name": "cpu"})]
    assert passes == ["graph.simplify", "graph.fuse", "graph.quantize_dynamic"]
    assert [s["pass"] for s in suggest_passes([], quant, flops, {"name": "cuda"})] == ["graph.fp16"]

    cnn = onnx.load(str(tiny_cnn_onnx.path))
    p = prepare(cnn)
    flops = count_flops(p["model"], p["shapes"])
    advice = suggest_passes(find_patterns(cnn), int8_summary(cnn, flops), flops, None)
    assert [s["pass"] for s in advice] == ["graph.quantize_static"]  # Conv+Relu is fused by the runtime itself


def test_lstm_counts_as_int8_capable_and_gru_as_float_only():
    from edgeopt.target import ORT_CPU_NO_INT8_OPS

    hid, inp = 8, 4
    w = lambda n, g, k: numpy_helper.from_array(np.zeros((1, g * hid, k), np.float32), n)  # noqa: E731
    nodes = [helper.make_node("LSTM", ["x", "Wl", "Rl"], ["yl"], name="lstm", hidden_size=hid),
             helper.make_node("GRU", ["x", "Wg", "Rg"], ["yg"], name="gru", hidden_size=hid)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 1, inp])],
                          [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("yl", "yg")],
                          [w("Wl", 4, inp), w("Rl", 4, hid), w("Wg", 3, inp), w("Rg", 3, hid)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    p = prepare(m)
    flops = count_flops(p["model"], p["shapes"])
    for no_int8 in (None, ORT_CPU_NO_INT8_OPS):  # the default list and the ORT CPU target's
        q = int8_summary(p["model"], flops, no_int8_ops=no_int8)
        assert "GRU" in {r["op_type"] for r in q["no_int8_ops"]}
        lstm_share = flops["by_op_type"]["LSTM"]["share"]
        assert abs(q["quantizable_flops_share"] - lstm_share) < 1e-9  # LSTM counts, GRU does not
