"""GEMM peaks: measured fp32 and u8×s8 int8 matrix-multiply throughput of this CPU under ONNX Runtime, cached.

Why: whether INT8 can speed a model up depends on the hardware, not on the graph. With VNNI/AMX an int8
GEMM runs several times faster than fp32; with AVX2 only (vpmaddubsw adds pairs through int16) it runs
about as fast, and INT8 then saves memory traffic only. `gemm_peaks` measures both on this machine so a
diagnosis can quote numbers instead of guessing from flags.

How: two tiny ONNX graphs, Y = A·W with A a size×size fp32 input and W a constant weight: the fp32 one
is one MatMul; the int8 one is that graph put through ONNX Runtime's own `quantize_dynamic` (u8
activations, s8 weights), which ONNX Runtime fuses into one DynamicQuantizeMatMul kernel, the kernel a
dynamically quantized model runs (its time includes quantizing A, O(size²) next to the O(size³) GEMM).
Both are timed interleaved in one process (`measure_interleaved`, `runs` calls each) with the pipeline's
session settings (`OrtRunner`). A peak is a capability, and other work on the machine only ever adds
time (on a shared 2-core machine calls came out bimodal, 2.4 ms and 6.6 ms, as another process took the
core), so the rates use the 10th percentile of the calls (`fp32_ms`, `int8_ms`); the medians are kept
beside them (`fp32_p50_ms`, `int8_p50_ms`). Throughput counts 2·size³ operations per call.

Results are cached per (CPU model, ISA flags, threads, size, ONNX Runtime version) as one JSON file each
under `$EDGEOPT_CACHE/peaks/` (default ~/.cache/edgeopt), written atomically; `refresh=True` remeasures.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from edgeopt.errors import InputError
from edgeopt.measure.latency import measure_interleaved
from edgeopt.measure.runners import OrtRunner
from edgeopt.target import detect_target
from edgeopt.zoo.digits import cache_dir

SCHEMA = "edgeopt.gemm_peaks/1"
INPUT = "a"
PEAK_PERCENTILE = 10  # of the timed calls: other work on the machine only adds time


class GemmPeaks(BaseModel):
    """Measured GEMM throughput: fp32 GFLOP/s, int8 GOP/s (2·size³ ops a call, at the 10th-percentile call
    time) and their ratio int8/fp32."""

    model_config = ConfigDict(frozen=True)

    fp32_gflops: float
    int8_gops: float
    ratio: float  # int8_gops / fp32_gflops
    threads: int
    size: int
    fp32_ms: float  # 10th percentile of the timed calls (the rates use these)
    int8_ms: float
    fp32_p50_ms: float
    int8_p50_ms: float
    runs: int
    int8_kernel: str  # the op ONNX Runtime ran for the int8 GEMM (DynamicQuantizeMatMul)
    cpu_model: str
    isa: tuple[str, ...]
    onnxruntime: str
    measured_at: float  # unix time
    cached: bool = False  # True when read from the cache instead of measured by this call

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples as lists)."""
        d = self.model_dump()
        d["isa"] = list(self.isa)
        return d

    def describe(self) -> str:
        """One line: the two rates, their ratio and the conditions."""
        return (f"int8 GEMM {self.int8_gops:.0f} GOP/s vs fp32 {self.fp32_gflops:.0f} GFLOP/s "
                f"({self.ratio:.2f}×; {self.size}³, {self.threads} thread{'s' * (self.threads != 1)}, "
                f"ONNX Runtime {self.onnxruntime} {self.int8_kernel})")


def _key(cpu_model: str, isa: tuple[str, ...], threads: int, size: int, ort_version: str) -> str:
    raw = json.dumps({"schema": SCHEMA, "cpu": cpu_model, "isa": sorted(isa), "threads": threads, "size": size,
                      "ort": ort_version}, sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _graphs(folder: Path, size: int) -> tuple[Path, Path]:
    """(fp32 MatMul model, its ONNX Runtime dynamic-quantized copy) written into `folder`."""
    import onnx  # lazy: only when measuring
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic  # lazy: pulls onnxruntime

    w = (np.random.default_rng(0).standard_normal((size, size)) / np.sqrt(size)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", [INPUT, "w"], ["y"], name="gemm")], "gemm",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    fp32, int8 = folder / "fp32.onnx", folder / "int8.onnx"
    onnx.save(model, str(fp32))
    root = logging.getLogger()  # the quantizer logs advice on the root logger
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8, per_channel=False, reduce_range=False)
    finally:
        root.setLevel(level)
    return fp32, int8


def _int8_kernel(path: Path, threads: int) -> str:
    """The op types ONNX Runtime runs for the quantized graph after its own fusions (normally DynamicQuantizeMatMul)."""
    import onnx  # lazy: only when measuring
    import onnxruntime as ort  # lazy: heavy

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    opt = path.with_name("int8.opt.onnx")
    so.optimized_model_filepath = str(opt)
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(opt)).graph.node]
    return "+".join(ops) if ops else "?"


