"""edgeopt.llm.reauthor: HF Llama configs mapped onto the Generative API, weights loaded, logits checked."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch

from edgeopt.errors import InputError
from edgeopt.llm import reauthor as R
from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama


def test_reauthored_tinyllama_matches_hugging_face_logits():
    hf = tinyllama(TINYLLAMA_MINI)
    model = R.reauthor(hf, 64)
    ids = (torch.arange(20) * 37 + 5) % 32000
    res = R.verify(hf, model, ids, 64)
    assert res["rel_error"] < 1e-5 and res["top1_agreement"] == 1.0
    # the re-authored model is the Generative API's, with grouped-query attention as configured
    assert type(model).__name__ == "DecoderOnlyModel"
    assert model.config.block_config(0).attn_config.num_query_groups == 1
    assert not model.config.lm_head_share_weight_with_embedding  # TinyLlama has its own output layer


def test_a_wrong_rope_base_is_caught_by_the_logit_check():
    hf = tinyllama({**TINYLLAMA_MINI, "rope_theta": 100000.0})
    api = R.generative_api()
    cfg = R.model_config_from_hf(hf.config, api)
    assert cfg.block_config(0).attn_config.rotary_base == 100000.0
    wrong = SimpleNamespace(**{**hf.config.to_dict(), "rope_parameters": {"rope_theta": 10000.0}})
    model = R.reauthor(hf, 64, api)
    model.config.block_config(0).attn_config.rotary_base = R.rope(wrong)[0]  # SmolLM v1's base on v2 weights
    with pytest.raises(InputError, match="does not match the Hugging Face model"):
        R.verify(hf, model, torch.arange(24) * 11 % 32000, 64, api)


def test_rope_is_read_from_transformers5_and_older_configs():
    assert R.rope(SimpleNamespace(rope_parameters={"rope_theta": 1e5, "rope_type": "default"})) == (1e5, "default")
    assert R.rope(SimpleNamespace(rope_theta=5e5, rope_scaling=None)) == (5e5, None)
    assert R.rope(SimpleNamespace()) == (10000.0, None)


@pytest.mark.parametrize("config, match", [
    (SimpleNamespace(model_type="gpt2", num_attention_heads=4), "not a decoder-only Llama-family LM"),
    (SimpleNamespace(model_type="t5", is_encoder_decoder=True), "not a decoder-only Llama-family LM"),
    (SimpleNamespace(model_type="llama", rope_scaling={"rope_type": "yarn"}, num_attention_heads=4,
                     hidden_size=64, num_hidden_layers=1, vocab_size=10), "RoPE type 'yarn'"),
])
def test_configs_it_cannot_reauthor_get_one_line(config, match):
    with pytest.raises(InputError, match=match):
        R.hf_shape(config)


def test_the_tensorflow_alias_does_not_outlive_the_import():
    R.generative_api()
    assert "tensorflow" not in sys.modules
    import importlib.util
    assert importlib.util.find_spec("tensorflow") is None  # transformers' probe still finds no TensorFlow


def test_a_cache_longer_than_the_context_is_refused():
    hf = tinyllama({**TINYLLAMA_MINI, "max_position_embeddings": 32})
    with pytest.raises(InputError, match="longer than the model's context"):
        R.reauthor(hf, 64)
