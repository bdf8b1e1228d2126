"""Loading models: every kind of bad input is one line naming the problem, and files stay unchanged."""

from __future__ import annotations

import os

import onnx
import pytest
from onnx import TensorProto, helper

from edgeopt.artifact import sha256_file
from edgeopt.errors import InputError
from edgeopt.load import load_model


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        load_model(tmp_path / "nope.onnx")


def test_random_bytes(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(os.urandom(4096))
    with pytest.raises(InputError, match="junk.onnx"):
        load_model(p)


def test_truncated_onnx(tmp_path, tiny_mlp_onnx):
    p = tmp_path / "cut.onnx"
    p.write_bytes(tiny_mlp_onnx.path.read_bytes()[:300])
    with pytest.raises(InputError, match="cut.onnx"):
        load_model(p)


def test_unknown_domain_op(tmp_path):
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    p = tmp_path / "odd.onnx"
    onnx.save(m, str(p))
    before = sha256_file(p)
    with pytest.raises(InputError, match=r"'Frobnicate'.*'com.example'"):
        load_model(p)
    assert sha256_file(p) == before


def test_wrong_opset(tmp_path):
    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 5)])
    m.ir_version = 3
    p = tmp_path / "old.onnx"
    onnx.save(m, str(p))
    with pytest.raises(InputError, match="opset 5"):
        load_model(p)


def test_wrong_suffix_and_folder(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"\x80\x04junk")
    with pytest.raises(InputError, match="unsupported model file"):
        load_model(p)
    with pytest.raises(InputError, match="not a Hugging Face model folder"):
        load_model(tmp_path)


def test_external_data_onnx(tmp_path, tiny_mlp_onnx):
    m = onnx.load(str(tiny_mlp_onnx.path))
    p = tmp_path / "ext.onnx"
    onnx.save(m, str(p), save_as_external_data=True, all_tensors_to_one_file=True, location="ext.onnx.data",
              size_threshold=0)
    art = load_model(p)
    assert art.kind == "onnx" and art.size_bytes > p.stat().st_size
    assert art.input_spec.names == ["x"]


def test_torch_module_needs_example_inputs(tiny_mlp_torch):
    with pytest.raises(InputError, match="example_inputs"):
        load_model(tiny_mlp_torch.module)
    assert tiny_mlp_torch.kind == "torch" and tiny_mlp_torch.input_spec.inputs[0].shape == ("batch", 16)


def test_unknown_zoo_name():
    with pytest.raises(InputError, match="unknown zoo model"):
        load_model("zoo:resnet9000")


def test_zoo_entries_and_formats_register_with_the_loader(monkeypatch, tiny_mlp_torch):
    import edgeopt.load as L

    assert {"minilm", "digits-cnn", "digits-teacher"} <= set(L.zoo_models())
    assert list(L.formats())[:2] == ["onnx", "openvino"] and "hf-folder" in L.formats()
    monkeypatch.setattr(L, "_ZOO", dict(L._ZOO))
    got = []

    @L.register_zoo("test-entry", "a test model")
    def entry(name, *, seq_len, batch):
        got.append((name, seq_len, batch))
        return tiny_mlp_torch

    assert load_model("zoo:test-entry", seq_len=7, batch=3) is tiny_mlp_torch and got == [("test-entry", 7, 3)]
    assert L.zoo_models()["test-entry"] == "a test model"
    with pytest.raises(RuntimeError, match="registered twice"):
        L.register_zoo("test-entry", "another")(lambda name, *, seq_len, batch: None)
    assert load_model(tiny_mlp_torch) is tiny_mlp_torch, "an Artifact is returned as is"


def test_loader_never_imports_the_zoo():
    import ast
    import subprocess
    import sys

    import edgeopt.load as L

    tree = ast.parse(open(L.__file__).read())
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m and m.startswith("edgeopt.zoo")], "zoo entries register with load, not the reverse"
    code = "import sys, edgeopt.load; print(any(m.startswith('edgeopt.zoo') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False", "the zoo is imported on the first zoo: or folder lookup, not with edgeopt.load"


def _onnx_export_folder(folder, onnx_model, config: dict | str | None):
    """`folder/model.onnx` (a copy of `onnx_model`), with `config` written beside it as config.json."""
    import json
    import shutil

    folder.mkdir()
    shutil.copy(onnx_model.path, folder / "model.onnx")
    if config is not None:
        (folder / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    return folder / "model.onnx"


def test_onnx_with_hf_config_beside_it_gets_fused(tmp_path, tiny_bert_torch, tiny_bert_onnx, tiny_bert_feeds):
    """An optimum-style export (model.onnx + config.json) carries its family, so graph.fuse runs ONNX Runtime's
    transformer optimizer on it (without the config it has no family and gets the rule sets only)."""
    from helpers import cosine_rows, run_onnx

    from edgeopt.passes.base import PassContext, build_pass

    cfg = tiny_bert_torch.module.encoder.config.to_dict()
    p = _onnx_export_folder(tmp_path / "export", tiny_bert_onnx, cfg)
    before = sha256_file(p)
    art = load_model(p)
    assert {k: art.meta[k] for k in ("family", "num_heads", "hidden_size", "vocab_size")} == {
        "family": "bert", "num_heads": 4, "hidden_size": 32, "vocab_size": 120}
    ctx = PassContext(stage_dir=tmp_path / "fuse")
    out = build_pass("graph.fuse", {})(art, ctx)
    ops = {n.op_type for n in onnx.load(str(out.path)).graph.node}
    assert ctx.notes["fuse"]["ort_transformer"] == "bert"
    assert ctx.notes["fusions"]["ort.Attention"] == 2 and ctx.notes["fusions"]["ort.SkipLayerNormalization"] == 4
    assert {"Attention", "SkipLayerNormalization"} <= ops and "Softmax" not in ops
    ref, got = run_onnx(p, tiny_bert_feeds), run_onnx(out.path, tiny_bert_feeds)
    assert min(float(cosine_rows(r, g).min()) for r, g in zip(ref, got)) > 0.9999
    assert sha256_file(p) == before

    bare = load_model(_onnx_export_folder(tmp_path / "bare", tiny_bert_onnx, None))
    assert "family" not in bare.meta
    ctx = PassContext(stage_dir=tmp_path / "fuse-bare")
    build_pass("graph.fuse", {})(bare, ctx)
    assert ctx.notes["fuse"]["ort_transformer"] is None and "ort.Attention" not in ctx.notes["fusions"]


@pytest.mark.parametrize("config", ["{not json", "[1, 2]", '{"model_type": 3, "num_attention_heads": "4", '
                                    '"hidden_size": true}', '{"model_type": "gpt2", "n_head": 4, "n_embd": 32}'])
def test_onnx_hf_config_keeps_only_well_typed_values(tmp_path, tiny_mlp_onnx, config):
    art = load_model(_onnx_export_folder(tmp_path / "m", tiny_mlp_onnx, config))
    got = {k: art.meta[k] for k in ("family", "num_heads", "hidden_size") if k in art.meta}
    assert got == ({"family": "gpt2", "num_heads": 4, "hidden_size": 32} if "gpt2" in config else {})
