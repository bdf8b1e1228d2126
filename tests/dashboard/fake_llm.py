"""A fake edgeopt.llm.generate.Generator for the dashboard's generation tests (no model is loaded)."""

from __future__ import annotations

from edgeopt.llm.generate import GenerationStats


class FakeSession:
    name = "litert"
    label = "Fake LiteRT · 2 threads"

    def __init__(self, path):
        self.path, self.closed = path, False

    def close(self):
        self.closed = True


class FakeGenerator:
    """Yields `pieces` (one token each: 20 ms TTFT, 10 ms per decoded token); waits on `gate` after `hold` pieces;
    raises `fail` instead of generating."""

    def __init__(self, path, pieces=("Paris", ".", " It", " is"), gate=None, hold=2, fail=None):
        self.session = FakeSession(path)
        self.stats = GenerationStats()
        self.pieces, self.gate, self.hold, self.fail = pieces, gate, hold, fail
        self.calls, self.closed_streams = [], 0

    def stream(self, prompt, *, max_new_tokens=64, sampling=None, chat=None, stop=()):
        self.calls.append({"prompt": prompt, "max_new_tokens": max_new_tokens, "sampling": sampling, "chat": chat,
                           "stop": stop})
        if self.fail:
            raise self.fail
        self.stats = GenerationStats(prompt_tokens=len(prompt.split()))
        self.stats.ttft_ms = 20.0
        self.stats.stopped = "max tokens"
        try:
            for i, piece in enumerate(self.pieces[:max_new_tokens]):
                if i:
                    self.stats.decode_ms.append(10.0)
                self.stats.new_tokens += 1
                yield piece
                if self.gate is not None and i + 1 == self.hold:
                    assert self.gate.wait(10)
        finally:
            self.closed_streams += 1


class Opener:
    """A GeneratorCache opener that records what it opened and hands out FakeGenerators."""

    def __init__(self, **kw):
        self.kw, self.opened = kw, []

    def __call__(self, path, threads):
        gen = FakeGenerator(path, **self.kw)
        self.opened.append((path, threads, gen))
        return gen
