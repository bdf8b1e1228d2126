"""Why a stage is not faster than its parent: per-op time against the parent, the precision each op ran
in, Q/DQ left unfused, float fallbacks and the hardware facts behind them, each line with its evidence.

Per-op times come from the runtimes' own profilers: ONNX Runtime's trace (`edgeopt.analyze.profile`)
and OpenVINO's performance counters (PERF_COUNT). Precision comes from what actually ran: the kernels in
ONNX Runtime's trace (and the graph it optimized to, dumped with `optimized_model_filepath`) and
OpenVINO's runtime model (`runtimePrecision`, `primitiveType` of each executed node). A LiteRT stage has no
per-op times (LiteRT's Python API has no profiler); its precision is read from the file (the types each op reads:
`edgeopt.analyze.tflite.op_precisions`). Hardware facts come from the Target and from measured GEMM peaks
(`edgeopt.measure.peaks`).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.analyze.flops import CONV_OPS, MATMUL_OPS, dynamic_input_dims, total_flops
from edgeopt.analyze.opportunities import INT8_OPS
from edgeopt.analyze.preflight import usable_cores
from edgeopt.analyze.profile import profile
from edgeopt.artifact import Artifact
from edgeopt.errors import EdgeoptError, InputError
from edgeopt.extras import require
from edgeopt.measure.peaks import GemmPeaks, gemm_peaks
from edgeopt.target import Target, detect_target, get_target

SCHEMA = "edgeopt.diagnosis/1"
TOP_OPS = 5  # op types listed in the per-op diff
SAME_SPEED = 1.5  # an int8/fp32 GEMM ratio below this: int8 buys (almost) no compute
SMALL_OP_US = 20.0  # ops shorter than this are dominated by thread hand-off, not arithmetic

# ONNX Runtime kernels (op types as the profiler names them: no domain) that compute in int8.
ORT_INT8 = frozenset({k.split(".")[-1] for k in INT8_OPS} | {"QAttention", "QGemm", "QEmbedLayerNormalization"})
# MatMul-like: the ops carrying a model's multiply-accumulates (float or integer forms).
MATMUL_LIKE = frozenset(({*MATMUL_OPS, *CONV_OPS} - {"QuantizeBFP"})
                        | {"Attention", "QAttention", "MultiHeadAttention", "GroupQueryAttention"})
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear")
# OpenVINO CPU plugin layer types (runtime model `layerType`) that carry the multiply-accumulates.
OV_MATMUL_LIKE = frozenset({"FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Deconvolution",
                            "ScaledDotProductAttention", "ScaledAttn", "LLMMLP", "QKVProjection", "Gemm"})
_OV_INT8 = ("i8", "u8")
# OpenVINO primitive types of its generic int8 GEMM: where the CPU lacks what its brgemm int8 kernels need (a Zen 4
# EPYC with AVX-512/VNNI ran MiniLM's int8 FullyConnected layers as brgemm_avx512_I8, the same file with that ISA
# masked (benchmarks/isa/as_avx2.sh) as jit_gemm_I8, 0.75x the fp32 ONNX Runtime root)
OV_GENERIC_GEMM = ("jit_gemm", "gemm_", "ref_")
_ORT_LEVELS = {"disable": "none", "basic": "basic", "extended": "extended", "layout": "all", "all": "all"}


@dataclass(frozen=True)
class Diagnosis:
    """Why `stage` is (not) faster than `parent`: a one-line `summary`, evidence `lines`, JSON-able `facts`."""

    stage: str
    parent: str
    summary: str
    lines: tuple[str, ...]
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "stage": self.stage, "parent": self.parent, "summary": self.summary,
                "lines": list(self.lines), "facts": self.facts}

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, default=str)


# ------------------------------------------------------------------------------------------ profiles

def _first_line(e: BaseException) -> str:
    return ((str(e).strip().splitlines() or [type(e).__name__])[0])[:200]


def _feed_for(art: Artifact, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = art.input_spec.names
    missing = [n for n in names if n not in feed]
    if missing:
        raise InputError(f"the feed has no input {missing[0]!r} (has: {', '.join(feed) or 'none'})")
    return {n: feed[n] for n in names}


def _ort_is_int8(op: str) -> bool:
    return op in ORT_INT8 or op.startswith("QLinear")


def _optimized_graph(path: Path, threads: int, level: str) -> Any:
    """The graph ONNX Runtime runs after its own fusions (CPU EP), dumped with optimized_model_filepath."""
    import onnx  # lazy: heavy
    import onnxruntime as ort  # lazy: heavy

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    with tempfile.TemporaryDirectory(prefix="edgeopt-diagnose-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        so.optimized_model_filepath = str(out)
        so.add_session_config_entry("session.optimized_model_external_initializers_file_name", "optimized.onnx.data")
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(str(out), load_external_data=False)


def _qdq_facts(model: Any) -> dict[str, Any]:
    """Q/DQ nodes left in an optimized graph and the float ops they wrap (DQ → op → Q around it)."""
    nodes = list(model.graph.node)
    counts = {op: sum(n.op_type == op for n in nodes) for op in QDQ_OPS}
    dq_out = {o for n in nodes if n.op_type == "DequantizeLinear" for o in n.output}
    q_in = {i for n in nodes if n.op_type in ("QuantizeLinear", "DynamicQuantizeLinear") for i in n.input[:1]}
    around: dict[str, int] = {}
    for n in nodes:
        if n.op_type in QDQ_OPS or _ort_is_int8(n.op_type):
            continue
        if any(i in dq_out for i in n.input) or any(o in q_in for o in n.output):
            around[n.op_type] = around.get(n.op_type, 0) + 1
    return {"counts": counts, "left": sum(counts.values()), "around": dict(sorted(around.items(), key=lambda kv: -kv[1]))}


def _profile_onnx(art: Artifact, feed: dict[str, np.ndarray], threads: int, runs: int, warmup: int) -> dict[str, Any]:
    session = dict(art.meta.get("session") or {})
    threads = int(session.get("threads") or threads)
    level = _ORT_LEVELS.get(str(session.get("graph_optimization_level") or "all").lower(), "all")
    r = profile(art, threads=threads, runs=runs, warmup=warmup, data=_feed_for(art, feed), top=10**6,
                graph_optimization=level)
    nodes = [{"name": n["name"], "op_type": n["op_type"], "ms": n["ms"], "provider": n["provider"],
              "precision": "int8" if _ort_is_int8(n["op_type"]) else "float"} for n in r["nodes"]]
    out: dict[str, Any] = {
        "runtime": "onnxruntime", "version": r["version"], "threads": threads, "runs": runs, "warmup": warmup,
        "graph_optimization": level, "wall_p50_ms": r["wall_ms"]["p50"], "kernel_ms": r["node_total_ms"],
        "op_types": {o["op_type"]: {"nodes": o["nodes"], "ms": o["ms"]} for o in r["op_types"]},
        "nodes": nodes,
        "providers": _count(n["provider"] or "?" for n in nodes),
    }
    if session.get("provider") and session["provider"] not in ("cpu", "CPUExecutionProvider"):
        out["note"] = f"profiled on CPUExecutionProvider; the stage asks for {session['provider']}"
    try:
        out["qdq"] = _qdq_facts(_optimized_graph(Path(art.path), threads, level))
    except Exception as e:  # the dump is evidence, never a reason to fail
        out["qdq_error"] = f"optimized graph not dumped: {_first_line(e)}"
    return out


def _ov_str(v: Any) -> str:
    for get in (lambda: v.astype(str), lambda: v.value, lambda: v):
        try:
            return str(get())
        except Exception:
            continue
    return "?"


def _profile_openvino(art: Artifact, feed: dict[str, np.ndarray], threads: int, runs: int, warmup: int
                      ) -> dict[str, Any]:
    """Per-node times from OpenVINO's performance counters and each node's runtime precision.

    Compiled as `edgeopt.measure.runners.OvRunner` compiles (latency hint, one stream, the artifact's
    precision hint and static shapes) plus PERF_COUNT, which OvRunner cannot be asked for.
    """
    ov = require("openvino", "diagnosing an OpenVINO model")
    settings = dict(art.meta.get("openvino") or {})
    core = ov.Core()
    model = core.read_model(str(art.path))
    if settings.get("static_shapes"):
        model.reshape({k: list(v) for k, v in settings["static_shapes"].items()})
    config = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
              "INFERENCE_PRECISION_HINT": settings.get("precision", "f32"), "PERF_COUNT": True}
    compiled = core.compile_model(model, "CPU", config)
    request = compiled.create_infer_request()
    inputs = {p.get_any_name(): feed[p.get_any_name()] for p in compiled.inputs}
    for _ in range(warmup):
        request.infer(inputs)
    per_node: dict[str, dict[str, Any]] = {}
    wall = []
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer(inputs)
        wall.append((time.perf_counter() - t0) * 1e3)
        for p in request.get_profiling_info():  # counters of the last call
            if str(p.status).rsplit(".", 1)[-1] != "EXECUTED":
                continue
            row = per_node.setdefault(p.node_name, {"op_type": p.node_type, "exec_type": p.exec_type, "us": 0.0})
            row["us"] += p.real_time.total_seconds() * 1e6
    runtime = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        keys = set(rt.keys())
        runtime[op.get_friendly_name()] = {k: _ov_str(rt[k]) for k in
                                           ("layerType", "runtimePrecision", "primitiveType") if k in keys}
    nodes = []
    for name, row in per_node.items():
        info = runtime.get(name, {})
        prec = info.get("runtimePrecision", "?")
        exec_type = str(row["exec_type"])
        int8 = prec in _OV_INT8 or any(t in exec_type.lower() for t in ("_i8", "_u8", "int8"))
        nodes.append({"name": name, "op_type": row["op_type"], "ms": row["us"] / runs / 1e3, "exec_type": exec_type,
                      "precision": "int8" if int8 else prec})
    nodes.sort(key=lambda n: -n["ms"])
    op_types: dict[str, dict[str, Any]] = {}
    for n in nodes:
        o = op_types.setdefault(n["op_type"], {"nodes": 0, "ms": 0.0})
        o["nodes"] += 1
        o["ms"] += n["ms"]
    fq = sum(1 for n in nodes if n["op_type"] == "FakeQuantize")  # executed ones
    return {
        "runtime": "openvino", "version": ov.__version__.split("-")[0], "threads": threads, "runs": runs,
        "warmup": warmup, "precision_hint": config["INFERENCE_PRECISION_HINT"],
        "wall_p50_ms": float(np.median(wall)), "kernel_ms": sum(n["ms"] for n in nodes),
        "op_types": dict(sorted(op_types.items(), key=lambda kv: -kv[1]["ms"])), "nodes": nodes,
        "providers": {"CPU": len(nodes)},
        "qdq": {"counts": {"FakeQuantize": fq}, "left": fq, "around": {}},
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def _run_profile(art: Artifact, feed: dict[str, np.ndarray], threads: int, runs: int, warmup: int,
                 cache: dict | None) -> dict[str, Any]:
    """The artifact's profile, or {"error": why} (never raises)."""
    key = (art.kind, art.sha256, threads, runs, warmup,
           tuple((k, v.shape, str(v.dtype)) for k, v in sorted(feed.items()) if isinstance(v, np.ndarray)))
    if cache is not None and key in cache:
        return cache[key]
    try:
        if art.kind == "onnx" and art.path is not None:
            out = _profile_onnx(art, feed, threads, runs, warmup)
        elif art.kind == "openvino" and art.path is not None:
            out = _profile_openvino(art, _feed_for(art, feed), threads, runs, warmup)
        elif art.kind == "tflite":
            out = {"error": "LiteRT has no per-op profiler in Python, so no per-op times"}
        else:
            out = {"error": f"{art.kind} models are not profiled (per-op times come from ONNX Runtime's profiler "
                            f"or OpenVINO's counters)"}
    except Exception as e:  # a model the profilers cannot run is a finding, never a crash
        out = {"error": _first_line(e)}
    if cache is not None:
        cache[key] = out
    return out


