"""edgeopt.llm.litertlm: .litertlm bundles of an exported LLM, generated on the LiteRT-LM engine."""

from __future__ import annotations

import pytest
import torch

from edgeopt.errors import InputError

pytest.importorskip("litert_lm")
pytest.importorskip("litert_lm_builder")

from edgeopt.llm import litertlm as LM  # noqa: E402
from edgeopt.llm.generate import Sampling, open_generator  # noqa: E402


@pytest.fixture(scope="module")
def word_llm(tmp_path_factory):
    """A 1-block TinyLlama-layout LM over a 16-word tokenizer (built in code; random weights), exported with the
    transposed KV cache and a decode window, and bundled: (hf model, tokenizer, stage folder, .litertlm path)."""
    from edgeopt.llm import export as E
    from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama
    from helpers import word_tokenizer

    t = word_tokenizer()
    torch.manual_seed(0)
    hf = tinyllama({**TINYLLAMA_MINI, "num_hidden_layers": 1, "vocab_size": 16, "bos_token_id": 1,
                    "eos_token_id": 2})
    d = tmp_path_factory.mktemp("word_llm")
    t.save_pretrained(d / "tok")
    # with a decode window: the engine runs `decode` and leaves decode_<W> alone
    facts = E.convert(hf, d / "stage" / "model.tflite", prefill_lens=(8, 16), kv_cache_max_len=64, score_len=None,
                      kv_layout="transposed", decode_windows=(32,))
    E.write_sidecar(d / "stage", facts, d / "tok")
    return hf, t, d / "stage", LM.bundle(d / "stage")


def _greedy(hf, ids, n, stop):
    out, x = [], torch.tensor([ids])
    with torch.no_grad():
        for _ in range(n):
            tok = int(hf(input_ids=x).logits[0, -1].argmax())
            if tok in stop:
                break
            out.append(tok)
            x = torch.cat([x, torch.tensor([[tok]])], 1)
    return out


def test_bundle_runs_on_the_engine_like_the_model_it_holds(word_llm):
    hf, tok, stage, path = word_llm
    assert path == stage / "model.litertlm" and path.stat().st_size > (stage / "model.tflite").stat().st_size
    assert not list(stage.glob(".litertlm-*"))  # the work folder is gone
    prompt = "the capital of france is"
    ref = _greedy(hf, [1] + tok(prompt)["input_ids"], 10, {2})  # the engine starts every prompt with BOS
    assert len(ref) >= 3, ref  # enough tokens for the comparison to mean something
    gen = open_generator(path, threads=1)
    try:
        assert isinstance(gen, LM.LiteRtLmGenerator) and gen.session.max_cache == 64
        res = gen.generate(prompt, max_new_tokens=10, sampling=Sampling(), chat=False)
        assert res.text.split() == tok.decode(ref).split()
        st = res.stats
        assert st.prompt_tokens == 6 and st.ttft_ms > 0 and st.new_tokens >= len(ref)
        assert st.stopped == ("max tokens" if len(ref) == 10 else "eos")
        it = gen.stream(prompt, max_new_tokens=10, chat=False)
        assert next(it)
        it.close()  # the caller stops reading: the engine's decode is cancelled, the engine stays usable
        assert gen.generate(prompt, max_new_tokens=10, chat=False).text == res.text
        word = res.text.split()[1]
        cut = gen.generate(prompt, max_new_tokens=10, chat=False, stop=[word])
        assert cut.text == res.text[:res.text.find(word)] and gen.stats.stopped == "stop string"
        with pytest.raises(InputError, match="does not fit the KV cache \\(64"):
            list(gen.stream(" ".join(["the"] * 70), chat=False))
    finally:
        gen.session.close()


def test_bundle_refuses_what_the_engine_cannot_run(tiny_llm, word_llm, tmp_path):
    _, d = tiny_llm  # the default KV layout
    with pytest.raises(InputError, match="transposed layout; re-export with convert.litert_llm kv_layout"):
        LM.bundle(d / "fp32.tflite")
    _, _, stage, _ = word_llm
    with pytest.raises(InputError, match="ends in .litertlm"):
        LM.bundle(stage, tmp_path / "x.tflite")
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("model.tflite", "llm.json"):
        (bare / f).write_bytes((stage / f).read_bytes())
    with pytest.raises(InputError, match="no tokenizer.json"):
        LM.bundle(bare)
    assert sorted(p.name for p in bare.iterdir()) == ["llm.json", "model.tflite"]  # nothing half-written
    with pytest.raises(InputError, match="no such file"):
        LM.LiteRtLmEngine(tmp_path / "missing.litertlm")
