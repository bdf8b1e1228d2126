"""Per-node and per-op-type latency of an ONNX model, read from ONNX Runtime's own profiler trace."""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeopt.analyze import resolve_onnx
from edgeopt.analyze.flops import dim_bindings
from edgeopt.artifact import Artifact, onnx_input_spec
from edgeopt.data import random_feeds, resolve
from edgeopt.errors import InputError

SCHEMA = "edgeopt.profile/1"
_LEVELS = ("none", "basic", "extended", "all")


def _vocab_limit(model: Any, input_name: str) -> int | None:
    """Rows of the smallest embedding table an integer input indexes (so random ids stay in range)."""
    inits = {i.name: i for i in model.graph.initializer}
    rows = [int(inits[n.input[0]].dims[0]) for n in model.graph.node
            if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] == input_name and n.input[0] in inits
            and inits[n.input[0]].dims]
    return min(rows) if rows else None


def _feeds(data: Any, path: Path, art: Any, model: Any, dims: dict[str, int], seq_len: int, batch: int
           ) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        return [data]
    if isinstance(data, (list, tuple)):
        if not data or not all(isinstance(f, dict) for f in data):
            raise InputError("profile data: expected a feed dict or a non-empty list of feed dicts")
        return list(data)
    if isinstance(data, str):
        return resolve(data, art or Artifact.from_onnx(path), seq_len=seq_len, batch=batch, role="eval",
                       default_slice=slice(0, 16))
    if data is not None:
        raise InputError(f"profile data: expected a data spec, a feed dict or a list of them, got {type(data).__name__}")
    spec = onnx_input_spec(path)
    vocab = (art.meta.get("vocab_size") if art is not None else None) or min(
        [v for v in (_vocab_limit(model, t.name) for t in spec.inputs if t.dtype.startswith("int")) if v] or [100])
    return random_feeds(spec, 1, dims, seed=0, vocab=int(vocab))


