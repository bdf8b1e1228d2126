"""zoo LLMs: TinyLlama's architecture (seeded random weights) and the real SmolLM2-135M from its GGUF, as causal LMs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgeopt.errors import InputError
from edgeopt.load import load_model
from edgeopt.measure.runners import make_runner
from edgeopt.zoo.llm import TINYLLAMA, TINYLLAMA_MINI, smollm2_folder, tinyllama


def test_tinyllama_config_is_the_1_1b_architecture():
    assert (TINYLLAMA["num_hidden_layers"], TINYLLAMA["hidden_size"], TINYLLAMA["num_attention_heads"],
            TINYLLAMA["num_key_value_heads"], TINYLLAMA["intermediate_size"], TINYLLAMA["vocab_size"]) == (
        22, 2048, 32, 4, 5632, 32000)
    mini = TINYLLAMA_MINI  # the same layout, smaller: grouped-query ratio and vocabulary kept
    assert mini["num_attention_heads"] // mini["num_key_value_heads"] == 8 and mini["vocab_size"] == 32000


def test_tinyllama_mini_gives_logits_and_is_seeded():
    art = load_model("zoo:tinyllama-mini", seq_len=16)
    assert art.input_spec.names == ["input_ids", "attention_mask"] and art.meta["task"] == "causal-lm"
    assert art.meta["num_kv_heads"] == 1 and art.meta["num_layers"] == 2
    feed = {"input_ids": np.arange(16, dtype=np.int64)[None] * 3, "attention_mask": np.ones((1, 16), np.int64)}
    (logits,) = make_runner(art, threads=1).run(feed)
    assert logits.shape == (1, 16, 32000) and np.isfinite(logits).all()
    assert load_model("zoo:tinyllama-mini", seq_len=16).sha256 == art.sha256  # seeded: the same weights


def test_a_local_causal_lm_folder_loads_as_logits(tmp_path):
    lm = tinyllama(TINYLLAMA_MINI, seed=1)
    lm.save_pretrained(tmp_path / "tl", safe_serialization=True)
    art = load_model(str(tmp_path / "tl"), seq_len=8)
    assert art.meta["task"] == "causal-lm" and art.meta["output_names"] == ["logits"]
    feed = {"input_ids": np.ones((2, 8), np.int64), "attention_mask": np.ones((2, 8), np.int64)}
    assert make_runner(art, threads=1).run(feed)[0].shape == (2, 8, 32000)
    weights = next((tmp_path / "tl").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # truncated weights: one line naming the folder
    with pytest.raises(InputError, match="cannot load the causal LM"):
        load_model(str(tmp_path / "tl"))


@pytest.mark.slow
def test_smollm2_is_built_once_from_its_gguf_and_knows_the_capital_of_france(tmp_path, monkeypatch):
    import torch
    from transformers import AutoTokenizer

    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path / "cache"))
    art = load_model("zoo:smollm2-135m", seq_len=16)
    folder = smollm2_folder()  # cached: the stamp matches, nothing is rebuilt
    assert folder.is_relative_to(tmp_path / "cache") and json.loads((folder / "edgeopt.json").read_text())["format"] == 1
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["num_hidden_layers"] == 30 and cfg["num_key_value_heads"] == 3
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")], "no temporary folder left"
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    lm = art.module.lm
    with torch.no_grad():
        out = lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3, do_sample=False)
    assert tok.decode(out[0, ids.shape[1]:]).strip().startswith("Paris")
