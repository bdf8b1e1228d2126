"""Simulated mobile: measure the `mobile-cpu` target like a phone's big cores, on this (x86) machine.

This is a simulation, not a phone: the cores, caches, ISA and memory bandwidth stay this machine's; there is
no big.LITTLE scheduling and no thermal throttling. What it imposes are a phone app's two limits that change
which model wins:
- cores: latency is measured with 1-4 threads pinned to a subset of this process's allowed CPUs (the first
  `MOBILE_MAX_CORES` of them), with `pinned()` around in-process measurement and `--cores` for the memory child;
- memory: the peak-memory child runs under an RLIMIT_AS cap derived from the target's memory budget
  (`target.memory_gb`, 4 GB for mobile-cpu), and a model over it fails with "needs N MB, budget M MB"
  (MemoryBudgetExceeded; edgeopt.measure.memory explains how the cap allows for runtimes' reservations).

Pinning is per thread on Linux: `os.sched_setaffinity(0, ...)` sets the calling thread's mask, and a thread
takes its creator's mask when it is created. So runners (ONNX Runtime sessions, OpenVINO compiled models,
LiteRT interpreters, torch's OpenMP pool on its first parallel op) must be created inside `pinned()`; thread
pools created before keep their mask, and `stray_threads()` lists them. Written with the standard library
(os.sched_setaffinity, resource.setrlimit): `taskset` would only pin the whole process from outside.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeopt.artifact import Artifact
from edgeopt.errors import InputError
from edgeopt.measure.memory import MemoryBudgetExceeded, PeakMemory, peak_rss_mb
from edgeopt.target import MOBILE_MAX_CORES, MOBILE_MEMORY_GB, Target

__all__ = ["MobileLimits", "MemoryBudgetExceeded", "limits_for", "pinned", "peak_memory", "stray_threads",
           "allowed_cpus", "SIMULATED_TARGETS"]

SIMULATED_TARGETS = ("mobile-cpu",)


@dataclass(frozen=True)
class MobileLimits:
    """The simulated device limits: CPU ids to pin to (empty where the OS cannot pin), intra-op threads,
    and the memory budget of the measuring child in MB (2**20 bytes)."""

    cores: tuple[int, ...]
    threads: int
    memory_mb: int
    label: str = "mobile-cpu"
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The record for the ledger: {"label", "cores", "threads", "memory_mb", "note"}."""
        return {"label": self.label, "cores": list(self.cores), "threads": self.threads,
                "memory_mb": self.memory_mb, "note": self.note}


def allowed_cpus() -> tuple[int, ...]:
    """The CPU ids this thread may run on, in order (empty where the OS has no affinity API)."""
    if not hasattr(os, "sched_getaffinity"):
        return ()
    return tuple(sorted(os.sched_getaffinity(0)))


def limits_for(target: Target | None, *, threads: int | None = None, memory_mb: int | None = None,
               cores: Sequence[int] | None = None) -> MobileLimits | None:
    """The simulated limits of `target`, or None unless it is a simulated target (mobile-cpu).

    Cores: `cores` if given (must be allowed here), else the first min(MOBILE_MAX_CORES, allowed) CPUs of
    this thread's affinity. Threads: `threads` if given, else the target's, at most the pinned cores.
    Memory: `memory_mb` if given, else target.memory_gb (MOBILE_MEMORY_GB when unset).
    """
    if target is None or target.name not in SIMULATED_TARGETS:
        return None
    here = allowed_cpus()
    if cores is not None:
        chosen = tuple(sorted({int(c) for c in cores}))
        outside = [c for c in chosen if here and c not in here]
        if not chosen or outside:
            raise InputError(f"simulated cores {list(chosen)} are not a subset of this machine's allowed CPUs "
                             f"{list(here)}")
        if not here:
            chosen = ()
    else:
        chosen = here[:MOBILE_MAX_CORES]
    n = len(chosen) or min(MOBILE_MAX_CORES, os.cpu_count() or 1)
    want = int(threads) if threads is not None else int(target.threads)
    if want < 1:
        raise InputError(f"simulated threads must be at least 1, got {want}")
    nthreads = max(1, min(want, n, MOBILE_MAX_CORES))
    mem = int(memory_mb) if memory_mb is not None else int(round((target.memory_gb or MOBILE_MEMORY_GB) * 1024))
    if mem <= 0:
        raise InputError(f"simulated memory budget must be positive, got {mem} MB")
    pin = (f"{nthreads} thread(s) pinned to CPU {','.join(map(str, chosen))} of {len(here)} allowed"
           if chosen else f"{nthreads} thread(s), not pinned (no CPU affinity API on {platform.system()})")
    note = (f"simulated on {platform.machine() or 'this'} host, not a phone: {pin}; peak-memory child capped "
            f"at a {mem} MB budget (RLIMIT_AS after the runtime's imports); this CPU's cores, caches and ISA, "
            "no big.LITTLE, no thermal throttling")
    return MobileLimits(cores=chosen, threads=nthreads, memory_mb=mem, label=target.name, note=note)


def _cores_of(limits: MobileLimits | Sequence[int] | None) -> tuple[int, ...]:
    if limits is None:
        return ()
    return tuple(limits.cores) if isinstance(limits, MobileLimits) else tuple(int(c) for c in limits)


@contextmanager
def pinned(limits: MobileLimits | Sequence[int] | None) -> Iterator[frozenset[int] | None]:
    """Pin the calling thread to the limits' cores for the block, then restore its previous mask.

    Yields the pinned set, or None (and changes nothing) when there are no cores or no affinity API.
    Threads created inside the block (runtimes' thread pools) inherit the subset and keep it afterwards;
    threads created before it are not moved (module docstring).
    """
    cores = _cores_of(limits)
    if not cores or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    before = os.sched_getaffinity(0)
    try:
        os.sched_setaffinity(0, cores)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot pin to CPUs {list(cores)} (allowed here: {sorted(before)}): {e}") from None
    try:
        yield frozenset(cores)
    finally:
        os.sched_setaffinity(0, before)


def stray_threads(limits: MobileLimits | Sequence[int] | None) -> list[int]:
    """Native ids of this process's threads that may run outside the limits' cores (Linux; else [])."""
    cores = set(_cores_of(limits))
    if not cores or not hasattr(os, "sched_getaffinity") or not os.path.isdir("/proc/self/task"):
        return []
    out = []
    for tid in sorted(int(t) for t in os.listdir("/proc/self/task")):
        try:
            if not os.sched_getaffinity(tid) <= cores:
                out.append(tid)
        except OSError:  # the thread ended meanwhile
            continue
    return out


def peak_memory(art: Artifact, feed: dict[str, np.ndarray], limits: MobileLimits, runs: int = 3,
                timeout_s: float = 300) -> PeakMemory:
    """Peak RSS of `art` in a child pinned to the limits' cores and capped at their memory budget.

    Raises MemoryBudgetExceeded ("needs N MB, budget M MB") when the model does not fit, else what
    edgeopt.measure.memory.peak_rss_mb raises.
    """
    return peak_rss_mb(art, feed, threads=limits.threads, runs=runs, timeout_s=timeout_s,
                       cores=limits.cores or None, budget_mb=limits.memory_mb)

