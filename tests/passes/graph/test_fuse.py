"""graph.fuse: rule sets plus ONNX Runtime's transformer optimizer; notes, errors, what analysis reports before."""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import pytest
from helpers import cosine_rows, run_onnx

from edgeopt.artifact import sha256_file
from edgeopt.errors import RecipeError
from edgeopt.passes.base import PassContext, build_pass, get_pass
from edgeopt.analyze.opportunities import find_opportunities
from edgeopt.passes.graph.fuse import resolve_rule_sets


def _ops(path) -> Counter:
    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


def _min_cosine(a, b, feeds) -> float:
    return min(float(cosine_rows(x, y).min()) for x, y in zip(run_onnx(a, feeds), run_onnx(b, feeds)))


def test_tiny_bert_gets_attention_fusion(tiny_bert_onnx, tiny_bert_feeds, tmp_path):
    before = sha256_file(tiny_bert_onnx.path)
    ctx = PassContext(stage_dir=tmp_path / "fuse")
    out = build_pass("graph.fuse", {})(tiny_bert_onnx, ctx)
    ops = _ops(out.path)
    assert ops["Attention"] == 2 and ops["SkipLayerNormalization"] == 4
    assert ops["EmbedLayerNormalization"] == 1 and ops["BiasGelu"] == 2
    assert "Softmax" not in ops and "Erf" not in ops
    assert ctx.notes["fusions"] == {"gelu": 2, "ort.Attention": 2, "ort.SkipLayerNormalization": 4,
                                    "ort.EmbedLayerNormalization": 1, "ort.BiasGelu": 2}
    assert ctx.notes["fuse"]["ort_transformer"] == "bert"
    assert _min_cosine(tiny_bert_onnx.path, out.path, tiny_bert_feeds) > 0.9999
    assert sha256_file(tiny_bert_onnx.path) == before, "input file untouched"
    assert out.path == tmp_path / "fuse" / "model.onnx" and out.meta == tiny_bert_onnx.meta


