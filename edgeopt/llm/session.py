"""The one interface every LLM runtime offers (prefill a prompt, decode a token, score a sequence), and its errors."""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from edgeopt.errors import InputError


@runtime_checkable
class LlmSession(Protocol):
    """A loaded LLM with its KV cache, driven one request at a time.

    `prefill(ids)` resets the cache, feeds the prompt and returns the logits (vocab,) of the token after it;
    `decode(token)` appends one token and returns the next token's logits; `score(ids)` returns teacher-forced
    logits (len(ids), vocab) for every position (row i predicts ids[i + 1]), used for fidelity, never timed.
    `max_prompt` is the longest prompt `prefill` takes, `max_cache` the most tokens prompt + generation may hold.
    """

    name: str
    max_prompt: int
    max_cache: int
    vocab_size: int

    def prefill(self, ids: Sequence[int]) -> np.ndarray: ...

    def decode(self, token: int) -> np.ndarray: ...

    def score(self, ids: Sequence[int]) -> np.ndarray: ...

    def close(self) -> None: ...


def check_prompt(session: LlmSession, n_prompt: int, max_new_tokens: int = 0) -> None:
    """One-line errors for a prompt the session cannot take: longer than its largest prefill or than its cache."""
    if n_prompt < 1:
        raise InputError("the prompt is empty (it needs at least one token)")
    if n_prompt > session.max_prompt:
        raise InputError(f"the prompt is {n_prompt} tokens, longer than the largest prefill this model takes "
                         f"({session.max_prompt}; export a longer prefill length)")
    if n_prompt + max_new_tokens > session.max_cache:
        raise InputError(f"the prompt ({n_prompt} tokens) plus {max_new_tokens} new tokens exceed the KV cache "
                         f"({session.max_cache} tokens; export a longer kv_cache_max_len or ask for fewer tokens)")
