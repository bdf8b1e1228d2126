"""session.tune: choose ONNX Runtime threads, graph optimization level and execution provider by measurement."""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from edgeopt.artifact import Artifact
from edgeopt.data import random_feeds
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.target import get_target

Level = Literal["disable", "basic", "extended", "layout", "all"]
# "layout" (ORT_ENABLE_LAYOUT) exists from ONNX Runtime 1.22; session_options refuses it on older ones.
LEVELS: dict[str, str] = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                          "layout": "ORT_ENABLE_LAYOUT", "all": "ORT_ENABLE_ALL"}
# Every thread count up to this many cores is a candidate; above it, powers of two plus the target's
# default and its core count (1..64 threads x 3 levels would be 192 sessions to time).
EVERY_THREAD_UP_TO = 8


def session_options(meta_session: dict[str, Any] | None, threads: int | None = None, *,
                    allow_spinning: bool = True) -> Any:
    """ONNX Runtime SessionOptions from an artifact's `meta["session"]` (as session.tune writes it).

    Intra-op threads: `meta_session["threads"]` where tuned, else `threads` (ORT's default where neither
    is set) -- the same precedence as measure.runners.OrtRunner, so a tuned model runs as it was tuned;
    read `so.intra_op_num_threads` to report the count used. The graph optimization level comes from the
    meta ("all" where there is none). `allow_spinning=False` stops idle pool threads from spinning: set
    it when several sessions are timed in one process, so one session's spinning threads do not steal
    CPU from the next.
    """
    import onnxruntime as ort

    meta = dict(meta_session or {})
    so = ort.SessionOptions()
    so.log_severity_level = 3
    n = int(meta.get("threads") or threads or 0)
    if n < 0:
        raise ValueError(f"threads must be >= 1, got {n}")
    if n > 0:
        so.intra_op_num_threads = n
    level = str(meta.get("graph_optimization_level") or "all").lower()
    member = LEVELS.get(level)
    if member is None or not hasattr(ort.GraphOptimizationLevel, member):
        raise ValueError(f"graph_optimization_level must be one of {', '.join(LEVELS)}, got {level!r}")
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, member)
    if not allow_spinning or meta.get("spinning") is False:  # session.spinning's setting, or the caller's
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def session_providers(meta_session: dict[str, Any] | None) -> list[str]:
    """The provider list for InferenceSession: the tuned provider first, the CPU EP as fallback."""
    chosen = (meta_session or {}).get("provider") or "CPUExecutionProvider"
    return [chosen] if chosen == "CPUExecutionProvider" else [chosen, "CPUExecutionProvider"]