# ------------------------------------------------------------------------------------------ evidence

def _precision(p: dict[str, Any]) -> dict[str, Any]:
    """MatMul-like ops by the precision they ran in."""
    like = OV_MATMUL_LIKE if p["runtime"] == "openvino" else MATMUL_LIKE
    mm = [n for n in p["nodes"] if n["op_type"] in like]
    int8 = [n for n in mm if n["precision"] == "int8"]
    other = [n for n in mm if n["precision"] != "int8"]
    key = "exec_type" if p["runtime"] == "openvino" else "op_type"
    return {"matmul_like": len(mm), "int8": len(int8), "float": len(other),
            "int8_kernels": _count(n[key] for n in int8),
            "float_kernels": _count(f"{n[key]}" + (f" ({n['precision']})" if p["runtime"] == "openvino" else "")
                                    for n in other),
            "any_int8": any(n["precision"] == "int8" for n in p["nodes"]),
            "precisions": _count(n["precision"] for n in p["nodes"])}


def _tflite_precision(art: Artifact) -> dict[str, Any]:
    """`_precision`'s summary for a LiteRT file, from the types its ops read (edgeopt.analyze.tflite: int8 weights
    into a FULLY_CONNECTED / CONV_2D count as int8, which XNNPACK runs with int8 dot products)."""
    from edgeopt.analyze.tflite import precision_summary

    prec = precision_summary(art.path, (art.meta.get("litert") or {}).get("signature"))
    return {k: v for k, v in prec.items() if k != "ops"}