def parse_trace(events: list[dict[str, Any]], runs: int) -> tuple[dict[str, dict[str, Any]], list[float]]:
    """Kernel time per node over the last `runs` model runs of an ONNX Runtime trace.

    Returns ({node name: {"op_type", "provider", "us" (summed over those runs)}}, model_run durations in µs).
    Warm-up runs are excluded by keeping only node events inside the timed runs' time windows.
    """
    run_events = sorted((e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"),
                        key=lambda e: e.get("ts", 0))
    timed = run_events[-runs:] if runs > 0 else []
    windows = [(int(e["ts"]), int(e["ts"]) + int(e.get("dur", 0))) for e in timed]
    nodes: dict[str, dict[str, Any]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        ts = int(e.get("ts", 0))
        if windows and not any(a <= ts <= b for a, b in windows):
            continue
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args") or {}
        row = nodes.setdefault(name, {"op_type": args.get("op_name", "?"), "provider": args.get("provider"), "us": 0})
        row["us"] += int(e.get("dur", 0))
    return nodes, [float(e.get("dur", 0)) for e in timed]


def tflite_profile(path: Path, top: int = 20) -> dict[str, Any]:
    """A LiteRT model's report: LiteRT has no per-op profiler in Python, so its op census (from the flatbuffer,
    read with the schema package LiteRT ships) and what the file declares, with `note` saying so."""
    from edgeopt.analyze.tflite import NO_PROFILER, op_census, tflite_info  # lazy: LiteRT is the [mobile] extra

    if not path.is_file():
        raise InputError(f"{path}: no such file")
    census = op_census(path)
    info = tflite_info(path)
    total = sum(census.values()) or 1
    return {"schema": 1, "model": str(path), "runtime": "litert", "note": NO_PROFILER,
            "op_census": [{"op_type": k, "count": v, "share": v / total} for k, v in list(census.items())[:top]],
            "n_ops": sum(census.values()), "info": info}


def profile(source: Any, threads: int = 2, runs: int = 20, warmup: int = 5, seq_len: int = 128, batch: int = 1,
            data: Any = None, *, top: int = 20, graph_optimization: str = "all",
            dims: dict[str, int] | None = None) -> dict[str, Any]:
    """Profile a model with ONNX Runtime (CPU) and return a JSON-serializable report.

    `source` is anything `edgeopt.analyze.analyze` takes. `data` is None (random inputs shaped by
    batch/seq_len), a data spec (`random:N`, `zoo:sentences[a:b]`, a .npz file), a feed dict or a list of
    them (used in turn). Kernel times come from the profiler trace of the `runs` timed runs (the `warmup`
    runs before them excluded), averaged per run; `graph_optimization` ("none", "basic", "extended",
    "all") picks the graph ONNX Runtime runs: "none" keeps the model's own node names, "all" is what a
    deployment runs. Keys: `schema`, `model`, `runtime`, `version`, `provider`, `threads`, `runs`, `warmup`,
    `graph_optimization`, `batch`, `seq_len`, `inputs`, `wall_ms` {mean, p50, min, max, std},
    `model_run_ms`, `node_total_ms`, `n_nodes`, `nodes` (top entries: name, op_type, provider, ms, share,
    in_model), `other` (the rest: nodes, ms, share), `op_types` (op_type, nodes, ms, share).
    """
    if isinstance(source, (str, Path)) and str(source).lower().endswith(".tflite"):
        return tflite_profile(Path(source), top=top)
    import onnxruntime as ort

    if graph_optimization not in _LEVELS:
        raise InputError(f"graph_optimization must be one of {', '.join(_LEVELS)} (got {graph_optimization!r})")
    if int(runs) < 1 or int(warmup) < 0 or int(threads) < 1 or int(top) < 1:
        raise InputError(f"profile needs runs >= 1, warmup >= 0, threads >= 1, top >= 1 "
                         f"(got runs={runs}, warmup={warmup}, threads={threads}, top={top})")
    with tempfile.TemporaryDirectory(prefix="edgeopt-profile-") as tmp:
        path, model, art, origin = resolve_onnx(source, Path(tmp))
        bound = dim_bindings(model, batch, seq_len, dims)
        feeds = _feeds(data, path, art, model, bound, seq_len, batch)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(threads)
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        so.graph_optimization_level = {
            "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[graph_optimization]
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(tmp) / "ort_profile")
        try:
            sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as e:
            raise InputError(f"{origin['source']}: ONNX Runtime cannot load it: {str(e).strip().splitlines()[0][:200]}") from None
        wall = []
        trace_file = None
        try:
            for i in range(int(warmup)):
                sess.run(None, feeds[i % len(feeds)])
            for i in range(int(runs)):
                t0 = time.perf_counter()
                sess.run(None, feeds[i % len(feeds)])
                wall.append((time.perf_counter() - t0) * 1e3)
        except Exception as e:
            raise InputError(f"{origin['source']}: inference failed: {str(e).strip().splitlines()[0][:200]}") from None
        finally:
            trace_file = Path(sess.end_profiling())
        try:
            events = json.loads(trace_file.read_text())
        finally:
            trace_file.unlink(missing_ok=True)
    nodes, run_us = parse_trace(events, int(runs))
    names_in_model = {n.name for n in model.graph.node}
    total_us = sum(r["us"] for r in nodes.values())
    per_run = float(runs)

    def share(us: float) -> float:
        return us / total_us if total_us else 0.0

    entries = sorted(({"name": k, "op_type": v["op_type"], "provider": v["provider"], "ms": v["us"] / per_run / 1e3,
                       "share": share(v["us"]), "in_model": k in names_in_model} for k, v in nodes.items()),
                     key=lambda r: (-r["ms"], r["name"]))
    by_op: dict[str, dict[str, Any]] = {}
    for k, v in nodes.items():
        row = by_op.setdefault(v["op_type"], {"op_type": v["op_type"], "nodes": 0, "us": 0})
        row["nodes"] += 1
        row["us"] += v["us"]
    op_types = sorted(({"op_type": r["op_type"], "nodes": r["nodes"], "ms": r["us"] / per_run / 1e3,
                        "share": share(r["us"])} for r in by_op.values()), key=lambda r: (-r["ms"], r["op_type"]))
    rest = entries[int(top):]
    return {
        "schema": SCHEMA,
        "model": origin["source"],
        "runtime": "onnxruntime",
        "version": ort.__version__,
        "provider": "CPUExecutionProvider",
        "threads": int(threads),
        "runs": int(runs),
        "warmup": int(warmup),
        "graph_optimization": graph_optimization,
        "batch": int(batch),
        "seq_len": int(seq_len),
        "inputs": {k: list(v.shape) for k, v in feeds[0].items()},
        "wall_ms": {
            "mean": statistics.fmean(wall),
            "p50": statistics.median(wall),
            "min": min(wall),
            "max": max(wall),
            "std": statistics.stdev(wall) if len(wall) > 1 else 0.0,
        },
        "model_run_ms": statistics.fmean(run_us) / 1e3 if run_us else None,
        "node_total_ms": total_us / per_run / 1e3,
        "n_nodes": len(entries),
        "nodes": entries[: int(top)],
        "other": {"nodes": len(rest), "ms": sum(r["ms"] for r in rest), "share": sum(r["share"] for r in rest)},
        "op_types": op_types,
    }
