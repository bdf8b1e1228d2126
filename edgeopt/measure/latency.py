"""Latency: time runners interleaved (round-robin, rotated order), summarize in ms, and compare paired rounds.

Candidates are compared in the same process run, one call each per round, so noise (frequency changes,
other processes, thermal state) hits all of them alike; the order rotates every round so no runner always
goes first. Never one-shot timings. `LatencyStats` is the one latency summary (the ledger's record and
bench's rows extend it); `paired_speedup` is the one way to compare two of them.
"""

from __future__ import annotations

import gc
import time
from typing import Any, NamedTuple, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgeopt.measure.runners import Feed, Runner

_now = time.perf_counter_ns  # the clock around each run (tests replace it with a fake one)
_wall = time.monotonic  # the clock min_time_s is checked against
_sleep = time.sleep

CI = 0.95  # confidence of the speedup interval
N_BOOT = 2000  # bootstrap resamples behind it


class LatencyStats(BaseModel):
    """Latency of one runner over `n` timed runs, in milliseconds; `samples` are the runs in round order.

    `samples` never reach JSON (the ledger's `Latency` and bench's rows extend this type and keep only the
    summary); a record read back from JSON has none.
    """

    model_config = ConfigDict(frozen=True)

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    n: int
    samples: tuple[float, ...] = Field(default=(), repr=False, exclude=True)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        """Percentiles (numpy, linear interpolation), mean and sample std (ddof=1) of `samples_ms`."""
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("samples_ms: no samples")
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        std = float(a.std(ddof=1)) if a.size > 1 else 0.0
        return cls(p50=float(p50), p90=float(p90), p99=float(p99), mean=float(a.mean()), std=std, n=int(a.size),
                   samples=tuple(float(x) for x in a))

    def to_dict(self) -> dict[str, Any]:
        """The summary fields (p50 ... n) alone, without the raw samples or any field a subclass adds."""
        return {k: getattr(self, k) for k in LatencyStats.model_fields if k != "samples"}


class Speedup(NamedTuple):
    """`ratio` = median(base) / median(other) (> 1: other is faster), with its `ci` interval [lo, hi]."""

    ratio: float
    lo: float
    hi: float


def round_order(names: Sequence[str], round_index: int) -> list[str]:
    """The order of round `round_index`: `names` rotated left by `round_index` places."""
    k = round_index % len(names)
    return list(names[k:]) + list(names[:k])


def measure_interleaved(runners: dict[str, Runner], feed: Feed, warmup: int = 10, runs: int = 50,
                        progress: Any = None, min_time_s: float = 0.0, block: int = 1,
                        settle: int = 0, pause_s: float = 0.0) -> dict[str, LatencyStats]:
    """Time every runner on `feed`: `warmup` untimed rounds, then at least `runs` timed rounds.

    A round calls each runner once, in an order rotated every round (A B C, B C A, C A B, ...); warm-up
    rounds are interleaved the same way so every runner starts timing equally warm. Timing continues past
    `runs` rounds until `min_time_s` seconds of timed rounds have passed. `progress` is an optional
    rich.progress.Progress. The garbage collector is paused while timing (as timeit does).

    With `block` > 1 each runner's turn is `block` consecutive calls, the first `settle` of them untimed:
    runtimes whose worker threads spin after a call (ONNX Runtime, OpenMP in torch), as they do when
    deployed, would otherwise steal cores from the runner that follows. `runs` counts timed calls.
    `pause_s` sleeps (untimed) before each turn, long enough for the previous runtime's spinning worker
    threads to park.
    """
    if block < 1 or not 0 <= settle < block:
        raise ValueError(f"block must be >= 1 and 0 <= settle < block, got block={block}, settle={settle}")
    if not runners:
        raise ValueError("runners: nothing to time")
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    names = list(runners)
    advance = _progress(progress, names, warmup, runs)
    for r in range(warmup):
        for name in round_order(names, r):
            runners[name].run(feed)
            advance()
    samples: dict[str, list[int]] = {n: [] for n in names}
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = _wall()
        r = 0
        per_turn = block - settle
        while r * per_turn < runs or _wall() - start < min_time_s:
            for name in round_order(names, warmup + r):  # rotation continues from warm-up
                run = runners[name].run
                if pause_s > 0:
                    _sleep(pause_s)
                for _ in range(settle):
                    run(feed)
                for _ in range(per_turn):
                    t0 = _now()
                    run(feed)
                    t1 = _now()
                    samples[name].append(t1 - t0)
                    advance(extend=r * per_turn >= runs)
            r += 1
    finally:
        if gc_was_enabled:
            gc.enable()
    return {n: LatencyStats.from_samples(np.asarray(s, dtype=np.float64) / 1e6) for n, s in samples.items()}


def paired_speedup(base_ms: Sequence[float], other_ms: Sequence[float], per_turn: int = 1, ci: float = CI,
                   n_boot: int = N_BOOT, seed: int = 0) -> Speedup:
    """Speedup median(base) / median(other) with a paired bootstrap confidence interval over rounds.

    Both sample lists come from one `measure_interleaved` call, in round order, `per_turn` timed calls a
    turn, so sample i of each belongs to the same round. The bootstrap resamples whole rounds (with the
    calls of both runners in them), so noise that hit a round hits both sides of every resample alike and
    cancels, and `lo`, `hi` bound the ratio of medians at confidence `ci` (seeded: reproducible).
    """
    a = np.asarray(base_ms, dtype=np.float64)
    b = np.asarray(other_ms, dtype=np.float64)
    if a.size == 0 or a.size != b.size:
        raise ValueError(f"paired samples needed, got {a.size} and {b.size}")
    if per_turn < 1 or a.size % per_turn:
        raise ValueError(f"per_turn must be >= 1 and divide the {a.size} paired samples, got {per_turn}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    point = float(np.median(a) / np.median(b))
    rounds = a.size // per_turn
    ra, rb = a.reshape(rounds, per_turn), b.reshape(rounds, per_turn)  # (round, call)
    idx = np.random.default_rng(seed).integers(0, rounds, size=(n_boot, rounds))
    ratios = (np.median(ra[idx].reshape(n_boot, -1), axis=1)
              / np.median(rb[idx].reshape(n_boot, -1), axis=1))
    tail = (1.0 - ci) / 2 * 100
    lo, hi = np.percentile(ratios, [tail, 100 - tail])
    return Speedup(point, float(lo), float(hi))


def measure_one(runner: Runner, feed: Feed, warmup: int = 10, runs: int = 50, progress: Any = None,
                min_time_s: float = 0.0) -> LatencyStats:
    """Latency of a single runner (warm-up, then `runs` timed calls)."""
    return measure_interleaved({runner.name: runner}, feed, warmup=warmup, runs=runs, progress=progress,
                               min_time_s=min_time_s)[runner.name]


def _progress(progress: Any, names: list[str], warmup: int, runs: int):
    """A callable advancing one rich progress task by one call (a no-op without a progress display)."""
    if progress is None:
        return lambda extend=False: None
    total = len(names) * (warmup + runs)
    task = progress.add_task(f"timing {', '.join(names)}", total=total)
    state = {"total": total}

    def advance(extend: bool = False) -> None:
        if extend:  # min_time_s keeps timing past `runs`: grow the bar instead of overflowing it
            state["total"] += 1
            progress.update(task, total=state["total"])
        progress.advance(task, 1)

    return advance
