"""The dashboard's LLM generation: which stages of a run can generate, input checks, and a background job that
streams text pieces and a tokens/s meter into a Transcript the page polls (no Streamlit here).

How it streams: the page submits `generation_job(...)` to the dashboard's Worker (kind "llm", run one at a time).
The job opens the variant's Generator once (`GeneratorCache`, edgeopt.llm.generate.open_generator), iterates
`gen.stream(...)`, and after each piece appends it to the shared `Transcript` together with a copy of `gen.stats`
(tokens, TTFT, decode and prefill tokens/s so far), and calls `job.report(fraction, meter)` — the same progress
channel the live toggles use, so Stop (job.cancel) ends the generation at the next token. A polling fragment on
the page reads `Transcript.snapshot()` a few times a second; the page never blocks on the model.
"""

from __future__ import annotations

import threading
import time
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from edgeopt.dashboard.worker import Cancelled, Job
from edgeopt.errors import EdgeoptError, InputError
from edgeopt.ledger import Ledger, Stage
from edgeopt.llm.generate import Sampling, open_generator
from edgeopt.report.html import inside, stage_dirname
from edgeopt.report.table import llm_quantization

MAX_PROMPT_CHARS = 4000   # longer prompts are refused before tokenizing (the model's own limit is checked after)
MAX_NEW_TOKENS = 512
MAX_TEMPERATURE = 2.0
MAX_TOP_K = 1000
MAX_STOPS = 4             # stop strings, each at most MAX_STOP_CHARS
MAX_STOP_CHARS = 40
MAX_THREADS = 64
LLM_JSON = "llm.json"     # edgeopt.llm.export.LLM_JSON: the sidecar beside an exported .tflite
ZOO_BASELINES = ("zoo:smollm2-135m",)  # zoo models whose Hugging Face folder the edgeopt cache may hold
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # any one: edgeopt.llm.generate.load_tokenizer


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / n).is_file() for n in TOKENIZER_FILES)


# ---------------------------------------------------------------------------------------- variants

@dataclass(frozen=True)
class LlmVariant:
    """One stage of a run that can generate: the exported LiteRT stage folder (model.tflite + llm.json +
    tokenizer) or the baseline's Hugging Face folder (PyTorch); `why` says why it cannot run here (None: it can)."""

    stage: str
    runtime: str                      # "litert" or "torch"
    quantization: str
    path: Path | None
    measured: dict[str, Any] = field(default_factory=dict)  # the run's stage.llm (decode_tok_s, ttft_ms, ...)
    why: str | None = None

    @property
    def usable(self) -> bool:
        return self.why is None and self.path is not None

    @property
    def label(self) -> str:
        dec = self.measured.get("decode_tok_s")
        rate = f" · {dec:.1f} tok/s in the run" if isinstance(dec, (int, float)) else ""
        return f"{self.stage} ({self.runtime}, {self.quantization}){rate}"


def _baseline_folder(ledger: Ledger, allowed: Sequence[Path]) -> tuple[Path | None, str | None]:
    """The baseline's Hugging Face folder when this machine has it: a zoo model's folder already in the edgeopt
    cache (never built from the page: that takes minutes), or the recipe's source folder inside an open folder."""
    source = str((ledger.recipe.get("model") or {}).get("source") or
                 ((ledger.stages[0].notes.get("meta") or {}).get("source") if ledger.stages else "") or "")
    if source in ZOO_BASELINES:
        from edgeopt.zoo.llm import SMOLLM2_FOLDER, cache_root  # lazy: the zoo's LLM module, only for LLM runs

        folder = cache_root() / SMOLLM2_FOLDER
        if (folder / "config.json").is_file() and (folder / "edgeopt.json").is_file() and _has_tokenizer(folder):
            return folder, None
        return None, (f"{source} is not in the edgeopt cache yet ({folder}); run `edgeopt generate {source} "
                      f"--prompt hi` once to build it")
    if source.startswith("zoo:") or not source:
        return None, f"the baseline {source or '(no source recorded)'} has no Hugging Face folder to load"
    p = Path(source)
    if not p.is_absolute() or not inside(p, allowed):
        return None, f"the baseline's folder {source} is outside the folders open to the dashboard"
    if not (p / "config.json").is_file():
        return None, f"the baseline's folder {source} has no config.json"
    if not _has_tokenizer(p):
        return None, f"the baseline's folder {source} has no tokenizer (generation needs one)"
    return p.resolve(), None