def copy_onnx(src: Path, dst_dir: Path) -> Path:
    """Copy an ONNX file byte for byte into `dst_dir` (same file name), with the external-data files it references."""
    import onnx

    dst_dir.mkdir(parents=True, exist_ok=True)
    dst = dst_dir / src.name
    if dst.resolve() == src.resolve():
        raise PassError(f"{src}: the stage folder is the input model's own folder")
    shutil.copyfile(src, dst)
    model = onnx.load(str(src), load_external_data=False)
    locations = set()
    for tensor in _all_tensors(model.graph):
        for kv in tensor.external_data:
            if kv.key == "location":
                locations.add(kv.value)
    for loc in sorted(locations):
        rel = Path(loc)
        if rel.is_absolute() or ".." in rel.parts:
            raise PassError(f"{src}: external data location {loc!r} is outside the model's folder")
        from_file = src.parent / rel
        if not from_file.exists():
            raise PassError(f"{src}: external data file {loc!r} is missing")
        (dst_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(from_file, dst_dir / rel)
    return dst


def _all_tensors(graph: Any):
    """Initializers and Constant-node tensors of a graph and its subgraphs."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for g in attr.graphs:
                yield from _all_tensors(g)


def _thread_candidates(cores: int, default: int) -> list[int]:
    if cores <= EVERY_THREAD_UP_TO:
        return list(range(1, cores + 1))
    out, n = set(), 1
    while n <= cores:
        out.add(n)
        n *= 2
    return sorted(out | {default, cores})


def _feed(art: Artifact, ctx: PassContext) -> dict[str, Any]:
    """The first calibration feed, or one random feed shaped by the InputSpec and the measure settings."""
    if ctx.calibration:
        return ctx.calibration[0]
    m = ctx.measure
    get = (lambda k, d: m.get(k, d)) if isinstance(m, dict) else (lambda k, d: getattr(m, k, d))
    batch, seq_len = int(get("batch", 1) or 1), int(get("seq_len", 128) or 128)
    dims = {"batch": batch, "sequence": seq_len}
    for t in art.input_spec.inputs:
        for i, d in enumerate(t.shape):
            if isinstance(d, str) and d not in dims:
                dims[d] = batch if i == 0 else seq_len
    return random_feeds(art.input_spec, 1, dims, seed=0, vocab=int(art.meta.get("vocab_size") or 100))[0]


@register("session.tune")
class SessionTune(Pass):
    """Time every (threads, optimization level, provider) candidate interleaved; keep the fastest in meta.

    Each candidate is an ONNX Runtime session with spinning off (spinning pool threads of one session
    would steal CPU from the next). After `warmup` runs each, the candidates are timed round robin,
    `runs` rounds, starting each round at a different candidate so none always runs first; the lowest
    median wins. The model file is copied unchanged; the choice travels in `meta["session"]` and the
    whole table in `ctx.notes["session_tune"]`.
    """

    class Config(PassConfig):
        threads: tuple[int, ...] | None = None
        levels: tuple[Level, ...] = ("basic", "extended", "all")
        providers: tuple[str, ...] | None = None
        runs: int = Field(default=20, ge=3)
        warmup: int = Field(default=3, ge=0)

        @field_validator("threads")
        @classmethod
        def _threads_positive(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
            if v is not None:
                if not v:
                    raise ValueError("threads: give at least one thread count, or null for 1..target cores")
                if any(n < 1 for n in v):
                    raise ValueError(f"threads: every count must be >= 1, got {list(v)}")
                v = tuple(sorted(set(v)))
            return v

        @field_validator("levels")
        @classmethod
        def _levels_nonempty(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            if not v:
                raise ValueError(f"levels: give at least one of {', '.join(LEVELS)}")
            return tuple(dict.fromkeys(v))

        @field_validator("providers")
        @classmethod
        def _providers_nonempty(cls, v: tuple[str, ...] | None) -> tuple[str, ...] | None:
            if v is not None and not v:
                raise ValueError("providers: give at least one execution provider, or null for the target's")
            return None if v is None else tuple(dict.fromkeys(v))

    accepts = ("onnx",)
    tolerance = 0.999

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import numpy as np
        import onnxruntime as ort

        cfg = self.config
        if art.path is None or not Path(art.path).exists():
            raise PassError(f"session.tune needs an ONNX file on disk, got {art.path}")
        target = ctx.target if ctx.target is not None and not isinstance(ctx.target, str) else get_target(ctx.target or "auto")
        cores = max(int(target.cores), 1)

        threads = list(cfg.threads) if cfg.threads is not None else _thread_candidates(cores, int(target.threads))
        over = [n for n in threads if n > cores]
        threads = [n for n in threads if n <= cores]
        if over:
            ctx.warnings.append(f"session.tune: skipped thread counts {over}: the target has {cores} cores")
        if not threads:
            raise PassError(f"session.tune: no thread count <= the target's {cores} cores among {list(cfg.threads or ())}")

        available = ort.get_available_providers()
        wanted = list(cfg.providers) if cfg.providers is not None else list(getattr(target, "providers", None)
                                                                                 or [target.execution_provider])
        providers = [p for p in wanted if p in available]
        missing = [p for p in wanted if p not in available]
        if missing and cfg.providers is not None:
            ctx.warnings.append(f"session.tune: providers not installed here, skipped: {', '.join(missing)}")
        if not providers:
            raise PassError(f"session.tune: none of the providers {', '.join(wanted)} is installed "
                            f"(available: {', '.join(available)})")

        feed = _feed(art, ctx)
        candidates = [(t, lv, p) for p in providers for lv in cfg.levels for t in threads]
        sessions: list[tuple[tuple[int, str, str], Any]] = []
        failed: list[dict[str, Any]] = []
        advance = ctx.task("session.tune", total=len(candidates) * (cfg.warmup + cfg.runs))
        for t, lv, p in candidates:
            try:
                so = session_options({"graph_optimization_level": lv}, t, allow_spinning=False)
                sess = ort.InferenceSession(str(art.path), so, providers=session_providers({"provider": p}))
                for _ in range(cfg.warmup):
                    sess.run(None, feed)
                    advance()
            except Exception as e:  # a provider that fails to build or run this model is reported, not fatal
                first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
                failed.append({"threads": t, "graph_optimization_level": lv, "provider": p, "error": first[:200]})
                continue
            if p != "CPUExecutionProvider" and p not in sess.get_providers():
                failed.append({"threads": t, "graph_optimization_level": lv, "provider": p,
                               "error": f"{p} was not used (fell back to {sess.get_providers()[0]})"})
                continue
            sessions.append(((t, lv, p), sess))
        if not sessions:
            raise PassError(f"session.tune: no candidate session could run the model ({failed[0]['error']})")

        times: list[list[float]] = [[] for _ in sessions]
        k = len(sessions)
        for r in range(cfg.runs):
            for j in range(k):
                i = (r + j) % k  # rotate the starting candidate every round
                sess = sessions[i][1]
                t0 = time.perf_counter()
                sess.run(None, feed)
                times[i].append((time.perf_counter() - t0) * 1e3)
                advance()

        table = []
        for (key, _), ts in zip(sessions, times):
            a = np.asarray(ts)
            table.append({"threads": key[0], "graph_optimization_level": key[1], "provider": key[2],
                          "p50_ms": float(statistics.median(ts)), "p90_ms": float(np.percentile(a, 90)),
                          "mean_ms": float(a.mean()), "std_ms": float(a.std()), "min_ms": float(a.min()), "n": len(ts)})
        best = min(table, key=lambda row: row["p50_ms"])
        chosen = {"threads": best["threads"], "graph_optimization_level": best["graph_optimization_level"],
                  "provider": best["provider"]}
        sessions.clear()

        ctx.notes["session_tune"] = {
            "chosen": dict(chosen, p50_ms=best["p50_ms"]),
            "table": sorted(table, key=lambda row: row["p50_ms"]),
            "failed": failed,
            "runs": cfg.runs, "warmup": cfg.warmup, "order": "interleaved round robin", "allow_spinning": False,
            "feed_shapes": {n: list(np.shape(v)) for n, v in feed.items()},
            "target": target.name, "onnxruntime": ort.__version__,
        }
        out = copy_onnx(Path(art.path), ctx.stage_dir)
        return Artifact.from_onnx(out, meta={**art.meta, "session": chosen})
