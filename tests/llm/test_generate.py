"""edgeopt.llm.generate: sampling, stop tokens, streaming text and its timing, on a scripted session."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.errors import InputError
from edgeopt.llm import generate as G


class Scripted:
    """A session whose logits always favour a scripted next token (the position's entry of `script`)."""

    name = "scripted"

    def __init__(self, script, vocab=16, max_prompt=8, max_cache=32):
        self.script, self.vocab_size, self.max_prompt, self.max_cache = script, vocab, max_prompt, max_cache
        self.calls = []

    def _logits(self):
        out = np.zeros(self.vocab_size, dtype=np.float32)
        out[self.script[min(self.n, len(self.script) - 1)]] = 5.0
        out[(self.script[min(self.n, len(self.script) - 1)] + 1) % self.vocab_size] = 4.0
        return out

    def prefill(self, ids):
        self.calls.append(("prefill", list(ids)))
        self.n = 0
        return self._logits()

    def decode(self, token):
        self.calls.append(("decode", token))
        self.n += 1
        return self._logits()

    def score(self, ids):
        raise NotImplementedError

    def close(self):
        pass


def test_greedy_follows_the_logits_and_stops_at_eos():
    s = Scripted([3, 4, 5, 2, 7])
    stats = G.GenerationStats()
    out = list(G.stream_ids(s, [1, 2], max_new_tokens=10, stop={2}, stats=stats))
    assert out == [3, 4, 5] and stats.stopped == "eos" and stats.new_tokens == 3
    assert s.calls[0] == ("prefill", [1, 2]) and [c[1] for c in s.calls[1:]] == [3, 4, 5]
    assert stats.ttft_ms > 0 and len(stats.decode_ms) == 3 and stats.decode_tok_s > 0


def test_max_tokens_and_cache_full():
    stats = G.GenerationStats()
    assert len(list(G.stream_ids(Scripted([3] * 50), [1], max_new_tokens=4, stats=stats))) == 4
    assert stats.stopped == "max tokens" and len(stats.decode_ms) == 3  # no decode after the last token
    stats = G.GenerationStats()
    out = list(G.stream_ids(Scripted([3] * 50, max_cache=6), [1, 2], max_new_tokens=20, stats=stats))
    assert len(out) == 4 and stats.stopped == "cache full"
    with pytest.raises(InputError, match="longer than the largest prefill"):
        list(G.stream_ids(Scripted([3]), list(range(9)), max_new_tokens=2))


def test_sampling_is_seeded_and_top_k_1_is_greedy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=100).astype(np.float32)
    assert G.pick(logits, G.Sampling(temperature=1.0, top_k=1), rng) == int(np.argmax(logits))
    r1, r2 = np.random.default_rng(3), np.random.default_rng(3)
    a = [G.pick(logits, G.Sampling(1.0, 20, 0.9), r1) for _ in range(20)]
    b = [G.pick(logits, G.Sampling(1.0, 20, 0.9), r2) for _ in range(20)]
    assert a == b and len(set(a)) > 1
    top20 = set(np.argsort(-logits)[:20].tolist())
    assert set(a) <= top20
    # top_p keeps the smallest set reaching p: with one dominant token it is that token alone
    peaked = np.zeros(10, dtype=np.float32)
    peaked[7] = 20.0
    assert {G.pick(peaked, G.Sampling(1.0, 0, 0.5), np.random.default_rng(i)) for i in range(10)} == {7}


@pytest.mark.parametrize("kw, match", [({"temperature": -1}, "temperature"), ({"top_k": -2}, "top_k"),
                                       ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p")])
def test_bad_sampling_settings(kw, match):
    with pytest.raises(InputError, match=match):
        G.Sampling(**kw)


@pytest.fixture(scope="module")
def word_tokenizer():
    """A real Hugging Face fast tokenizer over 16 words (built in code), with a chat template."""
    from helpers import word_tokenizer

    return word_tokenizer("{% for m in messages %}user : {{ m['content'] }} {% endfor %}assistant :")


def test_generator_streams_text_applies_the_chat_template_and_stops(word_tokenizer):
    s = Scripted([8, 9, 10, 2], max_prompt=16)  # paris a city </s>
    gen = G.Generator(s, word_tokenizer)
    pieces = list(gen.stream("the capital of france is", max_new_tokens=10))
    assert "".join(pieces).split() == ["paris", "a", "city"] and len(pieces) == 3
    assert gen.stats.stopped == "eos" and gen.stats.new_tokens == 3
    prompt = s.calls[0][1]
    assert prompt[0] == word_tokenizer.convert_tokens_to_ids("user") and prompt[-1] == 12  # "... assistant :"
    s2 = Scripted([8, 9, 10, 2])
    G.Generator(s2, word_tokenizer).generate("the capital", chat=False)
    assert s2.calls[0][1] == [3, 4]  # the raw prompt
    out = G.Generator(Scripted([8, 9, 10, 2]), word_tokenizer).generate("hello", stop=["city"])
    assert out.text.split() == ["paris", "a"] and out.tokens[:2] == [8, 9]


def test_model_folder_errors(tmp_path):
    with pytest.raises(InputError, match="no such file or folder"):
        G.model_folder(tmp_path / "missing")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="not an LLM edgeopt can run"):
        G.model_folder(tmp_path / "x.txt")
    with pytest.raises(InputError, match="no tokenizer files"):
        G.load_tokenizer(tmp_path)
    with pytest.raises(InputError, match="needs a model with a tokenizer"):
        G.model_folder("zoo:tinyllama")
