"""Calibration/eval data: specs resolve to feeds, and data that doesn't fit the model is refused."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.data import resolve
from edgeopt.errors import InputError


def test_random_feeds_fit(tiny_mlp_onnx):
    feeds = resolve("random:5", tiny_mlp_onnx, seq_len=8, batch=2, role="calibration", default_slice=slice(0, 4))
    assert len(feeds) == 5 and feeds[0]["x"].shape == (2, 16)


def test_npz_mismatched_shape(tmp_path, tiny_mlp_onnx):
    p = tmp_path / "cal.npz"
    np.savez(p, x=np.zeros((10, 5), np.float32))
    with pytest.raises(InputError, match=r"input 'x' has shape \(1, 5\), the model expects \(batch, 16\)"):
        resolve(str(p), tiny_mlp_onnx, seq_len=8, batch=1, role="calibration", default_slice=slice(0, 4))


def test_npz_missing_input_and_pickle_refused(tmp_path, tiny_mlp_onnx):
    p = tmp_path / "cal.npz"
    np.savez(p, y=np.zeros((4, 16), np.float32))
    with pytest.raises(InputError, match="no array for model input 'x'"):
        resolve(str(p), tiny_mlp_onnx, seq_len=8, batch=1, role="calibration", default_slice=slice(0, 4))
    q = tmp_path / "obj.npz"
    np.savez(q, x=np.array([object()], dtype=object))
    with pytest.raises(InputError, match="not a readable .npz"):
        resolve(str(q), tiny_mlp_onnx, seq_len=8, batch=1, role="calibration", default_slice=slice(0, 4))


def test_npz_good(tmp_path, tiny_mlp_onnx):
    p = tmp_path / "cal.npz"
    np.savez(p, x=np.ones((6, 16), np.float32))
    feeds = resolve(str(p), tiny_mlp_onnx, seq_len=8, batch=2, role="eval", default_slice=slice(0, 4))
    assert len(feeds) == 3 and feeds[2]["x"].shape == (2, 16)


def test_text_data_needs_tokenizer(tiny_mlp_onnx):
    with pytest.raises(InputError, match="no tokenizer"):
        resolve("zoo:sentences[0:4]", tiny_mlp_onnx, seq_len=8, batch=1, role="calibration", default_slice=slice(0, 4))


def test_npz_wrong_dtype_refused(tmp_path, tiny_mlp_onnx):
    p = tmp_path / "eval.npz"
    np.savez(p, x=np.ones((6, 16), np.float64))
    with pytest.raises(InputError, match="input 'x' is float64, the model expects float32"):
        resolve(str(p), tiny_mlp_onnx, seq_len=8, batch=2, role="eval", default_slice=slice(0, 4))
