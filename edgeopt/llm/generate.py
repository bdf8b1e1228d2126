"""Text generation on any LlmSession: tokenizer and chat template from the model folder, greedy or seeded
top-k/top-p sampling, stop tokens, streaming, and the timing a user asks for (TTFT, prefill and decode tokens/s).

The sampling loop is written by hand (a few lines of numpy) because the runtimes differ: transformers'
`generate` drives only torch models, and LiteRT's Python API has no generation loop (the LiteRT-LM engine has
one, for its own .litertlm bundles only).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgeopt.errors import InputError, first_line
from edgeopt.llm.measure import open_session
from edgeopt.llm.session import LlmSession, check_prompt


@dataclass(frozen=True)
class Sampling:
    """Greedy when temperature is 0, else softmax(logits / temperature) cut to the top_k tokens and to the
    smallest set whose probability reaches top_p, drawn with a numpy generator seeded by `seed`."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.top_k < 0:
            raise InputError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")


def pick(logits: np.ndarray, sampling: Sampling, rng: np.random.Generator) -> int:
    """The next token from `logits` (vocab,) under `sampling`."""
    if sampling.temperature == 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / sampling.temperature
    order = np.argsort(-z)
    if sampling.top_k:
        order = order[:sampling.top_k]
    p = np.exp(z[order] - z[order[0]])
    p /= p.sum()
    if sampling.top_p < 1:
        keep = int(np.searchsorted(np.cumsum(p), sampling.top_p) + 1)
        order, p = order[:keep], p[:keep] / p[:keep].sum()
    return int(order[rng.choice(len(order), p=p)])


@dataclass
class GenerationStats:
    """Timing of one generation: TTFT covers the prompt's prefill and the first token's logits."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_ms: float = 0.0
    decode_ms: list[float] = field(default_factory=list)  # one per token after the first
    stopped: str = ""  # "eos", "stop string", "max tokens", "cache full"

    @property
    def prefill_tok_s(self) -> float:
        return self.prompt_tokens / (self.ttft_ms / 1000) if self.ttft_ms else 0.0

    @property
    def decode_tok_s(self) -> float:
        """Tokens per second from the median per-token decode time (robust to one slow step)."""
        return 1000.0 / float(np.median(self.decode_ms)) if self.decode_ms else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"prompt_tokens": self.prompt_tokens, "new_tokens": self.new_tokens, "ttft_ms": self.ttft_ms,
                "prefill_tok_s": self.prefill_tok_s, "decode_tok_s": self.decode_tok_s, "stopped": self.stopped}


@dataclass
class Generation:
    text: str
    tokens: list[int]
    stats: GenerationStats


def load_tokenizer(folder: str | Path) -> Any:
    """The Hugging Face tokenizer saved in `folder` (a model folder, or an exported LLM's stage folder)."""
    folder = Path(folder)
    if not any((folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model", "vocab.json")):
        raise InputError(f"{folder}: no tokenizer files (tokenizer.json / tokenizer.model) beside the model")
    from transformers import AutoTokenizer  # lazy: heavy

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:
        raise InputError(f"{folder}: cannot load the tokenizer: {first_line(e, 200)}") from None


def stop_ids(tokenizer: Any, folder: str | Path | None = None) -> set[int]:
    """End-of-sequence ids: the tokenizer's eos and generation_config.json's eos_token_id (one or a list)."""
    ids = set()
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = Path(folder) / "generation_config.json" if folder else None
    if gen is not None and gen.is_file():
        try:
            eos = json.loads(gen.read_text()).get("eos_token_id")
        except ValueError:
            eos = None
        for e in ([eos] if isinstance(eos, int) else eos or []):
            ids.add(int(e))
    return ids


def use_chat_template(tokenizer: Any, chat: bool | None) -> bool:
    """Whether a prompt goes through the tokenizer's chat template: when it has one and `chat` is not False
    (None = when present); a one-line error when `chat` asks for a template the tokenizer (or None) lacks."""
    has_template = tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))
    if chat and not has_template:
        raise InputError("the tokenizer has no chat template (use the raw prompt: chat off)")
    return has_template and chat is not False


def encode(tokenizer: Any, prompt: str, chat: bool | None = None) -> list[int]:
    """Token ids of `prompt`: through the tokenizer's chat template as one user turn when it has one and `chat`
    is not False (None = when present), else the raw text with the tokenizer's own special tokens."""
    if use_chat_template(tokenizer, chat):
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):  # newer transformers return a BatchEncoding
            ids = ids["input_ids"]
        return [int(t) for t in ids]
    return [int(t) for t in tokenizer(prompt)["input_ids"]]


