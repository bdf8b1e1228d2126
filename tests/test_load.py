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
