"""The UNet table: kernel passes switched on one by one on a diffusers UNet, each row timed, its memory and error measured.

What `edgeopt kernels unet` and `benchmarks/kernels.py` call; `edgeopt.report.kernels` renders the result.
Each row's peak RSS comes from a child process (`python -m edgeopt.unet_table unet-memory JSON`) that
builds the row's model by replaying the choices its passes made. It drives passes
(`edgeopt.passes.base.build_pass`), so it sits above them, beside the pipeline, and uses `measure/` below.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import torch

from edgeopt.artifact import Artifact, InputSpec
from edgeopt.extras import require
from edgeopt.kernels import checks
from edgeopt.kernels import native as kernel_native
from edgeopt.kernels.attention import diffusers_processor_for
from edgeopt.kernels.layer_stats import CallRunner, peak_intermediate_bytes, relative_error
from edgeopt.kernels.winograd import WinogradConv2d, candidate_name
from edgeopt.measure.kernels import SCHEMA, p10_p90, versions
from edgeopt.measure.latency import measure_interleaved
from edgeopt.measure.memory import maxrss_mb
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.zoo.unet import UNET_CONFIGS, build_unet, check_size, load_unet


@dataclass(frozen=True)
class UNetRow:
    """One row of the UNet table: a label and the passes (name, config) it adds to the row before it."""

    label: str
    passes: tuple[tuple[str, dict[str, Any]], ...] = ()
    reference: bool = False  # applied to the untouched model, not cumulative
    what: str = ""


UNET_ROWS: tuple[UNetRow, ...] = (
    UNetRow("untouched", (), what="diffusers defaults: AttnProcessor2_0 (PyTorch SDPA), GroupNorm then SiLU, conv2d"),
    UNetRow("+ fused GroupNorm+SiLU", (("kernels.fused_norm", {}),),
            what="ResNet blocks' norm1/norm2 -> nonlinearity as one module"),
    UNetRow("+ partially fused softmax", (("kernels.attention", {"impl": "partial_softmax"}),),
            what="every attention layer: the probability matrix never stored"),
    UNetRow("+ FlashAttention / SDPA per layer",
            (("kernels.attention", {"impl": "auto", "candidates": ["partial_softmax", "flash", "sdpa"]}),),
            what="per layer the fastest of partial softmax, flash, SDPA (measured)"),
    # F8 is left out of the per-layer tuning: it exceeds the 1e-5 budget on every layer (see the error table)
    UNetRow("+ Winograd (tuned per layer)", (("kernels.winograd", {"tile": "auto", "tiles": [2, 4, 6]}),),
            what="each eligible 3x3 conv: the fastest of direct, F2, F4, F6 within 1e-5 (measured)"),
    UNetRow("naive attention (reference)", (("kernels.attention", {"impl": "naive"}),), reference=True,
            what="untouched model with the full score and probability matrices: the paper's starting point"),
)
# the same rows with the single-pass C++ kernels (edgeopt.kernels.native) where the toggle has one
_NATIVE = {"kernels.fused_norm": {"backend": "native"}, "kernels.winograd": {"backend": "native"},
           "partial_softmax": "partial_softmax_native", "flash": "flash_native"}


def unet_rows(native: bool) -> tuple[UNetRow, ...]:
    """UNET_ROWS, with the fused-norm, attention and Winograd toggles on the native C++ kernels when `native`
    (the Winograd row tunes F2/F4 on the native kernel, F6 on PyTorch ops)."""
    if not native:
        return UNET_ROWS

    def swap(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
        if name in ("kernels.fused_norm", "kernels.winograd"):
            return {**cfg, **_NATIVE[name]}
        if name == "kernels.attention":
            cfg = {**cfg, "impl": _NATIVE.get(cfg["impl"], cfg["impl"])}
            if "candidates" in cfg:
                cfg["candidates"] = [_NATIVE.get(c, c) for c in cfg["candidates"]]
        return cfg

    return tuple(UNetRow(r.label, tuple((n, swap(n, c)) for n, c in r.passes), r.reference,
                         r.what + (" (native C++ kernel)" if r.passes and not r.reference else ""))
                 for r in UNET_ROWS)


def _choices(notes: dict[str, Any]) -> dict[str, Any]:
    """What a row's passes decided, in the form `_apply_choices` replays in a child process."""
    out: dict[str, Any] = {}
    if "fused_norm" in notes:
        out["fused_norm"] = notes["fused_norm"]["backend"] if notes["fused_norm"]["fused"] else False
    if "attention" in notes:
        out["attention"] = {n: r["impl"] for n, r in notes["attention"]["layers"].items()}
    if "winograd" in notes:  # name -> tile, or [tile, backend] off the PyTorch-ops backend
        backends = notes["winograd"].get("backends", {})
        out["winograd"] = {n: t if backends.get(n, "torch") == "torch" else [t, backends[n]]
                           for n, t in notes["winograd"]["replaced"].items()}
    return out