class TextStream:
    """Turns generated ids into text pieces as they come: decodes the whole continuation each step and emits
    the new suffix, holding back an incomplete UTF-8 character (shown by tokenizers as U+FFFD)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = ""

    def push(self, token: int) -> str:
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""
        piece, self.sent = text[len(self.sent):], text
        return piece

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)


def stream_ids(session: LlmSession, prompt_ids: Sequence[int], *, max_new_tokens: int = 64,
               sampling: Sampling = Sampling(), stop: set[int] | None = None,
               stats: GenerationStats | None = None) -> Iterator[int]:
    """Token ids generated after `prompt_ids`, one at a time; `stats` (when given) is filled as they come."""
    if max_new_tokens < 1:
        raise InputError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    check_prompt(session, len(prompt_ids))
    stats = stats if stats is not None else GenerationStats()
    stats.prompt_tokens = len(prompt_ids)
    rng = np.random.default_rng(sampling.seed)
    stop = stop or set()
    room = session.max_cache - len(prompt_ids)
    t0 = time.perf_counter()
    logits = session.prefill(prompt_ids)
    token = pick(logits, sampling, rng)
    stats.ttft_ms = (time.perf_counter() - t0) * 1000
    stats.stopped = "max tokens"
    for i in range(max_new_tokens):
        if token in stop:
            stats.stopped = "eos"
            return
        stats.new_tokens += 1
        yield token
        if i == max_new_tokens - 1:
            return
        if i + 1 >= room:
            stats.stopped = "cache full"
            return
        t = time.perf_counter()
        logits = session.decode(token)
        token = pick(logits, sampling, rng)
        stats.decode_ms.append((time.perf_counter() - t) * 1000)


class Generator:
    """A session with its tokenizer: `stream(prompt)` yields text pieces, `generate(prompt)` returns them whole;
    `stats` holds the last call's timing."""

    def __init__(self, session: LlmSession, tokenizer: Any, folder: str | Path | None = None):
        self.session, self.tokenizer = session, tokenizer
        self.stop = stop_ids(tokenizer, folder)
        self.stats = GenerationStats()
        self._out: TextStream | None = None

    def stream(self, prompt: str, *, max_new_tokens: int = 64, sampling: Sampling = Sampling(),
               chat: bool | None = None, stop: Sequence[str] = ()) -> Iterator[str]:
        ids = encode(self.tokenizer, prompt, chat)
        check_prompt(self.session, len(ids), 0)
        self.stats = GenerationStats()
        out = self._out = TextStream(self.tokenizer)
        for token in stream_ids(self.session, ids, max_new_tokens=max_new_tokens, sampling=sampling,
                                stop=self.stop, stats=self.stats):
            piece = out.push(token)
            if stop:
                text = out.text()
                hit = min((text.find(s) for s in stop if s and s in text), default=-1)
                if hit >= 0:
                    tail = text[len(out.sent) - len(piece):hit]
                    if tail:
                        yield tail
                    self.stats.stopped = "stop string"
                    return
            if piece:
                yield piece

    def generate(self, prompt: str, **kw: Any) -> Generation:
        pieces = list(self.stream(prompt, **kw))
        return Generation(text="".join(pieces), tokens=list(self._out.ids) if self._out else [], stats=self.stats)


def model_folder(model: str | Path) -> tuple[str, Path]:
    """(runtime, folder) of a model a user names: an exported LLM (.tflite file, or a folder holding one and its
    llm.json) runs on LiteRT; a Hugging Face causal-LM folder or `zoo:smollm2-135m` runs on PyTorch."""
    from edgeopt.llm.export import LLM_JSON

    text = str(model)
    if text.startswith("zoo:"):
        if text != "zoo:smollm2-135m":
            raise InputError(f"{text}: generation needs a model with a tokenizer (zoo:smollm2-135m)")
        from edgeopt.zoo.llm import smollm2_folder  # builds the cached folder on first use

        return "torch", smollm2_folder()
    p = Path(model)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.suffix == ".litertlm":
        return "litert-lm", p.parent
    if p.suffix == ".tflite" or (p.is_dir() and (p / LLM_JSON).is_file()):
        return "litert", p if p.is_dir() else p.parent
    if p.is_dir() and (p / "config.json").is_file():
        return "torch", p
    raise InputError(f"{p}: not an LLM edgeopt can run (an exported .tflite with llm.json, a .litertlm bundle, or "
                     "a Hugging Face causal-LM folder)")


def open_generator(model: str | Path, threads: int = 2) -> Generator:
    """A Generator for `model` (see `model_folder`), with the tokenizer found beside it; a `.litertlm` bundle runs
    on the LiteRT-LM engine (edgeopt.llm.litertlm.LiteRtLmGenerator, the same interface)."""
    runtime, folder = model_folder(model)
    if runtime == "litert-lm":
        from edgeopt.llm.litertlm import LiteRtLmGenerator  # lazy: imports this module

        return LiteRtLmGenerator(model, threads)  # type: ignore[return-value]
    tokenizer = load_tokenizer(folder)
    session = open_session(model if runtime == "litert" else folder, runtime, threads)
    return Generator(session, tokenizer, folder)