def _precision_line(prec: dict[str, Any], rt: str, where: str) -> str:
    """The "precision (...)" line: how many MatMul-like ops ran in int8 and in float, by kernel."""
    if not prec["matmul_like"]:
        return f"precision ({rt}): no MatMul-like ops ran{where}"
    return (f"precision ({rt}): {prec['int8']} of {prec['matmul_like']} MatMul-like ops ran in int8"
            + (f" ({_fmt_counts(prec['int8_kernels'])})" if prec["int8"] else "")
            + f", {prec['float']} ran in float"
            + (f" ({_fmt_counts(prec['float_kernels'])})" if prec["float"] else "") + where)


def _fmt_counts(d: dict[str, int], limit: int = 4) -> str:
    items = list(d.items())
    s = ", ".join(f"{k} ×{v}" for k, v in items[:limit])
    return s + (f", +{len(items) - limit} more" if len(items) > limit else "")


def _diff(pp: dict[str, Any], sp: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for op in set(pp["op_types"]) | set(sp["op_types"]):
        a, b = pp["op_types"].get(op, {"nodes": 0, "ms": 0.0}), sp["op_types"].get(op, {"nodes": 0, "ms": 0.0})
        rows.append({"op_type": op, "parent_ms": a["ms"], "stage_ms": b["ms"], "delta_ms": b["ms"] - a["ms"],
                     "parent_nodes": a["nodes"], "stage_nodes": b["nodes"]})
    rows.sort(key=lambda r: (-abs(r["delta_ms"]), r["op_type"]))
    return rows


def _isa_words(isa: tuple[str, ...]) -> str:
    if "avx512f" in isa:
        return "AVX-512"
    if "avx2" in isa:
        return "AVX2 only"
    if "avx" in isa:
        return "AVX only"
    if "asimd" in isa or "neon" in isa:
        return "NEON"
    return "no SIMD flags declared"


def _int8_fact(target: Target, peaks: GemmPeaks | None, peaks_error: str | None, here: Target,
               onnxruntime: bool = True) -> tuple[list[str], str | None]:
    """(evidence lines, summary reason or None) about int8 GEMM hardware on `target` (the reduce_range line only
    for a stage `onnxruntime` runs: the LiteRT quantizer has no such setting).

    The peaks are measured on this machine (`here`); they speak for the target only when both agree on
    VNNI, else the conclusion rests on the target's flags and the peaks are quoted as this machine's.
    """
    applies = peaks is not None and here.arch == target.arch and here.has_vnni == target.has_vnni
    measured = ""
    if peaks is not None:
        rel = "≈" if peaks.ratio < SAME_SPEED else "vs"
        measured = (f"measured int8 GEMM {peaks.int8_gops:.0f} GOP/s {rel} fp32 {peaks.fp32_gflops:.0f} GFLOP/s "
                    f"({peaks.ratio:.2f}×, {peaks.size}³, {peaks.threads} thread{'s' * (peaks.threads != 1)})")
    elif peaks_error:
        measured = f"GEMM peaks not measured: {peaks_error}"
    same = peaks.ratio < SAME_SPEED if applies else None
    lines: list[str] = []
    reason = None
    if target.arch == "x86_64" and target.has_vnni:
        flags = ", ".join(f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f in target.isa)
        line = f"hardware: VNNI present ({flags}) on target {target.name}: u8×s8 dot products accumulate in int32"
        if applies:
            line += f"; {measured}"
            if same:
                line += ": int8 GEMMs should run several times faster here; the kernel did not get that"
                reason = f"int8 GEMM only {peaks.ratio:.2f}× fp32 on this CPU despite VNNI"
        lines.append(line)
    elif target.arch == "x86_64":
        line = (f"hardware: no VNNI ({_isa_words(target.isa)}) on target {target.name}: int8 multiplies go through "
                f"vpmaddubsw pairs into int16")
        if applies:
            line += f"; {measured}"
        if same or not applies:
            line += ", so int8 only saves memory bandwidth"
            reason = ("no VNNI: int8 GEMM " + (f"≈ fp32 ({peaks.ratio:.2f}×)" if applies else "gains little over fp32")
                      + ", int8 only saves bandwidth")
        lines.append(line)
        if target.reduce_range and onnxruntime:
            lines.append("hardware: reduce_range on (7-bit weights keep vpmaddubsw's int16 pair sums from saturating)")
    elif target.arch in ("arm64", "arm"):
        dot = [f for f in ("dotprod", "i8mm") if f in target.isa]
        lines.append(f"hardware: int8 dot products {'present (' + ', '.join(dot) + ')' if dot else 'absent (no dotprod/i8mm)'}"
                     f" on target {target.name}" + (f"; {measured}" if applies else ""))
        reason = None if dot else "no int8 dot-product instructions: int8 gains little compute"
    else:
        lines.append(f"hardware: target {target.name} ({target.device})" + (f"; {measured}" if applies else ""))
    if measured and not applies:
        vn = "with" if here.has_vnni else "without"
        lines.append(f"hardware: this machine ({here.cpu_model}, {here.arch}, {vn} VNNI) is not the target's kind: "
                     f"{measured}, which does not speak for {target.name}")
    return lines, reason


def _float_fact(kind: str, target: Target) -> tuple[str, str | None]:
    """Evidence for a bf16 or fp16 stage: does the target have the arithmetic units for it."""
    if kind == "bf16":
        units = [f for f in ("avx512_bf16", "amx_bf16", "bf16") if f in target.isa]
        if units:
            return f"hardware: bf16 units present ({', '.join(units)}) on target {target.name}", None
        return (f"hardware: no bf16 units on target {target.name} (no avx512_bf16/amx_bf16): bf16 values are widened "
                "to f32 to compute, so bf16 saves bandwidth at best"), "no bf16 units on this target"
    units = [f for f in ("avx512_fp16", "fp16") if f in target.isa]
    if units:
        return f"hardware: fp16 arithmetic present ({', '.join(units)}) on target {target.name}", None
    return (f"hardware: no fp16 arithmetic on target {target.name} (no avx512_fp16): ONNX Runtime's CPU EP runs most "
            "fp16 ops in fp32 behind inserted Cast nodes"), "no fp16 arithmetic on this target"


def _stage_precision(art: Artifact, prof: dict[str, Any]) -> str | None:
    """"bf16" / "fp16" when the stage computes in a 16-bit float, else None."""
    ov = str((art.meta.get("openvino") or {}).get("precision", "")).lower()
    meta = str(art.meta.get("precision", "")).lower()
    if ov == "bf16" or meta == "bf16" or "bf16" in (prof.get("precisions") or {}):
        return "bf16"
    if ov == "f16" or meta in ("fp16", "f16") or "f16" in (prof.get("precisions") or {}):
        return "fp16"
    return None


def _floor_line(parent: Artifact, feed: dict[str, np.ndarray], peaks: GemmPeaks, pp: dict[str, Any],
                sp: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """The fp32 compute floor of the parent: its FLOPs at the measured fp32 GEMM rate, against both timings."""
    import onnx  # lazy: heavy

    model = onnx.load(str(parent.path), load_external_data=False)
    dims = {}
    for key, axis, _ in dynamic_input_dims(model):
        for inp in model.graph.input:
            if inp.name in feed and axis < np.ndim(feed[inp.name]):
                dims.setdefault(key, int(np.shape(feed[inp.name])[axis]))
    flops = total_flops(model, dims=dims)
    if not flops:
        return None
    floor_ms = flops / (peaks.fp32_gflops * 1e9) * 1e3
    parts = [f"parent {pp['wall_p50_ms']:.2f} ms" if "wall_p50_ms" in pp else "",
             f"stage {sp['wall_p50_ms']:.2f} ms" if "wall_p50_ms" in sp else ""]
    amount = next(f"{flops / scale:.3g} {unit}FLOP" for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""))
                  if flops >= scale or scale == 1)
    line = (f"compute floor: the parent's {amount} at the measured fp32 GEMM rate {peaks.fp32_gflops:.0f} GFLOP/s "
            f"is {floor_ms:.3g} ms; profiled p50: {', '.join(p for p in parts if p)}")
    return line, {"gflop": flops / 1e9, "floor_ms": floor_ms}


