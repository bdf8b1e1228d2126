"""Model size on disk, its deflate-compressed size (sparsity shows there), and parameter counts."""

from __future__ import annotations

import zlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.artifact import Artifact, InputSpec, onnx_size_bytes
from edgeopt.measure.size import deflated_size, params_count, size_report


def _matmul_model(path, weight: np.ndarray, external: bool = False, shape_const: bool = False) -> Artifact:
    n_in, n_out = weight.shape
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"])]
    inits = [numpy_helper.from_array(weight.astype(np.float32), "W")]
    out_name = "y"
    if shape_const:
        inits.append(numpy_helper.from_array(np.array([-1, n_out], dtype=np.int64), "shape"))
        inits.append(numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half"))
        nodes += [helper.make_node("Reshape", ["y", "shape"], ["r"]), helper.make_node("Mul", ["r", "half"], ["z"])]
        out_name = "z"
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
                              [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["batch", n_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=path.name + ".data", size_threshold=0)
    else:
        onnx.save(model, str(path))
    return Artifact.from_onnx(path)


def test_onnx_size_is_the_file_and_zipped_shows_sparsity(tmp_path):
    rng = np.random.default_rng(0)
    dense = rng.standard_normal((256, 256))
    sparse = dense * (rng.random((256, 256)) < 0.1)  # 90 % zeros
    a = _matmul_model(tmp_path / "dense.onnx", dense)
    b = _matmul_model(tmp_path / "sparse.onnx", sparse)
    ra, rb = size_report(a), size_report(b)
    assert ra["bytes"] == a.path.stat().st_size == a.size_bytes
    assert ra["mb"] == pytest.approx(ra["bytes"] / 2**20)
    assert ra["bytes"] == rb["bytes"]  # same tensors, same bytes on disk
    assert ra["zipped_bytes"] > 0.8 * ra["bytes"]  # random floats barely compress
    assert rb["zipped_bytes"] < 0.35 * rb["bytes"]  # zeros do
    assert rb["zipped_mb"] == pytest.approx(rb["zipped_bytes"] / 2**20)


def test_external_data_counts(tmp_path):
    w = np.random.default_rng(1).standard_normal((64, 32))
    art = _matmul_model(tmp_path / "ext.onnx", w, external=True)
    data = tmp_path / "ext.onnx.data"
    assert data.exists()
    r = size_report(art)
    assert r["bytes"] == art.path.stat().st_size + data.stat().st_size == onnx_size_bytes(art.path)
    assert r["bytes"] > w.size * 4
    assert params_count(art) == 64 * 32


def test_deflated_size_matches_zlib_on_one_block():
    block = (b"edgeopt " * 1000) + bytes(range(256)) * 10
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    assert deflated_size(iter([block])) == len(c.compress(block)) + len(c.flush())
    assert deflated_size(iter([block, block])) == 2 * deflated_size(iter([block]))
    assert deflated_size(iter([])) == 0


def test_sampled_deflated_size_estimates_a_mixed_stream(tmp_path, monkeypatch):
    import edgeopt.measure.size as size_mod

    rng = np.random.default_rng(0)
    # stretches that compress very differently: zeros, int8-like small integers, random floats
    parts = [np.zeros(3 << 20, np.uint8), rng.integers(-6, 7, 5 << 20).astype(np.int8).view(np.uint8),
             rng.standard_normal(1 << 20).astype(np.float32).view(np.uint8)]
    data = np.concatenate(parts).tobytes()
    blocks = lambda: iter([data[i:i + (4 << 20)] for i in range(0, len(data), 4 << 20)])  # noqa: E731
    exact = deflated_size(blocks())
    pieces = [data[i:i + (64 << 10)] for i in range(0, len(data), 64 << 10)]
    assert size_mod.sampled_deflated_size(blocks(), 1) == deflated_size(iter(pieces))  # every piece: no sampling
    est = size_mod.sampled_deflated_size(blocks(), 8)
    assert est != exact and abs(est / exact - 1) < 0.02
    f = tmp_path / "big.bin"
    f.write_bytes(data)
    art = Artifact(kind="tflite", path=f, input_spec=InputSpec(()), sha256="0", size_bytes=len(data))
    assert "zipped_estimate" not in size_report(art)
    monkeypatch.setattr(size_mod, "SAMPLE_ABOVE", 1 << 20)
    monkeypatch.setattr(size_mod, "_SAMPLED", 2 << 20)  # 12 MiB in all: 1 piece in 6
    r = size_report(art)
    assert "1 in 6 evenly spaced" in r["zipped_estimate"] and abs(r["zipped_bytes"] / exact - 1) < 0.02


def test_torch_artifact_without_file_uses_its_tensors(tiny_mlp_torch):
    r = size_report(tiny_mlp_torch)
    assert r["bytes"] == tiny_mlp_torch.size_bytes == (16 * 64 + 64 + 64 + 64 + 64 * 8 + 8) * 4
    assert 0 < r["zipped_bytes"] <= r["bytes"] * 1.01


def test_params_count_torch_and_onnx_agree_on_mlp(tiny_mlp_torch, tiny_mlp_onnx):
    want = 16 * 64 + 64 + 64 + 64 + 64 * 8 + 8
    assert params_count(tiny_mlp_torch) == want
    assert params_count(tiny_mlp_onnx) == want  # GELU's scalar constants are not parameters


def test_params_count_skips_int64_shape_and_scalar_constants(tmp_path):
    art = _matmul_model(tmp_path / "m.onnx", np.ones((8, 4)), shape_const=True)
    assert params_count(art) == 32


def test_params_count_unknown_kinds_are_none():
    tfl = Artifact(kind="tflite", path=None, input_spec=InputSpec(()), sha256="0", size_bytes=0)
    assert params_count(tfl) is None
