"""Preflight: benchmark conditions that inflate or hide a model's gains, each as one line naming the fix."""

from __future__ import annotations

import math
import os
import statistics
import time
from pathlib import Path

import numpy as np

from edgeopt.artifact import Artifact
from edgeopt.errors import EdgeoptError, InputError
from edgeopt.measure.runners import make_runner
from edgeopt.target import Target, get_target

MIN_WARMUP = 3  # calls: the first ones pay lazy allocation, weight prepacking and page faults
MIN_RUNS = 20  # timed calls: fewer leave p90 and the speed-up interval resting on a handful of samples
PROBE_MAX_WARMUP = 20  # the probe replays at most this many warm-up calls
PROBE_STEADY = 5  # calls after the warm-up whose median is "steady"
SLOW_FIRST = 2.0  # a first timed call this many times the steady median means the warm-up was too short ...
SLOW_FIRST_MS = 0.5  # ... and this much slower in absolute terms (tiny models jitter by more than 2x)
BUSY_LOAD = 0.5  # load average per usable core above which other work is competing


def usable_cores() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (containers)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    for path in ("/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"):
        try:
            raw = Path(path).read_text().split()
        except OSError:
            continue
        try:
            if path.endswith("cpu.max") and raw and raw[0] != "max":
                n = min(n, max(1, math.ceil(int(raw[0]) / int(raw[1]))))
            elif path.endswith("quota_us") and raw and int(raw[0]) > 0:
                period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text().split()[0])
                n = min(n, max(1, math.ceil(int(raw[0]) / period)))
        except (OSError, ValueError, IndexError, ZeroDivisionError):
            pass
        break
    return max(int(n), 1)


def _governors() -> dict[str, list[int]]:
    """Frequency governor name -> the usable CPUs running it (empty where cpufreq is not exposed)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    out: dict[str, list[int]] = {}
    for c in cpus:
        try:
            g = Path(f"/sys/devices/system/cpu/cpu{c}/cpufreq/scaling_governor").read_text().strip()
        except OSError:
            continue
        out.setdefault(g, []).append(c)
    return out


def _load1() -> float | None:
    try:
        return float(os.getloadavg()[0])
    except (AttributeError, OSError):
        return None


def dynamic_dims(art: Artifact) -> dict[str, list[str]]:
    """Input name -> its dims that are dynamic where the model runs: named dims of an ONNX graph; for an
    OpenVINO IR, its dynamic dims unless the artifact's settings fix them (meta["openvino"]["static_shapes"])."""
    if art.kind == "openvino" and (art.meta.get("openvino") or {}).get("static_shapes"):
        return {}
    if art.kind not in ("onnx", "openvino"):
        return {}
    return {t.name: [str(d) for d in t.shape if isinstance(d, str)] for t in art.input_spec.inputs
            if any(isinstance(d, str) for d in t.shape)}


def _probe(art: Artifact, feed: dict[str, np.ndarray], threads: int, warmup: int, spinning: bool | None
           ) -> tuple[list[float], int] | str:
    """(call times in ms, warm-up calls replayed) for min(warmup, PROBE_MAX_WARMUP) + PROBE_STEADY calls on a
    fresh runner, or why it could not run."""
    w = min(warmup, PROBE_MAX_WARMUP)
    try:
        runner = make_runner(art, threads, spinning=bool(spinning))
    except EdgeoptError as e:
        return str(e)
    times = []
    try:
        for _ in range(w + PROBE_STEADY):
            t0 = time.perf_counter()
            runner.run(feed)
            times.append((time.perf_counter() - t0) * 1e3)
    except Exception as e:  # any runtime failure is a finding, never a crash
        return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
    finally:
        runner.close()
    return times, w