def _name(art: Artifact, given: str | None) -> str:
    if given:
        return given
    if art.meta.get("stage"):
        return str(art.meta["stage"])
    if art.path is not None:
        return Path(art.path).parent.name or Path(art.path).stem
    return art.kind


# ------------------------------------------------------------------------------------------ entry point

def diagnose(parent: Artifact, stage: Artifact, target: Target | str, *, feed: dict[str, np.ndarray],
             threads: int, speedup: tuple[float, float, float] | None = None, runs: int = 20, warmup: int = 5,
             peaks: GemmPeaks | None = None, spinning: bool | None = None, stage_name: str | None = None,
             parent_name: str | None = None, profile_cache: dict | None = None) -> Diagnosis:
    """Explain why `stage` is not faster than `parent`, with evidence (see the module doc and docs/diagnosis.md).

    `feed` is one input feed (extra keys ignored); both models are profiled with `threads` intra-op threads,
    `warmup` untimed then `runs` profiled calls each (an ONNX artifact's meta["session"] threads and graph
    level win, as in the runners). `speedup` is the measured (ratio, lo, hi) of stage over parent, quoted in
    the summary. `peaks` are GEMM peaks already measured (else `gemm_peaks(threads)` runs when int8 is
    involved; cached). `spinning` is whether ONNX Runtime threads spin in the timing (None: not known).
    `profile_cache` (a dict the caller keeps) reuses a parent's profile across several calls.
    A model that cannot be profiled yields a "not profiled: <reason>" line, never an exception; bad
    arguments raise InputError.
    """
    for what, art in (("parent", parent), ("stage", stage)):
        if not isinstance(art, Artifact):
            raise InputError(f"diagnose: {what} must be an Artifact, got {type(art).__name__}")
    if not isinstance(feed, dict) or not feed or not all(isinstance(v, np.ndarray) for v in feed.values()):
        raise InputError("diagnose: feed must be a non-empty dict of input name -> numpy array")
    for name, value, low in (("threads", threads, 1), ("runs", runs, 1), ("warmup", warmup, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"diagnose: {name} must be an integer >= {low}, got {value!r}")
    if speedup is not None:
        try:
            speedup = tuple(float(x) for x in speedup)
        except (TypeError, ValueError):
            raise InputError(f"diagnose: speedup must be (ratio, lo, hi), got {speedup!r}") from None
        if len(speedup) != 3 or not all(np.isfinite(speedup)) or min(speedup) <= 0:
            raise InputError(f"diagnose: speedup must be three positive numbers (ratio, lo, hi), got {speedup!r}")
    if peaks is not None and not isinstance(peaks, GemmPeaks):
        raise InputError(f"diagnose: peaks must be a GemmPeaks, got {type(peaks).__name__}")
    try:
        target = get_target(target)
    except EdgeoptError as e:
        raise InputError(f"diagnose: {e}") from None

    sname, pname = _name(stage, stage_name), _name(parent, parent_name)
    lines: list[str] = []
    reasons: list[str] = []
    facts: dict[str, Any] = {"stage": sname, "parent": pname, "threads": threads, "target": target.name,
                             "speedup": dict(zip(("ratio", "lo", "hi"), speedup)) if speedup else None}

    pp = _run_profile(parent, feed, threads, runs, warmup, profile_cache)
    sp = _run_profile(stage, feed, threads, runs, warmup, profile_cache)
    facts["profiles"] = {who: {k: v for k, v in p.items() if k != "nodes"} for who, p in (("parent", pp), ("stage", sp))}
    for who, art, p in (("parent", parent, pp), ("stage", stage, sp)):
        if "error" in p:
            lines.append(f"not profiled: {who} {_name(art, pname if who == 'parent' else sname)} ({art.kind}): {p['error']}")

    # per-op time diff
    if "error" not in pp and "error" not in sp:
        rows = _diff(pp, sp)
        facts["op_diff"] = rows[:TOP_OPS * 2]
        cross = pp["runtime"] != sp["runtime"]
        how = (f"{'ONNX Runtime profiler' if sp['runtime'] == 'onnxruntime' else 'OpenVINO perf counters'}"
               + (f" vs {'ONNX Runtime profiler' if pp['runtime'] == 'onnxruntime' else 'OpenVINO perf counters'}"
                  if cross else "") + f", {runs} runs, {threads} thread{'s' * (threads != 1)}")
        parts = [f"{r['op_type']} {r['delta_ms']:+.3f} ms ({r['parent_nodes']}→{r['stage_nodes']} nodes)"
                 for r in rows[:TOP_OPS]]
        lines.append(f"op time vs parent ({how}): {', '.join(parts) or 'no ops'}; kernel total "
                     f"{pp['kernel_ms']:.3f} → {sp['kernel_ms']:.3f} ms per run"
                     + ("; the runtimes name ops differently" if cross else ""))
        if rows and abs(rows[0]["delta_ms"]) > 0:
            top = rows[0]
            facts["biggest_change"] = top["op_type"]
            if top["delta_ms"] > 0:
                reasons.append(f"{top['op_type']} {top['delta_ms']:+.3f} ms per run")

    # precision, Q/DQ, float fallback
    prec = _precision(sp) if "error" not in sp else None
    stage_int8 = bool(prec and prec["any_int8"]) or bool(stage.meta.get("quantized"))
    if stage.kind == "tflite" and stage.path is not None:  # not profiled: what the file says each op computes in
        try:
            lite = _tflite_precision(stage)
        except Exception as e:  # evidence, never a crash
            lines.append(f"precision (LiteRT file): not read: {_first_line(e)}")
        else:
            facts["precision"] = lite
            stage_int8 = lite["any_int8"]
            lines.append(_precision_line(lite, "LiteRT file: the types each op reads",
                                         f"; ops by precision: {_fmt_counts(lite['precisions'])}"))
            if lite["matmul_like"] and lite["float"] and lite["int8"]:
                reasons.append(f"{lite['float']} of {lite['matmul_like']} MatMul-like ops still float")
    if prec is not None:
        facts["precision"] = prec
        rt = "OpenVINO runtime model" if sp["runtime"] == "openvino" else "ONNX Runtime kernels that ran"
        where = (f"; nodes by provider: {_fmt_counts(sp['providers'])}" if sp["runtime"] == "onnxruntime" else
                 f"; node precisions: {_fmt_counts(prec['precisions'])}")
        lines.append(_precision_line(prec, rt, where))
        if stage_int8 and prec["matmul_like"] and prec["int8"] == 0:
            reasons.insert(0, f"no MatMul-like op ran in int8 ({prec['float']} in float)")
        elif stage_int8 and prec["float"]:
            reasons.append(f"{prec['float']} of {prec['matmul_like']} MatMul-like ops still float")
        generic = sum(n for k, n in prec["int8_kernels"].items() if k.lower().startswith(OV_GENERIC_GEMM))
        if sp["runtime"] == "openvino" and generic:
            reasons.append(f"{generic} of {prec['int8']} int8 MatMul-like ops on OpenVINO's generic jit_gemm kernels, "
                           "not brgemm")
        qdq = sp.get("qdq")
        if qdq is not None and (qdq["left"] or stage_int8):
            facts["qdq"] = qdq
            if sp["runtime"] == "openvino":
                lines.append(f"Q/DQ: {qdq['left']} FakeQuantize layer{'s' * (qdq['left'] != 1)} left unfused in "
                             "OpenVINO's runtime model"
                             + (": each runs as its own layer" if qdq["left"] else ""))
            elif qdq["left"]:
                ms = sum(sp["op_types"].get(op, {"ms": 0.0})["ms"] for op in QDQ_OPS)
                lines.append(f"Q/DQ: {qdq['left']} quantize/dequantize nodes left unfused in ONNX Runtime's optimized "
                             f"graph ({_fmt_counts({k: v for k, v in qdq['counts'].items() if v})}; {ms:.3f} ms per run)"
                             + (f", around {_fmt_counts(qdq['around'])}: those ops run in float with a "
                                "dequantize/quantize round trip" if qdq["around"] else ""))
            else:
                lines.append("Q/DQ: none left in ONNX Runtime's optimized graph (every quantize/dequantize fused "
                             "into an integer kernel)")
            if qdq["left"]:
                reasons.append(f"{qdq['left']} {'FakeQuantize' if sp['runtime'] == 'openvino' else 'Q/DQ'} "
                               "nodes unfused")
        elif "qdq_error" in sp:
            lines.append(f"Q/DQ: not checked: {sp['qdq_error']}")
        if stage_int8:
            names = set(target.no_int8_ops)
            if sp["runtime"] == "openvino":  # what the runtime model ran in float, besides the MatMul-likes
                fell = {}
                for n in sp["nodes"]:
                    if n["precision"] != "int8" and n["op_type"] not in OV_MATMUL_LIKE:
                        o = fell.setdefault(n["op_type"], {"nodes": 0, "ms": 0.0})
                        o["nodes"] += 1
                        o["ms"] += n["ms"]
                why = "OpenVINO's runtime model ran them in float precision (f32/bf16) between the int8 layers"
            else:
                fell = {op: v for op, v in sp["op_types"].items() if op in names}
                why = "ONNX Runtime's CPU EP has no int8 kernel for them (target.no_int8_ops)"
            fell = dict(sorted(fell.items(), key=lambda kv: -kv[1]["ms"]))
            facts["float_fallback"] = [{"op_type": op, "nodes": v["nodes"], "ms": v["ms"]} for op, v in fell.items()]
            if fell:
                ms = sum(v["ms"] for v in fell.values())
                share = ms / sp["kernel_ms"] if sp["kernel_ms"] else 0.0
                lines.append(f"float fallback: {_fmt_counts({op: v['nodes'] for op, v in fell.items()}, 6)} ran in float "
                             f"({ms:.3f} ms per run, {share:.0%} of kernel time): {why}")

    # hardware facts
    peaks_error = None
    precision16 = _stage_precision(stage, prec or {})
    if stage_int8 and peaks is None:
        try:
            peaks = gemm_peaks(threads)
        except Exception as e:  # peaks are evidence, never a reason to fail
            peaks_error = _first_line(e)
    if peaks is not None:
        facts["gemm_peaks"] = peaks.to_dict()
    if stage_int8:
        hw_lines, reason = _int8_fact(target, peaks, peaks_error, detect_target(), onnxruntime=stage.kind == "onnx")
        lines += hw_lines
        if reason:
            reasons.insert(0, reason)
    if precision16:
        line, reason = _float_fact(precision16, target)
        lines.append(line)
        if reason:
            reasons.insert(0, reason)
    facts["hardware"] = {"arch": target.arch, "isa": list(target.isa), "has_vnni": target.has_vnni,
                         "cores": target.cores, "detected": target.detected, "stage_precision": precision16}
    if peaks is not None and parent.kind == "onnx" and "error" not in pp and "error" not in sp:
        try:
            got = _floor_line(parent, feed, peaks, pp, sp)
        except Exception:  # FLOPs are evidence, never a reason to fail
            got = None
        if got is not None:
            lines.append(got[0])
            facts["floor"] = got[1]

    # threads and spinning
    cores = usable_cores()
    spin = {True: "on (workers busy-wait between ops: quick hand-offs, but they hold the cores)",
            False: "off (each parallel op wakes sleeping workers: small ops pay the wake-up)",
            None: "not stated"}[spinning if spinning in (True, False) else None]
    tline = f"threads: {threads} intra-op thread{'s' * (threads != 1)} on {cores} usable cores"
    if stage.kind == "onnx":
        tline += f"; ONNX Runtime spinning {spin}"
    if "error" not in sp and sp["nodes"]:
        small = [n for n in sp["nodes"] if n["ms"] * 1e3 < SMALL_OP_US]
        small_ms = sum(n["ms"] for n in small)
        tline += (f"; {len(small)} of {len(sp['nodes'])} stage ops take < {SMALL_OP_US:.0f} µs "
                  f"({small_ms:.3f} ms per run together): for them "
                  + ("per-op dispatch" if threads == 1 else "thread hand-off and per-op dispatch")
                  + ", not arithmetic, sets the time")
        facts["small_ops"] = {"count": len(small), "of": len(sp["nodes"]), "ms": small_ms}
    lines.append(tline)
    facts["spinning"] = spinning
    facts["cores"] = cores

    speed = ""
    if speedup:
        speed = f" ({speedup[0]:.2f}×, 95% CI {speedup[1]:.2f}–{speedup[2]:.2f})"
    parts = list(dict.fromkeys(reasons))[:3]
    if "error" in sp:
        parts.append(f"stage not profiled: {sp['error']}")
    elif "error" in pp:
        parts.append("parent not profiled")
    summary = f"{sname} vs {pname}{speed}: " + ("; ".join(parts) or "no single cause found; see the per-op diff")
    facts["reasons"] = reasons
    return Diagnosis(stage=sname, parent=pname, summary=summary, lines=tuple(lines), facts=facts)
