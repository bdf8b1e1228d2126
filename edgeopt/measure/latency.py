"""Latency: time runners interleaved (round-robin, rotated order) after warm-up and summarize in ms.

Candidates are compared in the same process run, one call each per round, so noise (frequency changes,
other processes, thermal state) hits all of them alike; the order rotates every round so no runner always
goes first. Never one-shot timings.
"""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from edgeopt.measure.runners import Feed, Runner

_now = time.perf_counter_ns  # the clock around each run (tests replace it with a fake one)
_wall = time.monotonic  # the clock min_time_s is checked against
_sleep = time.sleep


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one runner over `n` timed runs, in milliseconds; `samples` are the runs in round order."""

    p50: float
    p90: float
    p99: float
    mean: float
    std: float
    n: int
    samples: tuple[float, ...] = field(default=(), repr=False)

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> LatencyStats:
        """Percentiles (numpy, linear interpolation), mean and sample std (ddof=1) of `samples_ms`."""
        a = np.asarray(samples_ms, dtype=np.float64)
        if a.size == 0:
            raise ValueError("samples_ms: no samples")
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        std = float(a.std(ddof=1)) if a.size > 1 else 0.0
        return cls(float(p50), float(p90), float(p99), float(a.mean()), std, int(a.size),
                   tuple(float(x) for x in a))

    def to_dict(self) -> dict[str, Any]:
        """The summary as the ledger's Latency record takes it (without the raw samples)."""
        return {"p50": self.p50, "p90": self.p90, "p99": self.p99, "mean": self.mean, "std": self.std,
                "n": self.n}


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


def paired_ratio(base: Sequence[float], other: Sequence[float], per_turn: int) -> tuple[float, float, float]:
    """Median and 10th-90th percentile of per-round speedups (base / other): samples from
    `measure_interleaved` (in round order, `per_turn` timed calls a turn), rounds paired in time so noise
    that hits a whole round cancels out."""
    n = min(len(base), len(other)) // per_turn
    if n == 0:
        raise ValueError("paired_ratio: fewer samples than one turn")
    b = np.median(np.asarray(base[: n * per_turn]).reshape(n, per_turn), axis=1)
    o = np.median(np.asarray(other[: n * per_turn]).reshape(n, per_turn), axis=1)
    r = b / o
    return float(np.median(r)), float(np.percentile(r, 10)), float(np.percentile(r, 90))


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