def preflight(art: Artifact, *, feed: dict[str, np.ndarray], target: Target | str, threads: int, warmup: int,
              runs: int, spinning: bool | None = None, probe: bool = True) -> list[str]:
    """Warnings about the benchmark conditions for `art` that inflate or hide gains; [] when none apply.

    Checks: dynamic input dims while the feed is fixed (ONNX named dims, OpenVINO compiled dynamic); threads
    above the usable cores (affinity and cgroup quota) or the target's cores, or below them on an idle
    machine; warm-up under 3 calls, or (`probe`: runs the model min(warmup, 20) + 5 times) a first timed
    call much slower than the steady ones; fewer than 20 timed calls; a 1-minute load average above half
    the usable cores; ONNX Runtime thread spinning on (`spinning`; None: not known); a CPU frequency
    governor other than "performance" where cpufreq is readable. Each warning is one line naming the fix.
    Bad arguments raise InputError.
    """
    if not isinstance(art, Artifact):
        raise InputError(f"preflight: expected an Artifact, got {type(art).__name__}")
    if not isinstance(feed, dict) or not feed:
        raise InputError("preflight: feed must be a non-empty dict of input name -> array")
    for name, value, low in (("threads", threads, 1), ("warmup", warmup, 0), ("runs", runs, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"preflight: {name} must be an integer >= {low}, got {value!r}")
    try:
        target = get_target(target)
    except EdgeoptError as e:
        raise InputError(f"preflight: {e}") from None
    out: list[str] = []

    # shapes
    for name, dims in dynamic_dims(art).items():
        shape = "×".join(str(d) for d in np.shape(feed.get(name, ())))
        fix = ("convert.openvino: {static_shapes: true}" if art.kind == "openvino" else
               "fix them with python -m onnxruntime.tools.make_dynamic_shape_fixed, or compare static and "
               "dynamic shapes as separate candidates")
        out.append(f"shapes: input {name!r} has dynamic dims ({', '.join(dims)}) but the benchmark feeds a fixed "
                   f"{shape or 'shape'}: the runtime plans memory and picks kernels per call, which hides what "
                   f"static shapes gain; {fix}")

    # threads vs cores
    cores = usable_cores()
    load = _load1()
    if threads > cores:
        out.append(f"threads: {threads} intra-op threads on {cores} usable cores: workers time-slice and latency "
                   f"inflates and varies; use threads <= {cores}")
    elif threads < cores and (load is None or load < BUSY_LOAD * cores):
        out.append(f"threads: {threads} of {cores} usable cores on an idle machine: if it is dedicated to this model "
                   f"the deployment can use {cores} (session.tune measures the best count); gains measured at "
                   f"{threads} may not hold at {cores}")
    if not target.detected and threads > target.cores:
        out.append(f"threads: {threads} threads but target {target.name} has {target.cores} cores: the deployment "
                   f"cannot run that many; measure with threads <= {target.cores}")

    # warm-up and runs
    probed = _probe(art, feed, threads, warmup, spinning) if probe else None
    slow = None
    if isinstance(probed, tuple):
        times, w = probed
        steady = statistics.median(times[-PROBE_STEADY:])
        first = times[w]
        if w == warmup and first > SLOW_FIRST * steady and first - steady > SLOW_FIRST_MS:
            slow = f"the first timed call took {first:.2f} ms against {steady:.2f} ms steady ({first / steady:.1f}×)"
    if warmup < MIN_WARMUP:
        out.append(f"warm-up: {warmup} untimed call{'s' * (warmup != 1)} (< {MIN_WARMUP}): the first calls pay lazy "
                   f"allocation, weight prepacking and page faults{': ' + slow if slow else ''}; use warmup >= "
                   f"{MIN_WARMUP}")
    elif slow:
        out.append(f"warm-up: after {warmup} warm-up calls {slow}: the model is not warm yet; raise warmup")
    if isinstance(probed, str):
        out.append(f"warm-up: not probed: {probed}")
    if runs < MIN_RUNS:
        out.append(f"runs: {runs} timed calls (< {MIN_RUNS}): p90 and the speed-up interval rest on too few samples; "
                   f"use runs >= {MIN_RUNS}")

    # the machine
    if load is not None and load >= BUSY_LOAD * cores:
        out.append(f"load: 1-minute load average {load:.2f} on {cores} usable cores: other work competes for the "
                   f"CPU and inflates latency and its spread; measure on an idle machine")
    if spinning and art.kind == "onnx":
        out.append("spinning: ONNX Runtime intra-op threads spin (busy-wait) between ops: fast hand-offs, but idle "
                   "CPU looks busy and contention with other processes is hidden; if the deployment shares the "
                   "CPU, measure with spinning off too (measure.spinning: false)")
    govs = {g: c for g, c in _governors().items() if g != "performance"}
    if govs:
        where = "; ".join(f"{g!r} on cpu {','.join(map(str, c[:8]))}{'…' if len(c) > 8 else ''}"
                          for g, c in sorted(govs.items()))
        out.append(f"cpu frequency: governor {where}: clocks ramp during the run, so early and short runs read "
                   f"slow; set 'performance' (sudo cpupower frequency-set -g performance)")
    return out