def test_without_ort_optimizer_only_rules_fire(tiny_bert_onnx, tiny_bert_feeds, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("graph.fuse", {"rules": "transformer", "ort_transformer": False})(tiny_bert_onnx, ctx)
    ops = _ops(out.path)
    assert ops["Gelu"] == 2 and "Erf" not in ops and "Attention" not in ops
    assert ctx.notes["fusions"] == {"gelu": 2}
    assert _min_cosine(tiny_bert_onnx.path, out.path, tiny_bert_feeds) > 0.9999


def test_mlp_gelu_fused(tiny_mlp_onnx, tiny_mlp_feeds, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("graph.fuse", {"rules": ["gelu", "layernorm"]})(tiny_mlp_onnx, ctx)
    ops = _ops(out.path)
    assert ops["Gelu"] == 1 and "Erf" not in ops and ops["LayerNormalization"] == 1
    assert ctx.notes["fusions"] == {"gelu": 1} and ctx.notes["fuse"]["ort_transformer"] is None
    assert _min_cosine(tiny_mlp_onnx.path, out.path, tiny_mlp_feeds) > 0.9999


def test_cnn_conv_activation_left_to_runtime(tiny_cnn_onnx, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("graph.fuse", {"rules": "cnn"})(tiny_cnn_onnx, ctx)
    assert _ops(out.path) == _ops(tiny_cnn_onnx.path), "the exporter folded BN already; nothing to do"
    assert ctx.notes["fusions"] == {} and ctx.notes["fuse"]["left_to_runtime"] == {"conv_activation": 2}
    feeds = [{"x": np.random.default_rng(i).standard_normal((2, 3, 16, 16)).astype(np.float32)} for i in range(2)]
    assert _min_cosine(tiny_cnn_onnx.path, out.path, feeds) > 0.9999


def test_presets_and_unknown_rule_names():
    assert resolve_rule_sets("cnn") == ["conv_bn", "matmul_add"]
    assert resolve_rule_sets(("gelu", "transformer")) == ["layernorm", "gelu", "matmul_add"]
    cfg = get_pass("graph.fuse").Config
    with pytest.raises(ValueError, match="rules.*'gelus'.*known: layernorm, gelu"):
        cfg(rules=("gelus",))
    with pytest.raises(RecipeError, match="rules"):
        build_pass("graph.fuse", {"rules": "nope"})
    with pytest.raises(RecipeError, match="ort_transformer.*'bertt'"):
        build_pass("graph.fuse", {"ort_transformer": "bertt"})


def _conv_bn_model(path):
    """x -> Conv -> BatchNormalization -> Relu (opset 13), as exporters write it in training mode."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeopt.artifact import Artifact

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(a.astype(np.float32), n) for n, a in (
        ("W", rng.standard_normal((4, 3, 3, 3))), ("gamma", rng.uniform(0.5, 1.5, 4)), ("beta", rng.standard_normal(4)),
        ("mean", rng.standard_normal(4)), ("var", rng.uniform(0.5, 1.5, 4)))]
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["y"], name="relu")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    return Artifact.from_onnx(path)


def test_conv_bn_folded_by_the_pass_and_reported_before(tmp_path):
    art = _conv_bn_model(tmp_path / "in.onnx")
    found = {f["rule"]: f for f in find_opportunities(onnx.load(str(art.path)))}
    assert found["conv_bn"]["count"] == 1 and set(found["conv_bn"]["nodes"]) == {"conv", "bn"}
    assert "conv_activation" not in found, "the Conv's consumer is the BN, not the Relu, until BN is folded"
    ctx = PassContext(stage_dir=tmp_path / "stage")
    out = build_pass("graph.fuse", {"rules": "cnn"})(art, ctx)
    assert _ops(out.path) == {"Conv": 1, "Relu": 1}
    assert ctx.notes["fusions"] == {"conv_bn": 1} and ctx.notes["fuse"]["left_to_runtime"] == {"conv_activation": 1}
    feeds = [{"x": np.random.default_rng(i).standard_normal((2, 3, 8, 8)).astype(np.float32)} for i in range(2)]
    assert _min_cosine(art.path, out.path, feeds) > 0.9999
    np.testing.assert_allclose(run_onnx(out.path, feeds)[0], run_onnx(art.path, feeds)[0], atol=1e-4)


def test_fused_groupnorm_cnn_still_quantizes(tmp_path):
    """Stale value_info after fusion used to break the quantizer's shape inference (GroupNorm CNN)."""
    import torch
    from torch import nn

    from edgeopt.data import random_feeds
    from edgeopt.load import load_model

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU(), nn.AdaptiveAvgPool2d(1),
                      nn.Flatten(), nn.Linear(8, 10)).eval()
    art = build_pass("convert.onnx", {})(load_model(m, {"x": torch.randn(1, 3, 16, 16)}),
                                         PassContext(stage_dir=tmp_path / "o"))
    fused = build_pass("graph.fuse", {})(art, PassContext(stage_dir=tmp_path / "f"))
    q = build_pass("graph.quantize_dynamic", {})(fused, PassContext(stage_dir=tmp_path / "q"))
    feeds = random_feeds(art.input_spec, 3, {"batch": 1}, seed=2)
    ref, got = run_onnx(art.path, feeds), run_onnx(q.path, feeds)
    assert min(float(cosine_rows(r, g).min()) for r, g in zip(ref, got)) > 0.98


@pytest.fixture(scope="module")
def tiny_gpt2_onnx(tmp_path_factory):
    """A 2-layer, 4-head, 32-wide GPT-2 (transformers config, random weights) exported to ONNX (seq 16)."""
    import torch
    from transformers import GPT2Config, GPT2Model

    from edgeopt.zoo.hf import wrap_encoder

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=120, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0,
                     attn_implementation="eager")
    art = wrap_encoder(GPT2Model(cfg).eval(), None, seq_len=16, source="tiny-gpt2")
    return build_pass("convert.onnx", {})(art, PassContext(stage_dir=tmp_path_factory.mktemp("tiny_gpt2")))


def test_gpt2_optimizer_failure_is_one_warning_and_prints_nothing(tiny_gpt2_onnx, tmp_path, capfd):
    """After graph.simplify, ONNX Runtime's GPT-2 optimizer fails ("Graph is not a DAG") and prints "failed in
    shape inference" on its way: the pass continues with the one warning, the terminal stays clean."""
    from edgeopt.data import random_feeds

    simple = build_pass("graph.simplify", {})(tiny_gpt2_onnx, PassContext(stage_dir=tmp_path / "s"))
    capfd.readouterr()
    ctx = PassContext(stage_dir=tmp_path / "f")
    out = build_pass("graph.fuse", {})(simple, ctx)
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == "", printed
    assert len(ctx.warnings) == 1 and ctx.warnings[0].startswith("ONNX Runtime transformer optimizer (gpt2) failed")
    assert ctx.notes["fuse"]["ort_transformer"] is None
    feeds = random_feeds(simple.input_spec, 3, {"batch": 1, "sequence": 16}, seed=3, vocab=120)
    assert _min_cosine(simple.path, out.path, feeds) > 0.9999


def test_gpt2_fused_model_declares_contrib_opset(tiny_gpt2_onnx, tmp_path, capfd):
    """Where ONNX Runtime's optimizer succeeds (the exported graph), its com.microsoft ops come with their opset
    import, so the rule sets after it infer shapes without logging a traceback."""
    from edgeopt.data import random_feeds

    capfd.readouterr()
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("graph.fuse", {})(tiny_gpt2_onnx, ctx)
    printed = capfd.readouterr()
    assert printed.out == "" and printed.err == "", printed
    assert ctx.warnings == [] and ctx.notes["fusions"]["ort.SkipLayerNormalization"] == 4
    assert {o.domain: o.version for o in onnx.load(str(out.path)).opset_import}.get("com.microsoft") == 1
    feeds = random_feeds(tiny_gpt2_onnx.input_spec, 3, {"batch": 1, "sequence": 16}, seed=3, vocab=120)
    assert _min_cosine(tiny_gpt2_onnx.path, out.path, feeds) > 0.9999


def test_captured_output_takes_python_and_descriptor_writes(capfd):
    import os

    from edgeopt.passes.graph.fuse import captured_output

    capfd.readouterr()
    with captured_output() as got:
        print("from python")
        os.write(2, b"from the descriptor\n")
    print("after")
    assert capfd.readouterr().out == "after\n"
    assert "from python" in "".join(got) and "from the descriptor" in "".join(got)
