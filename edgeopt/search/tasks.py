"""The work of one search trial as plain functions of plain data, so an executor can run them anywhere.

`build_candidate` (a build task: any worker) builds a candidate's chain through the shared content-addressed
stage cache and judges its outputs against the baseline's on the evaluation data. `time_candidates` (a
measure task: only on a node of the target, one at a time) times models interleaved in one process and
measures each one's peak memory in a child. Both read the run's data from one .npz in the cache
(`save_data` / `load_data`), and name models by `edgeopt.steps.portable` descriptions.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import EdgeoptError, InputError
from edgeopt.measure import fidelity, latency, runners
from edgeopt.measure.memory import peak_rss_mb
from edgeopt.passes.base import PassContext
from edgeopt.steps import StageCache, cache_key, first_line, load_portable, portable
from edgeopt.target import Target

ROLES = ("calibration", "evaluation", "reference", "labels")


def save_data(path: Path, parts: dict[str, list[Any]]) -> None:
    """Write lists of feeds (dicts of arrays) or arrays, by role, to one .npz (atomically; no pickle)."""
    arrays: dict[str, np.ndarray] = {}
    for role, items in parts.items():
        for i, item in enumerate(items or []):
            if isinstance(item, dict):
                for k, v in item.items():
                    arrays[f"{role}/{i}/{k}"] = np.asarray(v)
            else:
                arrays[f"{role}/{i}/"] = np.asarray(item)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
    os.close(fd)
    try:
        np.savez(tmp, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_data(path: str | Path) -> dict[str, list[Any]]:
    """What `save_data` wrote: {role: [feed dict or array, ...]}."""
    out: dict[str, dict[int, Any]] = {}
    with np.load(path, allow_pickle=False) as z:
        for name in z.files:
            role, i, key = name.split("/", 2)
            slot = out.setdefault(role, {})
            if key:
                slot.setdefault(int(i), {})[key] = z[name]
            else:
                slot[int(i)] = z[name]
    return {role: [items[i] for i in sorted(items)] for role, items in out.items()}


def accuracy(outputs: list[Any], labels: list[Any] | None) -> float | None:
    """Top-1 accuracy of classifier outputs (argmax over the last axis) against labels, or None without labels."""
    if not labels:
        return None
    hits = sum(int((np.asarray(o).reshape(len(np.atleast_1d(y)), -1).argmax(-1) == np.atleast_1d(y)).sum())
               for o, y in zip(outputs, labels))
    return hits / sum(len(np.atleast_1d(y)) for y in labels)


def judge(art: Any, data: dict[str, list[Any]], gates: dict[str, Any], threads: int) -> dict[str, Any]:
    """Fidelity (and accuracy with labels) of `art`'s first output against the reference outputs, and the gates."""
    runner = runners.make_runner(art, threads=threads)
    try:
        outs = [runner.run(f)[0] for f in data["evaluation"]]
    finally:
        runner.close()
    ref = data["reference"]
    fid = fidelity.compare(ref, outs, art.meta.get("decision_threshold"))
    acc = accuracy(outs, data.get("labels"))
    result: dict[str, Any] = {"fidelity": fid}
    if acc is not None:
        base = accuracy(ref, data.get("labels"))
        result["accuracy"] = {"top1": acc}
        fid["accuracy_drop"] = 100.0 * ((base or 0.0) - acc)
    passed, why = fidelity.gate(fid, gates)
    result["gate"] = {"passed": passed, "why": why}
    return result


