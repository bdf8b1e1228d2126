"""NcnnRunner and read_param on hand-written ncnn models (no converter needed): batching, blob order, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgeopt.errors import InputError
from edgeopt.measure.ncnn import NcnnRunner, read_param

pytest.importorskip("ncnn")


def _write(folder: Path, param: str, weights: bytes = b"") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.ncnn.param").write_text(param)
    (folder / "model.ncnn.bin").write_bytes(weights)
    return folder / "model.ncnn.param"


@pytest.fixture
def linear_model(tmp_path):
    """InnerProduct 6 -> 5 with bias, then ReLU: the .bin holds a zero flag + float32 weights, then float32 bias."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((5, 6)).astype(np.float32)
    b = rng.standard_normal(5).astype(np.float32)
    param = ("7767517\n3 3\nInput in0 0 1 in0\nInnerProduct fc 1 1 in0 h 0=5 1=1 2=30\n"
             "ReLU relu 1 1 h out0\n")
    blob = np.zeros(1, np.int32).tobytes() + w.tobytes() + b.tobytes()
    return _write(tmp_path / "linear", param, blob), w, b


def test_batch_is_looped_and_stacked(linear_model):
    path, w, b = linear_model
    x = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    with NcnnRunner(path, 1, ["x"]) as r:
        assert r.threads == 1 and r.label == str(path) and r.output_names == ["out0"] and not r.fp16
        (got,) = r.run({"x": x})
        (one,) = r.run({"x": x[:1]})
    want = np.maximum(x @ w.T + b, 0)
    assert got.shape == (3, 5) and one.shape == (1, 5)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one, want[:1], rtol=1e-5, atol=1e-6)


def test_inputs_map_in_order_and_output_shapes_apply(tmp_path):
    """The feed's i-th name goes to the i-th Input blob (BinaryOp 1 = in0 - in1); output_shapes reshapes samples."""
    path = _write(tmp_path / "sub", "7767517\n3 3\nInput in0 0 1 in0\nInput in1 0 1 in1\n"
                                    "BinaryOp sub 2 1 in0 in1 out0 0=1\n")
    a = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    b = np.ones((2, 3, 4), np.float32)
    with NcnnRunner(path, 2, ["a", "b"]) as r:
        np.testing.assert_array_equal(r.run({"b": b, "a": a})[0], a - b)
    with NcnnRunner(path, 1, ["a", "b"], output_shapes=[[12]]) as r:
        assert r.run({"a": a, "b": b})[0].shape == (2, 12)


def test_read_param_orders_outputs_naturally(tmp_path):
    text = ("7767517\n4 5\nInput in0 0 1 in0\nSplit sp 1 3 in0 a b c\nReLU r10 1 1 a out10\n"
            "ReLU r2 1 1 b out2\n")
    path = tmp_path / "m.param"
    path.write_text(text.replace("4 5", "4 6"))
    g = read_param(path)
    assert g.inputs == ("in0",) and g.outputs == ("c", "out10", "out2")  # not all out<k>: order of appearance
    path.write_text(text.replace("Split sp 1 3 in0 a b c", "Split sp 1 2 in0 a b"))
    assert read_param(path).outputs == ("out2", "out10")


@pytest.mark.parametrize("damage", ["magic", "truncated_param", "truncated_bin", "missing_bin", "unknown_layer"])
def test_bad_files_are_one_line_input_errors(linear_model, damage):
    path = linear_model[0]
    if damage == "magic":
        path.write_text("hello\n")
    elif damage == "truncated_param":
        path.write_text(path.read_text()[:-25])
    elif damage == "truncated_bin":
        data = path.with_suffix(".bin").read_bytes()
        path.with_suffix(".bin").write_bytes(data[: len(data) // 2])
    elif damage == "missing_bin":
        path.with_suffix(".bin").unlink()
    else:
        path.write_text(path.read_text().replace("ReLU", "aten::relu_x"))
    with pytest.raises(InputError) as e:
        NcnnRunner(path, 1, ["x"])
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_misuse_is_reported(linear_model):
    path = linear_model[0]
    with pytest.raises(InputError, match="1 inputs"):
        NcnnRunner(path, 1, ["x", "y"])
    with pytest.raises(InputError, match="no blob named 'nope'"):
        NcnnRunner(path, 1, ["x"], output_names=["nope"])
    with pytest.raises(InputError, match="threads"):
        NcnnRunner(path, 0, ["x"])
    r = NcnnRunner(path, 1, ["x"], fp16=True)
    assert r.fp16
    with pytest.raises(InputError, match="feed has no input 'x'"):
        r.run({"y": np.zeros((1, 6), np.float32)})
    r.close()
    with pytest.raises(InputError, match="closed"):
        r.run({"x": np.zeros((1, 6), np.float32)})


def test_in_place_layer_on_an_input_leaves_the_feed_alone(tmp_path):
    """A BinaryOp with a scalar works in place on its input blob: ncnn must get a copy, not the feed's memory
    (wrapping the numpy array crashed ncnn or overwrote the caller's array)."""
    path = _write(tmp_path / "mul", "7767517\n2 2\nInput in0 0 1 in0\nBinaryOp mul 1 1 in0 out0 0=2 1=1 2=2.0\n")
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    before = x.copy()
    with NcnnRunner(path, 1, ["x"]) as r:
        np.testing.assert_array_equal(r.run({"x": x})[0], 2 * before)
    np.testing.assert_array_equal(x, before)