def _apply_choices(module: Any, choices: dict[str, Any], blocks: dict[str, int] | None = None) -> Any:
    """Replay recorded choices on a freshly built UNet: fuse norms, set attention processors, swap convs."""
    blocks = blocks or {}
    if choices.get("fused_norm"):  # the backend name (True in tables written before there were backends)
        backend = choices["fused_norm"] if isinstance(choices["fused_norm"], str) else "eager"
        with tempfile.TemporaryDirectory() as d:
            art = Artifact.from_module(module, InputSpec(()))
            module = build_pass("kernels.fused_norm", {"measure": False, "backend": backend})(
                art, PassContext(stage_dir=Path(d))).module
    for name, impl in choices.get("attention", {}).items():
        layer = module.get_submodule(name)
        layer.set_processor(diffusers_processor_for(layer, impl, **blocks))
    for name, tile in choices.get("winograd", {}).items():
        tile, backend = (tile, "torch") if isinstance(tile, int) else tile
        module.set_submodule(name, WinogradConv2d(module.get_submodule(name), int(tile), backend))
    return module


def _summarize_notes(notes: dict[str, Any]) -> str:
    """A short 'what changed' for one row: fused pairs, attention choices, Winograd tiles."""
    parts = []
    if "fused_norm" in notes:
        fn = notes["fused_norm"]
        parts.append(f"{len(fn['fused'])} pairs fused" + (f", {len(fn['skipped'])} skipped" if fn["skipped"] else ""))
    if "attention" in notes:
        c = Counter(r["impl"] for r in notes["attention"]["layers"].values())
        parts.append("attention " + ", ".join(f"{k}×{v}" for k, v in sorted(c.items())))
    if "winograd" in notes:
        w = notes["winograd"]
        c = Counter(candidate_name(t, w.get("backends", {}).get(n, "torch")) for n, t in w["replaced"].items())
        parts.append("Winograd " + (", ".join(f"{k}×{v}" for k, v in sorted(c.items())) or "none")
                     + f"; direct kept ×{len(w['kept_direct'])}; skipped ×{len(w['skipped'])}")
    return "; ".join(parts)


def _child_memory(size: str, seed: int, choices: dict[str, Any], threads: int, blocks: dict[str, int],
                  timeout: float = 300) -> dict[str, float] | None:
    """Peak RSS of a child that builds the UNet, replays `choices`, and runs one step (MB, 2**20 bytes)."""
    arg = json.dumps({"size": size, "seed": seed, "choices": choices, "threads": threads, "blocks": blocks})
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeopt.unet_table", "unet-memory", arg],
                              capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
        return None


def _unet_memory_child(arg: str) -> int:
    spec = json.loads(arg)
    torch.set_num_threads(int(spec["threads"]))
    size = check_size(spec["size"])
    require("diffusers", f"the UNet table (unet:{size})")  # imported before the baseline reading, like torch

    proc = psutil.Process()
    import_mb = proc.memory_info().rss / 2**20
    module, example = build_unet(spec["size"], spec["seed"])
    module = _apply_choices(module, spec["choices"], spec["blocks"])
    built_mb = proc.memory_info().rss / 2**20
    with torch.inference_mode():
        module(*example.values())
    print(json.dumps({"import_mb": import_mb, "built_mb": built_mb, "peak_mb": maxrss_mb()}))
    return 0


