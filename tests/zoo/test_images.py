"""zoo:images: digits pictures sized, tinted and normalized for a model; its preprocessor settings are read."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeopt.zoo import images


def test_pictures_are_pictures_not_noise():
    x = images.pictures(range(8), 64, 48, 3)
    assert x.shape == (8, 3, 64, 48) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(x, images.pictures(range(8), 64, 48, 3))  # deterministic
    # neighbouring pixels agree (strokes and flat ground), which noise of the same spread does not
    flat = x[:, 0]
    corr = np.corrcoef(flat[:, :, :-1].ravel(), flat[:, :, 1:].ravel())[0, 1]
    assert corr > 0.8
    assert not np.allclose(x[0, 0], x[0, 1])  # colour pictures are tinted, not three grey copies
    assert not np.allclose(x[0], x[1])


def test_larger_pictures_tile_more_digits():
    assert [images.grid_for(s, s) for s in (8, 32, 112, 224, 512)] == [1, 1, 2, 4, 4]
    grey = images.pictures([0], 224, 224, 1)[0, 0]
    assert grey.shape == (224, 224) and grey[:56, :56].max() > 0.5 and grey[-56:, -56:].max() > 0.5


def test_preprocessor_settings(tmp_path):
    assert images.preprocessor(None) == {} and images.preprocessor(tmp_path) == {}
    (tmp_path / "config.json").write_text(json.dumps({"image_size": 96, "num_channels": 1}))
    assert images.preprocessor(tmp_path) == {"size": (96, 96), "channels": 1}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.5, 0.5, 0.5], "image_std": 0.25, "size": {"shortest_edge": 256},
        "crop_size": {"height": 200, "width": 180}, "do_normalize": True}))
    st = images.preprocessor(tmp_path)
    assert st["size"] == (200, 180)  # the crop is what the model sees
    assert st["image_mean"] == (0.5, 0.5, 0.5) and st["image_std"] == (0.25,) and st["channels"] == 1
    (tmp_path / "preprocessor_config.json").write_text("{not json")
    assert images.preprocessor(tmp_path) == {"size": (96, 96), "channels": 1}


def test_samples_normalize_slice_and_layout():
    raw = images.pictures(range(2, 5), 32, 32, 3)
    x = images.samples("[2:5]", slice(0, 1), 32, 32, 3)
    mean = np.array(images.IMAGENET_MEAN, np.float32)[None, :, None, None]
    std = np.array(images.IMAGENET_STD, np.float32)[None, :, None, None]
    np.testing.assert_allclose(x, (raw - mean) / std, rtol=1e-5, atol=1e-5)
    half = images.samples("[2:5]", slice(0, 1), 32, 32, 3, {"image_mean": (0.5,) * 3, "image_std": (0.5,) * 3})
    np.testing.assert_allclose(half, raw * 2 - 1, atol=1e-6)
    np.testing.assert_array_equal(images.samples("[2:5]", slice(0, 1), 32, 32, 3, {"do_normalize": False}), raw)
    nhwc = images.samples("", slice(2, 5), 32, 32, 3, layout="NHWC")  # '' takes the default slice
    assert nhwc.shape == (3, 32, 32, 3)
    np.testing.assert_array_equal(nhwc, x.transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match=r"zoo:images\[0:64\]"):
        images.samples("[a:b]", slice(0, 1), 32, 32, 3)