def _stage_folder(run_dir: Path, stage: Stage) -> tuple[Path | None, str | None]:
    """The stage's folder inside the run (RUN/<stage>/), when it holds one .tflite and llm.json."""
    folder = run_dir / stage_dirname(stage.name)
    if not inside(folder, [run_dir]):
        return None, f"stage folder {folder} is outside the run directory"
    if not folder.is_dir():
        return None, f"no stage folder {folder.name}/ in the run directory"
    if not (folder / LLM_JSON).is_file():
        return None, f"no {LLM_JSON} in {folder.name}/ (not an LLM exported with convert.litert_llm)"
    if len(list(folder.glob("*.tflite"))) != 1:
        return None, f"{folder.name}/ does not hold exactly one .tflite file"
    if not _has_tokenizer(folder):
        return None, f"no tokenizer in {folder.name}/ (the model was exported without one; generation needs it)"
    return folder.resolve(), None


def llm_variants(run_dir: str | Path, ledger: Ledger, allowed: Sequence[Path] = ()) -> list[LlmVariant]:
    """The stages of an LLM run that could generate, in ledger order: LiteRT stages whose folder holds the .tflite
    and llm.json, and the PyTorch baseline through its Hugging Face folder (see `_baseline_folder`). Stages that
    cannot run here are listed with `why`; an empty list for a run without LLM stages."""
    if not any(s.llm for s in ledger.stages):
        return []
    run_dir = Path(run_dir).resolve()
    out = []
    for i, s in enumerate(ledger.stages):
        kind = (s.artifact or {}).get("kind")
        if s.status != "done" or (i > 0 and kind != "tflite"):
            continue
        if i == 0 and s.pass_ is None:
            path, why = _baseline_folder(ledger, [run_dir, *allowed])
            runtime = "torch"
        else:
            path, why = _stage_folder(run_dir, s)
            runtime = "litert"
        out.append(LlmVariant(s.name, runtime, llm_quantization(s), path, dict(s.llm or {}), why))
    return out


# ---------------------------------------------------------------------------------------- requests

@dataclass(frozen=True)
class GenerationRequest:
    """What the page asks for, checked (see `generation_request`)."""

    prompt: str
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    chat: bool | None = None
    stop: tuple[str, ...] = ()


