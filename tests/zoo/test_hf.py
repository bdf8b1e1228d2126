"""Local Hugging Face folders: loaded with eager attention as sentence embedders; pickled weights refused."""

from __future__ import annotations

import pytest
import torch

from edgeopt.errors import InputError
from edgeopt.load import load_model


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32)
    d = tmp_path_factory.mktemp("hf")
    BertModel(cfg).save_pretrained(d, safe_serialization=True)
    return d


def test_hf_folder_loads_as_embedder(hf_folder):
    art = load_model(hf_folder)
    assert art.kind == "torch" and art.meta["family"] == "bert" and art.meta["num_heads"] == 2
    assert art.module.encoder.config._attn_implementation == "eager"
    ids = torch.randint(0, 50, (2, 8))
    emb = art.module(ids, torch.ones_like(ids), torch.zeros_like(ids))
    assert emb.shape == (2, 16)
    assert torch.allclose(emb.norm(dim=1), torch.ones(2), atol=1e-5)  # L2-normalized sentence embeddings


def test_pickled_weights_refused(hf_folder, tmp_path):
    (tmp_path / "config.json").write_text((hf_folder / "config.json").read_text())
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04 not loaded")
    with pytest.raises(InputError, match="safetensors"):
        load_model(tmp_path)


def test_minilm_zoo_embeddings_are_real():
    from edgeopt.data import tokenize
    from edgeopt.zoo.minilm import load_minilm, minilm_path

    art = load_minilm(seq_len=32)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    feeds = tokenize(["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today.",
                      "_"], str(minilm_path()), 32, 1, names)
    with torch.inference_mode():
        e = [art.module(*(torch.from_numpy(f[n]) for n in names))[0] for f in feeds[:3]]
    sim = lambda a, b: float((a * b).sum())  # noqa: E731 - embeddings are unit vectors
    assert sim(e[0], e[1]) > sim(e[0], e[2]) + 0.2  # a trained model: paraphrases are closer than unrelated text


def test_vision_folder_loads_as_a_feature_model(tmp_path):
    import json

    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=32)).save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 32, "width": 32}}))
    art = load_model(tmp_path)
    assert art.input_spec.to_dict() == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 32, 32]}]
    assert art.meta["task"] == "image-features" and art.meta["family"] == "vit" and art.meta["num_heads"] == 2
    out = art.module(art.meta["example_inputs"]["pixel_values"])
    assert out.shape == (1, 16)  # the pooled output


def test_text_folder_without_token_types_and_whisper_encoder(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel, WhisperConfig, WhisperModel

    torch.manual_seed(0)
    cfg = DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32, max_position_embeddings=32)
    DistilBertModel(cfg).save_pretrained(tmp_path / "d", safe_serialization=True)
    art = load_model(tmp_path / "d", seq_len=8)
    assert art.input_spec.names == ["input_ids", "attention_mask"]  # DistilBERT takes no token types
    ids = torch.randint(0, 50, (2, 8))
    assert art.module(ids, torch.ones_like(ids)).shape == (2, 16)
    WhisperModel(WhisperConfig(vocab_size=64, num_mel_bins=80, d_model=16, encoder_layers=1, encoder_attention_heads=2,
                               decoder_layers=1, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                               max_source_positions=20, max_target_positions=16, pad_token_id=1, bos_token_id=2,
                               eos_token_id=2, decoder_start_token_id=3)).save_pretrained(tmp_path / "w",
                                                                                         safe_serialization=True)
    w = load_model(tmp_path / "w")
    assert w.input_spec.to_dict() == [{"name": "input_features", "dtype": "float32", "shape": ["batch", 80, 40]}]
    assert type(w.module.backbone).__name__ == "WhisperEncoder"  # the encoder alone: no generated tokens needed
    assert w.module(w.meta["example_inputs"]["input_features"]).shape == (1, 20, 16)


def test_encoder_decoder_text_folder_loads_its_encoder(tmp_path):
    from transformers import T5Config, T5Model

    torch.manual_seed(0)
    T5Model(T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                     decoder_start_token_id=0)).save_pretrained(tmp_path, safe_serialization=True)
    art = load_model(tmp_path, seq_len=8)
    assert art.input_spec.names == ["input_ids", "attention_mask"]  # no decoder inputs to invent
    ids = torch.randint(0, 64, (2, 8))
    assert art.module(ids, torch.ones_like(ids)).shape == (2, 16)
