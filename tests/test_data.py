"""Calibration/eval data: specs resolve to feeds, and data that doesn't fit the model is refused."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.data import effective_spec, resolve
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


# ---------------------------------------------------------------------------------------------- data by input kind
def _art(*inputs: tuple, meta: dict | None = None):
    """An ONNX-kind artifact with these (name, dtype, shape) inputs (no file: data resolution reads only these)."""
    from edgeopt.artifact import Artifact, InputSpec, TensorSpec

    spec = InputSpec(tuple(TensorSpec(n, d, tuple(s)) for n, d, s in inputs))
    return Artifact(kind="onnx", path=None, input_spec=spec, sha256="0" * 64, size_bytes=0, meta=meta or {})


def test_input_kinds_are_recognized():
    from edgeopt.artifact import TensorSpec
    from edgeopt.data import audio_layout, image_layout

    t = TensorSpec
    assert image_layout(t("pixel_values", "float32", ("batch", 3, 224, 224))) == "NCHW"
    assert image_layout(t("x", "float32", (1, 64, 64, 1))) == "NHWC"
    assert image_layout(t("x", "float32", ("N", "C", "H", "W"))) == "NCHW"
    assert image_layout(t("x", "float32", ("N", 5, 32, 32))) is None  # 5 channels: not a picture
    assert image_layout(t("x", "float32", (1, 3, 4, 4))) is None  # too small to be a picture
    assert image_layout(t("x", "int64", (1, 3, 32, 32))) is None and image_layout(t("x", "float32", (1, 16))) is None
    assert audio_layout(t("input_values", "float32", ("batch", 16000))) == "wave"
    assert audio_layout(t("x", "float32", ("batch", "samples"))) == "wave"
    assert audio_layout(t("x", "float32", ("batch", 16))) is None  # a feature vector, not a waveform
    assert audio_layout(t("input_features", "float32", ("batch", 80, 3000))) == "features"
    assert audio_layout(t("x", "float32", ("batch", 80, 3000))) is None


def test_effective_spec_by_input_kind(tiny_mlp_onnx):
    assert effective_spec(None, tiny_mlp_onnx, slice(64, 320), 8) == "random:8"
    img = _art(("pixel_values", "float32", ("batch", 3, 32, 32)))
    assert effective_spec(None, img, slice(64, 320)) == "zoo:images[64:320]"
    wav = _art(("input_values", "float32", ("batch", 4000)))
    assert effective_spec(None, wav, slice(0, 64)) == "zoo:speech[:64]"
    assert effective_spec("random:3", img, slice(0, 64)) == "random:3"


def test_image_feeds_fill_the_other_inputs():
    art = _art(("pixel_values", "float32", ("batch", 3, "height", "width")),
               ("pixel_mask", "int64", ("batch", "height", "width")), ("bool_masked_pos", "bool", ("batch", 16)))
    feeds = resolve(None, art, seq_len=8, batch=2, role="eval", default_slice=slice(0, 6), count=2)
    assert len(feeds) == 2
    f = feeds[0]
    assert f["pixel_values"].shape == (2, 3, 224, 224) and f["pixel_values"].dtype == np.float32  # dynamic: 224
    assert f["pixel_mask"].shape == (2, 224, 224) and (f["pixel_mask"] == 1).all()  # every pixel is real
    assert f["bool_masked_pos"].shape == (2, 16) and not f["bool_masked_pos"].any()  # no patch masked
    assert -2.2 < f["pixel_values"].min() and f["pixel_values"].max() < 2.7  # ImageNet-normalized pictures


def test_image_feeds_follow_the_folder_preprocessor(tmp_path):
    import json

    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.5], "image_std": [0.5], "size": {"height": 40, "width": 48}}))
    art = _art(("image", "float32", (1, "h", "w", 1)), meta={"source": str(tmp_path / "model.onnx")})
    feeds = resolve("zoo:images[0:3]", art, seq_len=8, batch=4, role="calibration", default_slice=slice(0, 1))
    assert len(feeds) == 3 and feeds[0]["image"].shape == (1, 40, 48, 1)  # the model's fixed batch of 1
    x = np.concatenate([f["image"] for f in feeds])
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.min() < -0.9 and x.max() > 0.5  # (x - 0.5) / 0.5


def test_speech_feeds_waveform_and_log_mel():
    wav = _art(("input_values", "float32", ("batch", 8000)), ("attention_mask", "int64", ("batch", 8000)))
    f = resolve(None, wav, seq_len=8, batch=2, role="eval", default_slice=slice(0, 4))
    assert len(f) == 2 and f[0]["input_values"].shape == (2, 8000) and (f[0]["attention_mask"] == 1).all()
    assert 0.3 < np.abs(f[0]["input_values"]).max() <= 0.5  # speech, not silence or noise of unit spread
    mel = _art(("input_features", "float32", ("batch", 80, 100)))
    g = resolve("zoo:speech[0:2]", mel, seq_len=8, batch=1, role="eval", default_slice=slice(0, 4))
    assert len(g) == 2 and g[0]["input_features"].shape == (1, 80, 100) and np.isfinite(g[0]["input_features"]).all()


def test_image_and_speech_data_need_such_an_input(tiny_mlp_onnx):
    with pytest.raises(InputError, match="zoo:images is pictures, but the model has no image input"):
        resolve("zoo:images[0:4]", tiny_mlp_onnx, seq_len=8, batch=1, role="eval", default_slice=slice(0, 4))
    with pytest.raises(InputError, match="zoo:speech is audio, but the model has no audio input"):
        resolve("zoo:speech", tiny_mlp_onnx, seq_len=8, batch=1, role="eval", default_slice=slice(0, 4))
    img = _art(("pixel_values", "float32", ("batch", 3, 32, 32)))
    with pytest.raises(InputError, match=r"calibration data: expected a slice like zoo:images\[0:64\]"):
        resolve("zoo:images[x]", img, seq_len=8, batch=1, role="calibration", default_slice=slice(0, 4))


def _word_tokenizer(folder, pad: bool) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "</s>", *sorted({w.strip(".,?").lower() for w in "The cat sat on the mat".split()})]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    kw = {"pad_token": "[PAD]"} if pad else {"eos_token": "</s>"}
    PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", **kw).save_pretrained(str(folder))


def test_tokenizer_beside_an_onnx_file_and_its_fixed_length(tmp_path):
    _word_tokenizer(tmp_path, pad=False)  # a decoder's tokenizer: no padding token (padded with end-of-text)
    (tmp_path / "model.onnx").write_bytes(b"")
    art = _art(("input_ids", "int64", ("batch", 12)), ("attention_mask", "int64", ("batch", 12)),
               meta={"source": str(tmp_path / "model.onnx")})
    assert effective_spec(None, art, slice(0, 8)) == "zoo:sentences[:8]"
    feeds = resolve(None, art, seq_len=128, batch=2, role="calibration", default_slice=slice(0, 8))
    assert len(feeds) == 4 and feeds[0]["input_ids"].shape == (2, 12)  # the model's length, not seq_len
    ints = _art(("ids", "int64", ("batch", 12)), meta={"source": str(tmp_path / "model.onnx")})
    assert effective_spec(None, ints, slice(0, 8)) == "random:16"  # no input_ids: not a text model


def test_random_position_ids_count_up():
    from edgeopt.data import random_feeds

    art = _art(("input_ids", "int64", ("batch", "sequence")), ("position_ids", "int64", ("batch", "sequence")))
    f = random_feeds(art.input_spec, 1, {"batch": 2, "sequence": 5})[0]
    assert f["position_ids"].tolist() == [[0, 1, 2, 3, 4]] * 2 and f["input_ids"].shape == (2, 5)


def test_describe_says_what_the_model_is_fed(tmp_path, tiny_mlp_onnx):
    import json

    from edgeopt.data import describe

    (tmp_path / "model.onnx").write_bytes(b"")
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.5] * 3}))
    img = _art(("pixel_values", "float32", ("batch", 3, "h", "w")), meta={"source": str(tmp_path / "model.onnx")})
    assert describe("zoo:images[0:8]", img) == ("zoo:images[0:8]: scikit-learn's digits tiled into pictures, "
                                                "3×224×224 (NCHW), normalized with the model's preprocessor mean/std")
    mel = _art(("input_features", "float32", ("batch", 80, 3000)))
    assert describe("zoo:speech", mel).endswith("30 s at 16000 Hz, as log-mel features (80×3000)")
    assert "random inputs" in describe(effective_spec(None, tiny_mlp_onnx, slice(0, 4)), tiny_mlp_onnx)


def test_broken_tokenizer_is_one_line(tmp_path):
    from edgeopt.data import tokenize

    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot load the tokenizer"):
        tokenize(["A sentence."], str(tmp_path), 8, 1, ["input_ids"])
