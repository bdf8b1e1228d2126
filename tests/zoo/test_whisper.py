"""zoo:whisper-tiny-en: the CTranslate2 reader and converter (on a tiny model CTranslate2 itself wrote, and on the real one)."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from edgeopt.errors import InputError
from edgeopt.zoo import whisper as zw

TINY = {"vocab_size": 51864, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "num_mel_bins": 80,
        "max_source_positions": 1500, "max_target_positions": 448}


def tiny_whisper(seed: int = 0):
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(WhisperConfig(**TINY)).eval()


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory):
    """A tiny random Whisper saved as HF, then converted by CTranslate2's own converter (float32)."""
    ct2 = pytest.importorskip("ctranslate2")
    root = tmp_path_factory.mktemp("ct2")
    model = tiny_whisper()
    model.save_pretrained(root / "hf", safe_serialization=True)
    real = zw.whisper_ct2_folder()  # a real Whisper tokenizer.json for the converter to copy
    (root / "hf" / "tokenizer.json").write_bytes((real / "tokenizer.json").read_bytes())
    from transformers import WhisperTokenizerFast

    WhisperTokenizerFast(tokenizer_file=str(real / "tokenizer.json")).save_pretrained(root / "hf")
    ct2.converters.TransformersConverter(str(root / "hf")).convert(str(root / "ct2"), quantization="float32")
    (root / "ct2" / "tokenizer.json").write_bytes((real / "tokenizer.json").read_bytes())  # as the package ships it
    return model, root / "ct2"


def test_read_ct2_reads_what_ctranslate2_wrote(tiny_ct2):
    model, folder = tiny_ct2
    spec, tensors = zw.read_ct2(folder / "model.bin")
    assert spec == "WhisperSpec"
    w = model.model.encoder.conv1.weight.detach().numpy()
    assert np.array_equal(tensors["encoder/conv1/weight"], w)
    assert tensors["decoder/layer_1/self_attention/linear_0/weight"].shape == (3 * 64, 64)  # fused q, k, v


def test_ct2_to_hf_gives_back_the_same_model(tiny_ct2, tmp_path):
    import torch
    from transformers import WhisperForConditionalGeneration

    model, folder = tiny_ct2
    out = zw.ct2_to_hf(folder, tmp_path / "hf")
    back = WhisperForConditionalGeneration.from_pretrained(out).eval()
    assert {"model.safetensors", "tokenizer.json", "preprocessor_config.json"} <= {p.name for p in out.iterdir()}
    assert not list(tmp_path.glob(".hf-*"))  # the temporary folder is gone
    feats = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[50257, 50362, 440, 1049]])
    with torch.no_grad():
        a = model(input_features=feats, decoder_input_ids=ids).logits
        b = back(input_features=feats, decoder_input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4), float((a - b).abs().max())
    assert back.proj_out.weight.data_ptr() == back.model.decoder.embed_tokens.weight.data_ptr()  # tied


def test_bad_ct2_folders_are_one_line_errors(tiny_ct2, tmp_path):
    _, folder = tiny_ct2
    with pytest.raises(InputError, match="no CTranslate2 model.bin"):
        zw.ct2_to_hf(tmp_path, tmp_path / "out")
    cut = tmp_path / "cut"
    cut.mkdir()
    (cut / "model.bin").write_bytes((folder / "model.bin").read_bytes()[:5000])
    with pytest.raises(InputError, match="truncated"):
        zw.read_ct2(cut / "model.bin")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(struct.pack("<I", 99) + b"\0" * 16)
    with pytest.raises(InputError, match="version 99"):
        zw.read_ct2(bad)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_real_whisper_tiny_en_transcribes_like_ctranslate2():
    """The converted folder greedy-decodes a spoken sentence to the same tokens as the CTranslate2 original."""
    ct2 = pytest.importorskip("ctranslate2")
    from edgeopt.speech import whisper as W
    from edgeopt.zoo import speech

    if not speech.espeak_available():
        pytest.skip("espeak-ng is not installed (make espeak)")
    folder = zw.whisper_folder()
    assert json.loads((folder / "edgeopt.json").read_text())["format"] == zw.FOLDER_FORMAT
    model, tok, fe = W.load_whisper(folder)
    (wave, text), = speech.spoken(1)
    feats = W.features(fe, [wave])
    ours = W.transcribe(W.TorchWhisper(model, threads=1), feats, W.Tokens.of(model), tok)
    ref = ct2.models.Whisper(str(zw.whisper_ct2_folder()), device="cpu", intra_threads=1, compute_type="float32")
    res = ref.generate(ct2.StorageView.from_array(feats), [["<|startoftranscript|>", "<|notimestamps|>"]],
                       beam_size=1, max_length=W.MAX_NEW_TOKENS, suppress_blank=True)
    assert ours.tokens == res[0].sequences_ids[0]
    assert W.wer([text], [ours.text]) <= 0.25  # espeak's voice, a real model: close to the text it was given