def generation_request(prompt: str, max_new_tokens: int = 64, temperature: float = 0.0, top_k: int = 0,
                       top_p: float = 1.0, seed: int = 0, chat: bool | None = None,
                       stop: Sequence[str] = ()) -> GenerationRequest:
    """A checked request; a one-line InputError naming the field otherwise. The model's own limits (the longest
    prefill, the KV cache) are checked by the generator once the prompt is tokenized."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt: empty; type something to continue")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InputError(f"prompt: {len(prompt)} characters, at most {MAX_PROMPT_CHARS}")
    if "\x00" in prompt:
        raise InputError("prompt: contains a NUL character")

    def whole(name: str, v: Any, lo: int, hi: int) -> int:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or not lo <= v <= hi:
            raise InputError(f"{name}: a whole number from {lo} to {hi}, got {v!r}")
        return int(v)

    def number(name: str, v: Any, lo: float, hi: float, lo_open: bool = False) -> float:
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and v == v and (lo < v if lo_open else lo <= v) \
            and v <= hi
        if not ok:
            raise InputError(f"{name}: a number in {'(' if lo_open else '['}{lo}, {hi}], got {v!r}")
        return float(v)

    stops = tuple(s for s in (stop or ()) if s)
    if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise InputError(f"stop: at most {MAX_STOPS} stop strings of at most {MAX_STOP_CHARS} characters each")
    if chat not in (None, True, False):
        raise InputError(f"chat: on, off or automatic, got {chat!r}")
    return GenerationRequest(prompt=prompt, max_new_tokens=whole("max new tokens", max_new_tokens, 1, MAX_NEW_TOKENS),
                             temperature=number("temperature", temperature, 0.0, MAX_TEMPERATURE),
                             top_k=whole("top-k", top_k, 0, MAX_TOP_K), top_p=number("top-p", top_p, 0.0, 1.0, True),
                             seed=whole("seed", seed, 0, 2**32 - 1), chat=chat, stop=stops)


# ---------------------------------------------------------------------------------------- the transcript

@dataclass
class Transcript:
    """One generation as the page sees it: the pieces so far and the meter (tokens, TTFT, tokens/s). Written by
    the job's thread, read by the page's; a lock keeps each snapshot consistent."""

    variant: str
    prompt: str
    max_new_tokens: int
    pieces: list[str] = field(default_factory=list)
    status: str = "queued"  # queued | loading | prefill | generating | done | failed | cancelled
    runtime: str = ""
    prompt_tokens: int = 0
    new_tokens: int = 0
    ttft_ms: float | None = None
    prefill_tok_s: float | None = None
    decode_tok_s: float | None = None
    stopped: str = ""
    error: str | None = None
    load_s: float | None = None
    started: float = field(default_factory=time.monotonic)
    finished: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _stats(self, stats: Any) -> None:
        self.prompt_tokens = int(getattr(stats, "prompt_tokens", 0) or 0)
        self.new_tokens = int(getattr(stats, "new_tokens", 0) or 0)
        ttft = getattr(stats, "ttft_ms", 0) or 0
        self.ttft_ms = float(ttft) if ttft else None
        self.prefill_tok_s = float(getattr(stats, "prefill_tok_s", 0) or 0) or None
        self.decode_tok_s = float(getattr(stats, "decode_tok_s", 0) or 0) or None
        self.stopped = str(getattr(stats, "stopped", "") or "")

    def set_status(self, status: str, runtime: str | None = None, load_s: float | None = None) -> None:
        with self._lock:
            self.status = status
            if runtime is not None:
                self.runtime = runtime
            if load_s is not None:
                self.load_s = load_s

    def add(self, piece: str, stats: Any) -> None:
        with self._lock:
            self.pieces.append(piece)
            self.status = "generating"
            self._stats(stats)

    def finish(self, status: str, stats: Any = None, error: str | None = None) -> None:
        with self._lock:
            if stats is not None:
                self._stats(stats)
            self.status, self.error, self.finished = status, error, time.monotonic()

    @property
    def text(self) -> str:
        with self._lock:
            return "".join(self.pieces)

    @property
    def done(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy for the page: text, status, meter figures, elapsed seconds."""
        with self._lock:
            return {"variant": self.variant, "prompt": self.prompt, "text": "".join(self.pieces),
                    "status": self.status, "runtime": self.runtime, "prompt_tokens": self.prompt_tokens,
                    "new_tokens": self.new_tokens, "max_new_tokens": self.max_new_tokens, "ttft_ms": self.ttft_ms,
                    "prefill_tok_s": self.prefill_tok_s, "decode_tok_s": self.decode_tok_s, "stopped": self.stopped,
                    "error": self.error, "load_s": self.load_s,
                    "elapsed_s": (self.finished or time.monotonic()) - self.started}


def meter_text(snap: dict[str, Any]) -> str:
    """One line: tokens so far, decode tok/s (median so far), TTFT and prefill tok/s, and why it stopped."""
    parts = [f"{snap['new_tokens']}/{snap['max_new_tokens']} tokens"]
    if snap.get("decode_tok_s"):
        parts.append(f"{snap['decode_tok_s']:.1f} tok/s decode")
    if snap.get("ttft_ms"):
        pre = f", {snap['prefill_tok_s']:.0f} tok/s prefill" if snap.get("prefill_tok_s") else ""
        parts.append(f"TTFT {snap['ttft_ms']:.0f} ms (prompt {snap['prompt_tokens']} tokens{pre})")
    if snap.get("status") == "done" and snap.get("stopped"):
        parts.append(f"stopped: {snap['stopped']}")
    return " · ".join(parts)


# ---------------------------------------------------------------------------------------- generators

def _open_generator(path: Path, threads: int) -> Any:
    return open_generator(path, threads=threads)