def build_candidate(job: dict[str, Any]) -> dict[str, Any]:
    """Build one candidate and judge it. `job`: cache (folder), start (portable description of the model the
    chain starts from), chain ([(pass, config)]), data (.npz), data_key, target (Target.to_dict()), measure
    and gates (dicts), threads, seq_len, batch. Returns {artifact, steps, fidelity, gate[, accuracy]};
    a pass that fails raises EdgeoptError naming the step."""
    from edgeopt.recipe import MeasureSpec  # lazy: recipe validates passes through the registry

    check_job_paths(job)
    cache = StageCache(job["cache"])
    data = load_data(job["data"])
    target = Target.from_dict(job["target"])
    measure = MeasureSpec(**job.get("measure", {}))
    current = load_portable(job["start"], seq_len=job.get("seq_len", 128), batch=job.get("batch", 1))
    baseline = current if current.kind == "torch" else None
    steps = []
    for pass_name, config in job["chain"]:
        key = cache_key(current.sha256, pass_name, config, job["data_key"], target.name)
        ctx = PassContext(stage_dir=cache.folder(key), target=target, calibration=data.get("calibration", []),
                          evaluation=data.get("evaluation", []), baseline=baseline, measure=measure,
                          gates=fidelity.GateSpec(**(job.get("gates") or {})))
        t0 = time.perf_counter()
        got = cache.get(key, current, ctx)
        cached = got is not None
        if got is None:
            try:
                got = cache.build(key, pass_name, config, current, ctx)
            except EdgeoptError as e:
                raise type(e)(f"{pass_name}: {e}") from None
        current, rec = got
        steps.append({"pass": pass_name, "config": config, "key": key, "cached": cached,
                      "duration_s": round(time.perf_counter() - t0, 3) if not cached else rec.get("duration_s", 0.0),
                      "warnings": rec.get("warnings", []), "notes": rec.get("notes", {})})
    out = {"artifact": portable(current), "steps": steps}
    out.update(judge(current, data, job.get("gates") or {}, job.get("threads", 2)))
    return out


def time_candidates(job: dict[str, Any]) -> dict[str, Any]:
    """Time models interleaved in one process and measure each one's peak memory in a child. `job`: models
    ({name: portable description}), data (.npz: the first evaluation feed is timed), threads, warmup, runs,
    block, settle, pause_ms, spinning, memory (bool). Returns {"samples": {name: [ms]}, "peak_mb": {name: MB},
    "errors": {name: why}, "per_turn": block - settle}."""
    check_job_paths(job)
    data = load_data(job["data"])
    feed = data["evaluation"][0]
    threads = int(job.get("threads", 2))
    arts = {n: load_portable(d, seq_len=job.get("seq_len", 128), batch=job.get("batch", 1))
            for n, d in job["models"].items()}
    made, errors = {}, {}
    try:
        for n, a in arts.items():
            try:
                made[n] = runners.make_runner(a, threads=threads, spinning=job.get("spinning", True))
            except EdgeoptError as e:
                errors[n] = str(e)
        block, settle = int(job.get("block", 5)), int(job.get("settle", 1))
        stats = latency.measure_interleaved(made, feed, warmup=int(job.get("warmup", 5)), runs=int(job.get("runs", 30)),
                                            block=block, settle=settle, pause_s=float(job.get("pause_ms", 50)) / 1000)
    finally:
        for r in made.values():
            r.close()
    peaks: dict[str, float] = {}
    if job.get("memory", True):
        for n, a in arts.items():
            if n in errors:
                continue
            try:
                res = peak_rss_mb(a, feed, threads=threads)
                peaks[n] = float(getattr(res, "peak_mb", res))
            except (EdgeoptError, OSError) as e:
                errors[n] = f"peak memory not measured: {first_line(e)}"
    return {"samples": {n: list(map(float, s.samples)) for n, s in stats.items()}, "peak_mb": peaks,
            "errors": errors, "per_turn": block - settle}


def check_job_paths(job: dict[str, Any]) -> None:
    """InputError when a job names a data file or cache folder this worker cannot see (a cluster without a
    shared folder)."""
    for key in ("data", "cache"):
        if key in job and not Path(job[key]).exists():
            raise InputError(f"{job[key]}: not visible on this worker; the stage cache must be a folder every "
                             "worker shares (search.cache in the recipe)")
