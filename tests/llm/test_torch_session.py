"""TorchLlm: prefill + decode through the KV cache give score's logits, dynamic int8, prompt limits, folder loading."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import check_session_limits, cosine_rows

from edgeopt.errors import InputError
from edgeopt.llm.session import LlmSession
from edgeopt.llm.torch_session import TorchLlm, load_torch_llm
from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama

IDS = [1, 450, 7483, 310, 3444, 338, 29871, 13, 4086, 31999]


def _cached_logits(session: LlmSession, ids: list[int], n_prompt: int) -> np.ndarray:
    """Rows n_prompt-1 … len(ids)-1 of the logits, from prefill(ids[:n_prompt]) then decode of the rest."""
    rows = [session.prefill(ids[:n_prompt])]
    rows += [session.decode(t) for t in ids[n_prompt:-1]]
    return np.stack(rows)


def test_prefill_and_decode_match_score_at_the_same_positions():
    s = TorchLlm(tinyllama(TINYLLAMA_MINI), threads=1, max_cache=64)
    assert isinstance(s, LlmSession) and s.name == "torch" and s.vocab_size == 32000
    assert s.max_cache == s.max_prompt == 64
    full = s.score(IDS)
    assert full.shape == (len(IDS), 32000) and full.dtype == np.float32
    cached = _cached_logits(s, IDS, 4)
    np.testing.assert_allclose(cached, full[3:-1], atol=1e-4)
    # a second prefill starts from an empty cache: the same logits as the first time
    np.testing.assert_allclose(s.prefill(IDS[:4]), full[3], atol=1e-4)
    np.testing.assert_allclose(s.decode(IDS[4]), full[4], atol=1e-4)
    s.close()
    with pytest.raises(InputError, match="closed"):
        s.score(IDS)


def test_int8_is_close_but_not_identical_and_keeps_the_fp32_model():
    model = tinyllama(TINYLLAMA_MINI)
    ref = TorchLlm(model, threads=1).score(IDS)
    q = TorchLlm(model, threads=1, int8=True)
    assert q.name == "torch-int8"
    assert type(q.model.lm_head).__module__.startswith("torch.ao.nn.quantized")
    assert type(model.lm_head).__name__ == "Linear" and model.lm_head.weight.dtype.is_floating_point
    got = q.score(IDS)
    assert np.abs(got - ref).max() > 1e-4  # quantized: not the fp32 numbers
    assert cosine_rows(got, ref).min() > 0.99
    # activations are quantized per call (one scale per tensor), so cached and full runs differ a little
    assert cosine_rows(_cached_logits(q, IDS, 5), got[4:-1]).min() > 0.999


def test_prompt_and_cache_limits_raise_one_line_errors():
    s = TorchLlm(tinyllama(TINYLLAMA_MINI), threads=1, max_cache=8, name="mini")
    assert s.name == "mini" and s.max_prompt == 8
    with pytest.raises(InputError, match="empty"):
        s.prefill([])
    check_session_limits(s, IDS)
    assert TorchLlm(tinyllama(TINYLLAMA_MINI), max_cache=10**6).max_cache == TINYLLAMA_MINI["max_position_embeddings"]


def test_load_torch_llm_reads_a_local_folder(tmp_path):
    model = tinyllama(TINYLLAMA_MINI)
    model.save_pretrained(tmp_path / "mini", safe_serialization=True)
    s = load_torch_llm(tmp_path / "mini", threads=1, max_cache=32)
    ref = TorchLlm(model, threads=1).score(IDS[:6])
    np.testing.assert_allclose(s.score(IDS[:6]), ref, atol=1e-4)  # sdpa attention here, eager in `model`
    with pytest.raises(InputError, match="no config.json"):
        load_torch_llm(tmp_path / "missing")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(InputError, match="cannot load the causal LM"):
        load_torch_llm(tmp_path / "broken")