def _close(gen: Any) -> None:
    session = getattr(gen, "session", None)
    if session is not None:
        session.close()


class GeneratorCache:
    """Keeps one Generator open (the last variant used, at its thread count) so a second prompt skips the model
    load; switching variant closes the previous one first (one model in memory per browser session). `use` holds
    the cache's lock for the whole generation: one generation at a time."""

    def __init__(self, opener: Callable[[Path, int], Any] | None = None):
        self._opener = opener or _open_generator
        self._key: tuple[str, int] | None = None
        self._gen: Any = None
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, _close_holder, self.__dict__)

    @property
    def key(self) -> tuple[str, int] | None:
        return self._key

    @contextmanager
    def use(self, path: Path, threads: int) -> Iterator[tuple[Any, bool]]:
        """(generator, whether it was loaded now) for `path` at `threads` threads, held until the block ends."""
        key = (str(path), int(threads))
        with self._lock:
            loaded = False
            if self._key != key or self._gen is None:
                old, self._gen, self._key = self._gen, None, None
                if old is not None:
                    _close(old)
                self._gen = self._opener(Path(path), int(threads))
                self._key, loaded = key, True
            yield self._gen, loaded

    def close(self) -> None:
        with self._lock:
            gen, self._gen, self._key = self._gen, None, None
        if gen is not None:
            _close(gen)


def _close_holder(state: dict[str, Any]) -> None:
    """weakref finalizer: close the open session when the browser session (and its cache) goes away."""
    gen = state.get("_gen")
    if gen is not None:
        try:
            _close(gen)
        except Exception:  # a finalizer must not raise; the process may be shutting down
            pass


def generation_job(cache: GeneratorCache, variant: LlmVariant, request: GenerationRequest, transcript: Transcript,
                   threads: int = 2) -> Callable[[Job], dict[str, Any]]:
    """The Worker job that generates `request` on `variant` into `transcript` (bound now, so later widget changes
    cannot alter it); returns the final snapshot. Cancelling the job stops at the next token."""
    if not variant.usable:
        raise InputError(f"{variant.stage}: cannot generate here: {variant.why}")
    if not 1 <= int(threads) <= MAX_THREADS:
        raise InputError(f"threads: a whole number from 1 to {MAX_THREADS}, got {threads}")

    def fn(job: Job) -> dict[str, Any]:
        sampling = Sampling(request.temperature, request.top_k, request.top_p, request.seed)
        try:
            transcript.set_status("loading")
            job.report(0.0, f"loading {variant.stage} ({variant.runtime}, {threads} threads)")
            t0 = time.monotonic()
            with cache.use(variant.path, threads) as (gen, loaded):
                runtime = str(getattr(gen.session, "label", None) or getattr(gen.session, "name", variant.runtime))
                transcript.set_status("prefill", runtime, time.monotonic() - t0 if loaded else None)
                job.report(0.0, f"prefill of the prompt on {runtime}")
                pieces = gen.stream(request.prompt, max_new_tokens=request.max_new_tokens, sampling=sampling,
                                    chat=request.chat, stop=request.stop)
                try:
                    for piece in pieces:
                        if job.cancelled:  # Stop: nothing after it is shown
                            raise Cancelled()
                        transcript.add(piece, gen.stats)
                        snap = transcript.snapshot()
                        job.report(snap["new_tokens"] / request.max_new_tokens, meter_text(snap))
                finally:
                    close = getattr(pieces, "close", None)
                    if close is not None:
                        close()
                transcript.finish("done", gen.stats)
        except Cancelled:
            transcript.finish("cancelled")
            raise
        except Exception as e:
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:300]
            why = first if isinstance(e, EdgeoptError) else f"{e.__class__.__name__}: {first}"
            transcript.finish("failed", error=why)
            raise
        snap = transcript.snapshot()
        job.report(1.0, meter_text(snap))
        return snap

    return fn


__all__ = ["LlmVariant", "llm_variants", "GenerationRequest", "generation_request", "Transcript", "meter_text",
           "GeneratorCache", "generation_job", "MAX_PROMPT_CHARS", "MAX_NEW_TOKENS"]
