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