def unet_table(size: str = "small", runs: int = 10, warmup: int = 2, threads: int = 2, tune_runs: int = 3,
               child_memory: bool = True, reference_naive: bool = True, seed: int = 0,
               native: bool | None = None) -> dict[str, Any]:
    """The techniques switched on one by one on a diffusers UNet2DConditionModel (random weights), as rows.

    Rows are cumulative (each adds its passes to the row above), except the naive-attention reference,
    which is the untouched model with naive attention. Per row: latency of one UNet step (all rows timed
    interleaved in one session, median and 10th/90th percentile), peak ATen tensor bytes of one step
    (activations and workspace visible to a dispatch mode, inputs and weights excluded), optionally the
    peak RSS of a child process that builds the row's model and runs one step, the output's deviation from
    the untouched model (norm-wise relative error, max abs), and the latency change against the untouched
    row (cumulative) and against the row above. `native` (default: when the C++ kernels build here) runs the
    fused-norm and attention toggles on `edgeopt.kernels.native`'s single-pass kernels.
    """
    for n, v in (("runs", runs), ("threads", threads), ("tune_runs", tune_runs)):
        checks.pos_int(v, n)
    if native is None:
        native = kernel_native.available()
    base = load_unet(size, seed)
    module, example = base.module, base.meta["example_inputs"]
    before_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    arts: dict[str, Any] = {}
    choices: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prev, prev_choices = base, {}
            for i, row in enumerate(r for r in unet_rows(native) if reference_naive or not r.reference):
                art = base if row.reference else prev
                notes: dict[str, Any] = {}
                for name, cfg in row.passes:
                    cfg = {**cfg, "measure": False}
                    if name in ("kernels.attention", "kernels.winograd"):
                        cfg.update(runs=tune_runs, threads=threads)
                    ctx = PassContext(stage_dir=Path(tmp) / f"{i}-{name}")
                    art = build_pass(name, cfg)(art, ctx)
                    notes.update(ctx.notes)
                arts[row.label] = art
                ch = _choices(notes)
                merged = {} if row.reference else dict(prev_choices)
                for k, v in ch.items():
                    merged[k] = {**merged.get(k, {}), **v} if isinstance(v, dict) else v
                choices[row.label] = merged
                rows.append({"label": row.label, "what": row.what, "reference": row.reference,
                             "changes": _summarize_notes(notes)})
                if not row.reference:
                    prev, prev_choices = art, merged
        args = tuple(example.values())
        with torch.inference_mode():
            ref = arts["untouched"].module(*args)
            for r in rows:
                y = arts[r["label"]].module(*args)
                r["rel_error"] = relative_error(y, ref)
                r["max_abs_error"] = float((y.double() - ref.double()).abs().max())
                r["peak_tensor_bytes"] = peak_intermediate_bytes(lambda m=arts[r["label"]].module: m(*args), keep=args)
        runners = {r["label"]: CallRunner(r["label"], lambda m=arts[r["label"]].module: m(*args), threads)
                   for r in rows}
        with torch.inference_mode():
            stats = measure_interleaved(runners, feed={}, warmup=warmup, runs=runs)
    finally:
        torch.set_num_threads(before_threads)
    base_ms = stats["untouched"].p50
    prev_ms = None
    for r in rows:
        s = stats[r["label"]]
        r["latency_ms"] = {"p50": s.p50, "p10_p90": p10_p90(s.samples), "n": s.n,
                           "samples": [round(x, 3) for x in s.samples]}  # round order: paired speedups
        r["change_vs_untouched"] = s.p50 / base_ms - 1.0
        r["change_vs_previous"] = None if (r["reference"] or prev_ms is None) else s.p50 / prev_ms - 1.0
        if not r["reference"]:
            prev_ms = s.p50
        r["choices"] = choices[r["label"]]
        if child_memory:
            r["child_rss_mb"] = _child_memory(size, seed, choices[r["label"]], threads, {})
    spec = UNET_CONFIGS[size]
    return {"schema": SCHEMA, "kind": "unet_table", "size": size, "threads": threads, "runs": runs,
            "latent": [1, 4, spec["latent"], spec["latent"]], "text_tokens": spec["text_tokens"],
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in spec["config"].items()},
            "params": sum(p.numel() for p in module.parameters()),
            "memory": {"peak_tensor_bytes": "ATen-visible tensor bytes of one step (TorchDispatchMode), inputs and "
                                            "weights excluded",
                       "child_rss_mb": "peak RSS (VmHWM) of a child that builds the row's model and runs one step; "
                                       "import_mb = after importing torch+diffusers, built_mb = model built"},
            "rows": rows, "versions": versions()}


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "unet-memory":
        return _unet_memory_child(argv[1])
    print("usage: python -m edgeopt.unet_table unet-memory JSON (internal: the UNet table's memory child)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
