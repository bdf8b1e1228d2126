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


# An LLM run (ledger schema 2): the PyTorch fp32 baseline, then LiteRT variants from one conversion.
# name, pass, config, decode tok/s, prefill tok/s, ttft ms, peak MB, size bytes, top-1, kl, ppl, answer, gate passed
LLM_STAGES = (
    ("baseline", None, {}, 40.0, 900.0, 142.0, 700.0, 540_000_000, 1.0, 0.0, 12.5, " Paris. It is", True),
    ("litert", "convert.litert_llm", {"quantize": "none"}, 60.0, 1500.0, 85.0, 650.0, 540_000_000, 0.9990, 0.0004,
     12.51, " Paris. It is", True),
    ("litert-int8", "quantize.litert_llm", {"variant": "dynamic_int8"}, 120.0, 2600.0, 49.0, 300.0, 140_000_000,
     0.9700, 0.02, 12.9, " Paris. It is", True),
    ("litert-int4", "quantize.litert_llm", {"variant": "dynamic_int4_block32", "embedding": "dynamic_int8"}, 150.0,
     2000.0, 64.0, 250.0, 90_000_000, 0.9100, 0.15, 14.2, " Paris, France | and\nthe", False),
)
COPY_BANDWIDTH_GBS = 40.0
LITERT_LABEL = "LiteRT CompiledModel · XNNPACK · 2 threads"


def make_llm_stage(name: str, pass_: str | None, config: dict, dec: float, pre: float, ttft: float, peak: float,
                   size: int, top1: float, kl: float, ppl: float, answer: str, passed: bool) -> Stage:
    weights = size
    ceiling = COPY_BANDWIDTH_GBS * 1e9 / weights
    ms = 1000.0 / dec
    return Stage(
        name=name, **{"pass": pass_}, config=dict(config), status="done",
        artifact={"kind": "torch" if pass_ is None else "tflite",
                  "path": None if pass_ is None else f"{name}/model.tflite", "sha256": "0" * 64, "size_bytes": size},
        latency_ms=Latency(p50=ms, p90=ms * 1.1, p99=ms * 1.3, mean=ms * 1.02, std=ms * 0.05, n=192,
                           runtime="torch" if pass_ is None else "litert", threads=2, batch=1,
                           shapes={"tokens": [1, 1]}),
        peak_rss_mb=peak,
        fidelity={"top1_agreement": top1, "kl": kl, "ppl": ppl, "ppl_ref": 12.5, "positions": 8128.0},
        gate=Gate(passed=passed, why="baseline" if pass_ is None else f"top1_agreement {top1}"),
        llm={"runtime": "torch" if pass_ is None else LITERT_LABEL, "sequences": 64, "seq_len": 128,
             "top1_agreement": top1, "kl": kl, "ppl": ppl, "answer": answer, "prompt": "The capital of France is",
             "prompt_tokens": 128, "ttft_ms": ttft, "ttft_spread_ms": [ttft * 0.95, ttft * 1.2], "prefill_tok_s": pre,
             "decode_ms_p50": ms, "decode_ms_p90": ms * 1.1, "decode_tok_s": dec, "decode_tokens": 192, "repeats": 3,
             "weight_bytes_per_token": weights, "bandwidth_ceiling_tok_s": ceiling,
             "bandwidth_pct": 100.0 * dec / ceiling},
        duration_s=1.0, versions=dict(VERSIONS))


def make_llm_ledger(stages: tuple = LLM_STAGES, best: str | None = "litert-int8") -> Ledger:
    led = Ledger(recipe={"model": {"source": "zoo:smollm2-135m"}, "target": "auto",
                         "measure": {"threads": 2, "llm": {"prompt_tokens": 128, "decode_tokens": 64, "repeats": 3}}},
                 target={"name": "cpu-avx512-vnni", "cpu_model": "Test CPU 9000", "isa": ENV["isa"], "cores": 2},
                 environment={**ENV, "copy_bandwidth_gbs": COPY_BANDWIDTH_GBS}, best=best)
    for spec in stages:
        led.put(make_llm_stage(*spec))
    return led


def write_llm_run(run_dir: Path, exported: tuple[str, ...] = ("litert", "litert-int8", "litert-int4"),
                  source: str = "zoo:smollm2-135m", **kw: Any) -> Path:
    """An LLM run directory: ledger.json, and for each stage in `exported` its folder with a placeholder
    model.tflite, llm.json and tokenizer.json (enough for the dashboard to offer it; nothing here loads them)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    led = make_llm_ledger(**kw)
    led.recipe["model"] = {"source": source}
    for s in led.stages[1:]:
        s.artifact["path"] = str(run_dir / s.name / "model.tflite")
    for name in exported:
        folder = run_dir / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model.tflite").write_bytes(b"TFL3 placeholder")
        write_json(folder / "llm.json", {"prefill_lens": [32, 128], "kv_cache_max_len": 1024})
        write_json(folder / "tokenizer.json", {"version": "1.0"})
    led.save(run_dir / "ledger.json")
    return run_dir
