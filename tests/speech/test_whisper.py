"""Whisper on each runtime: the exported encoder/decoder-with-past graphs match the HF model step by step."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from edgeopt.errors import InputError
from edgeopt.speech import whisper as W


def tiny_whisper(seed: int = 0):
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(seed)
    cfg = WhisperConfig(vocab_size=51864, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                        decoder_start_token_id=50257, eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    m = WhisperForConditionalGeneration(cfg).eval()
    m.generation_config.no_timestamps_token_id = 50362
    m.generation_config.decoder_start_token_id, m.generation_config.eos_token_id = 50257, 50256
    return m


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_whisper()
    return model, W.export_onnx(model, tmp_path_factory.mktemp("whisper"))


class _Tok:
    def decode(self, ids, skip_special_tokens=True):
        return " ".join(f"w{i}" for i in ids)


def feats(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, 80, 3000)).astype(np.float32) * 0.5


def test_export_has_explicit_kv_signatures(exported):
    _, paths = exported
    enc, dec = (onnx.load(str(paths[k])) for k in ("encoder", "decoder"))
    assert [o.name for o in enc.graph.output] == ["cross_k", "cross_v"]
    assert [i.name for i in dec.graph.input] == ["input_ids", "self_k", "self_v", "cross_k", "cross_v"]
    assert [o.name for o in dec.graph.output] == ["logits", "new_self_k", "new_self_v"]
    assert not list(paths["encoder"].parent.glob(".*"))  # no temporary files left


def test_ort_steps_match_the_hf_model_with_its_own_cache(exported):
    model, paths = exported
    hf, ort = W.TorchWhisper(model, threads=1), W.OrtWhisper(paths["encoder"], paths["decoder"], threads=1)
    x = feats()
    sh, so = hf.encode(x), ort.encode(x)
    ids = np.array([[50257, 50362]], np.int64)
    for nxt in (440, 1049, 13, None):  # the prompt (2 tokens, empty past), then one token at a time
        lh, sh = hf.step(ids, sh)
        lo, so = ort.step(ids, so)
        np.testing.assert_allclose(lo, lh, atol=2e-4, rtol=1e-4)
        if nxt is not None:
            ids = np.array([[nxt]], np.int64)
    assert so["self_k"].shape == (2, 1, 2, 5, 32)  # layers, batch, heads, 2 + 3 tokens, head_dim


def test_transcribe_gives_the_same_tokens_on_torch_and_ort(exported):
    model, paths = exported
    tokens = W.Tokens.of(model)
    assert tokens.prompt == (50257, 50362) and tokens.eot == 50256
    assert 50363 in tokens.suppress and 1000 not in tokens.suppress  # timestamps suppressed, text is not
    x = feats(3)
    a = W.transcribe(W.TorchWhisper(model, threads=1), x, tokens, _Tok(), max_new_tokens=8)
    b = W.transcribe(W.OrtWhisper(paths["encoder"], paths["decoder"], threads=1), x, tokens, _Tok(), max_new_tokens=8)
    assert a.tokens == b.tokens and len(a.tokens) > 0
    assert not set(a.tokens) & set(tokens.suppress)
    assert len(b.step_ms) == len(b.tokens) + (len(b.tokens) < 8) and b.total_ms > b.encoder_ms > 0


def test_wer_normalizes_case_and_punctuation():
    assert W.wer(["The cat sat."], ["the cat, sat"]) == 0.0
    assert W.wer(["the cat sat on the mat"], ["the cat sat on a mat"]) == pytest.approx(1 / 6)
    with pytest.raises(InputError, match="2 references but 1"):
        W.wer(["a", "b"], ["a"])


def test_features_refuse_empty_and_overlong_audio():
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=80)
    assert W.features(fe, [np.zeros(16000, np.float32)]).shape == (1, 80, 3000)
    with pytest.raises(InputError, match="empty audio"):
        W.features(fe, [np.zeros(0, np.float32)])
    with pytest.raises(InputError, match="longer than Whisper's 30 s"):
        W.features(fe, [np.zeros(31 * 16000, np.float32)])