def measure_gemm_peaks(threads: int, size: int = 512, runs: int = 20) -> GemmPeaks:
    """Measure (no cache): fp32 MatMul and ONNX Runtime's dynamic-int8 MatMul, interleaved, `runs` calls each."""
    import onnxruntime as ort  # lazy: heavy

    target = detect_target()
    feed = {INPUT: np.random.default_rng(1).standard_normal((size, size)).astype(np.float32)}
    with tempfile.TemporaryDirectory(prefix="edgeopt-peaks-") as tmp:
        fp32, int8 = _graphs(Path(tmp), size)
        kernel = _int8_kernel(int8, threads)
        runners = {"fp32": OrtRunner(fp32, threads), "int8": OrtRunner(int8, threads)}
        try:
            stats = measure_interleaved(runners, feed, warmup=3, runs=runs, block=5, settle=1)
        finally:
            for r in runners.values():
                r.close()
    ops = 2.0 * size ** 3
    fp32_ms, int8_ms = (float(np.percentile(stats[k].samples, PEAK_PERCENTILE)) for k in ("fp32", "int8"))
    fp32_g, int8_g = ops / (fp32_ms * 1e-3) / 1e9, ops / (int8_ms * 1e-3) / 1e9
    return GemmPeaks(fp32_gflops=round(fp32_g, 2), int8_gops=round(int8_g, 2), ratio=round(int8_g / fp32_g, 3),
                     threads=threads, size=size, fp32_ms=round(fp32_ms, 4), int8_ms=round(int8_ms, 4),
                     fp32_p50_ms=round(stats["fp32"].p50, 4), int8_p50_ms=round(stats["int8"].p50, 4), runs=runs,
                     int8_kernel=kernel, cpu_model=target.cpu_model, isa=target.isa, onnxruntime=ort.__version__,
                     measured_at=round(time.time(), 1))


def gemm_peaks(threads: int, *, size: int = 512, runs: int = 20, refresh: bool = False,
               cache: Path | None = None) -> GemmPeaks:
    """Measured fp32 and int8 GEMM throughput of this CPU with `threads` intra-op threads (see the module doc).

    Read from the cache when this CPU (model + ISA flags), thread count, size and ONNX Runtime version were
    measured before (`cached=True` on the result), else measured (about a second) and cached. `refresh`
    remeasures; `cache` is the folder (default: $EDGEOPT_CACHE/peaks, else ~/.cache/edgeopt/peaks).
    """
    import importlib.metadata as md

    for name, value, low in (("threads", threads, 1), ("size", size, 16), ("runs", runs, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"gemm_peaks: {name} must be an integer >= {low}, got {value!r}")
    target = detect_target()
    try:
        ort_version = md.version("onnxruntime")
    except md.PackageNotFoundError:
        raise InputError("gemm_peaks needs onnxruntime (pip install onnxruntime)") from None
    folder = Path(cache) if cache is not None else cache_dir() / "peaks"
    path = folder / f"{_key(target.cpu_model, target.isa, threads, size, ort_version)}.json"
    if not refresh and path.is_file():
        try:
            d = json.loads(path.read_text())
            if d.get("schema") == SCHEMA:
                d.pop("schema")
                return GemmPeaks(**{**d, "isa": tuple(d["isa"]), "cached": True})
        except (OSError, ValueError, TypeError):
            pass  # a torn or foreign file: measure again and overwrite it
    peaks = measure_gemm_peaks(threads, size=size, runs=runs)
    try:
        _write_atomic(path, json.dumps({"schema": SCHEMA, **peaks.to_dict()}, indent=2, sort_keys=True))
    except OSError:
        pass  # a read-only cache folder costs a remeasure next time, never the result
    return peaks
