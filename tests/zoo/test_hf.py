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
