"""Synthetic ledgers and run directories for report and dashboard tests (no model is run to make them)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from edgeopt.ledger import Energy, Gate, Latency, Ledger, Stage

ENV = {"platform": "Linux-test", "machine": "x86_64", "cpu_model": "Test CPU 9000", "isa": ["avx2", "avx512_vnni"],
       "cores": 2, "memory_gb": 8.0, "runtimes": {"onnxruntime": "1.31.1", "torch": "2.13.0+cpu"}}
VERSIONS = {"python": "3.11.7", "edgeopt": "0.1.0", "onnxruntime": "1.31.1", "torch": "2.13.0+cpu"}

# name, pass, runtime, p50 ms, peak MB, size bytes, mean cosine, gate passed
DEFAULT_STAGES = (
    ("baseline", None, "torch", 40.0, 400.0, 90_000_000, 1.0, True),
    ("onnx", "convert.onnx", "onnxruntime", 20.0, 200.0, 90_000_000, 0.9999999, True),
    ("fused", "graph.fuse", "onnxruntime", 16.0, 190.0, 89_000_000, 0.9999998, True),
    ("int8", "graph.quantize_dynamic", "onnxruntime", 8.0, 120.0, 23_000_000, 0.992, True),
    ("int8-aggressive", "graph.quantize_static", "onnxruntime", 7.0, 110.0, 22_000_000, 0.95, False),
)


def make_stage(name: str, pass_: str | None, runtime: str, p50: float, peak: float | None, size: int,
               cos: float, passed: bool, run_dir: Path | None = None) -> Stage:
    path = None
    if pass_ is not None and run_dir is not None:
        path = str(run_dir / name / "model.onnx")
    return Stage(
        name=name, **{"pass": pass_}, config={}, status="done",
        artifact={"kind": "torch" if pass_ is None else "onnx", "path": path, "sha256": "0" * 64,
                  "size_bytes": size, "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 16]}]},
        params=1000, latency_ms=Latency(p50=p50, p90=p50 * 1.2, p99=p50 * 1.5, mean=p50 * 1.05, std=p50 * 0.1, n=50,
                                        runtime=runtime, threads=2, batch=1, shapes={"x": [1, 16]}),
        peak_rss_mb=peak, energy_mj=Energy(value=p50 * 20, method="estimate: test"),
        fidelity={"max_abs": 1 - cos, "mean_cosine": cos, "min_cosine": cos - 0.01, "n": 256.0},
        gate=Gate(passed=passed, why="baseline" if pass_ is None else f"mean_cosine {cos}"),
        duration_s=1.0, versions=dict(VERSIONS))


def make_ledger(stages: tuple = DEFAULT_STAGES, run_dir: Path | None = None, best: str | None = "int8") -> Ledger:
    led = Ledger(recipe={"model": {"source": "zoo:test"}, "target": "auto",
                         "measure": {"threads": 2, "batch": 1, "seq_len": 16, "runs": 50, "warmup": 10}},
                 target={"name": "cpu-avx512-vnni", "cpu_model": "Test CPU 9000", "isa": ENV["isa"], "cores": 2},
                 environment=dict(ENV), best=best)
    for spec in stages:
        led.put(make_stage(*spec, run_dir=run_dir))
    return led


def write_run(run_dir: Path, stages: tuple = DEFAULT_STAGES, onnx_model: Path | None = None, **kw: Any) -> Path:
    """A run directory with ledger.json (and, given `onnx_model`, that file as every ONNX stage's model)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    led = make_ledger(stages, run_dir=run_dir, **kw)
    if onnx_model is not None:
        for s in led.stages:
            if s.artifact and s.artifact.get("path"):
                Path(s.artifact["path"]).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(onnx_model, s.artifact["path"])
    led.save(run_dir / "ledger.json")
    return run_dir


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path
