"""Runtimes benchmark (issue 11): one model on every runtime edgeopt converts to, timed side by side on THIS CPU.

For `zoo:digits-cnn` and a MobileNetV2-layout model built from its transformers config (random weights,
224×224, batch 1): PyTorch eager, ONNX Runtime fp32 / static INT8, OpenVINO fp32 / INT8 (NNCF), LiteRT
(TFLite + XNNPACK) fp32 / dynamic INT8 / static INT8 and ncnn fp32 — every model built by edgeopt's own passes
from the same PyTorch model, then timed in ONE interleaved session (2 threads): p50, speedup over PyTorch with
its 95% interval, peak RSS (a child per model), file size, and agreement with PyTorch on held-out inputs
(max-abs and mean cosine; accuracy for digits). For MiniLM: LiteRT fp32 and dynamic INT8 beside ONNX Runtime
fp32 and its dynamic INT8. Prints the CPU flags, which runtime wins per model here, and exits 1 when a
converter's fp32 output differs from PyTorch by more than 1e-4 relative (max |diff| / max |PyTorch|), or
a converter fails.

    .venv/bin/python benchmarks/runtimes.py [--models digits,mobilenetv2,minilm] [--runs 100] [--out runs/bench-runtimes]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from edgeopt.report.claims import Claim, statement

FP32_REL_TOL = 1e-4
Steps = list[tuple[str, dict[str, Any]]]

CNN_VARIANTS: dict[str, Steps] = {
    "ORT fp32": [("convert.onnx", {})],
    "ORT static int8": [("convert.onnx", {}), ("graph.quantize_static", {"samples": 64})],
    "OpenVINO fp32": [("convert.onnx", {}), ("convert.openvino", {"precision": "f32", "static_shapes": True})],
    "OpenVINO int8": [("convert.onnx", {}), ("convert.openvino", {"precision": "f32", "static_shapes": True}),
                      ("openvino.quantize", {})],
    "LiteRT fp32": [("convert.litert", {})],
    "LiteRT dynamic int8": [("convert.litert", {"quantize": "dynamic_int8", "min_cosine": 0.0})],
    "LiteRT static int8": [("convert.litert", {"quantize": "static_int8", "samples": 64, "min_cosine": 0.0})],
    "ncnn fp32": [("convert.ncnn", {})],
}
MINILM_VARIANTS: dict[str, Steps] = {
    "ORT fp32": [("convert.onnx", {})],
    "ORT fused + dynamic int8": [("convert.onnx", {}), ("graph.simplify", {}), ("graph.fuse", {"rules": "auto"}),
                                 ("graph.quantize_dynamic", {})],
    "LiteRT fp32": [("convert.litert", {})],
    "LiteRT dynamic int8": [("convert.litert", {"quantize": "dynamic_int8", "min_cosine": 0.0})],
}
FP32 = ("ORT fp32", "OpenVINO fp32", "LiteRT fp32", "ncnn fp32")
# quantized LiteRT variants are kept whatever their cosine (min_cosine 0): the table reports it, as for ORT/OpenVINO


def mobilenetv2(out: Path):
    """A MobileNetV2 (transformers config, random weights, seeded) saved as a Hugging Face folder and loaded back.

    With transformers' own initialization (normal, std 0.02) the activations of 52 random layers shrink to
    ~1e-27 and INT8 has nothing to quantize; so the convolutions get He initialization (fan-out, as trained
    MobileNets start) and the BatchNorm statistics are recomputed on 256 bundled pictures (train-mode
    forward passes, cumulative averages): random weights with activations of a trained network's scale."""
    import torch
    import transformers

    from edgeopt.zoo.images import normalize, pictures

    folder = out / "mobilenetv2-random-he-bn"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        model = transformers.MobileNetV2ForImageClassification(transformers.MobileNetV2Config(image_size=224))
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(m.weight)
                torch.nn.init.zeros_(m.bias)
                m.reset_running_stats()
                m.momentum = None  # cumulative moving average over the calibration batches
        pics = torch.from_numpy(normalize(pictures(range(256), 224, 224, 3)).astype("float32"))
        model.train()
        with torch.no_grad():
            for batch in pics.split(32):
                model(pixel_values=batch)
        model.eval()
        model.save_pretrained(folder)
    return str(folder)


def build(base, variants: dict[str, Steps], out: Path, calib: list, seq_len: int) -> tuple[dict, dict]:
    """Every variant built from `base` with edgeopt's passes; returns (label -> Artifact, label -> error line)."""
    from edgeopt.errors import EdgeoptError, first_line
    from edgeopt.passes.base import PassContext, build_pass
    from edgeopt.recipe import MeasureSpec
    from edgeopt.target import detect_target

    target, m = detect_target(), MeasureSpec(threads=2, batch=1, seq_len=seq_len)
    arts, errors = {}, {}
    for label, steps in variants.items():
        art = base
        try:
            for i, (name, cfg) in enumerate(steps):
                d = out / label.replace(" ", "-").replace("+", "") / f"{i}-{name}"
                d.mkdir(parents=True, exist_ok=True)
                ctx = PassContext(stage_dir=d, target=target, calibration=calib, evaluation=calib[:4], measure=m)
                art = build_pass(name, cfg)(art, ctx)
            arts[label] = art
        except (EdgeoptError, ValueError) as e:
            errors[label] = first_line(e, 300)
    return arts, errors


def agreement(base, arts: dict, feeds: list, labels: list | None) -> dict[str, dict[str, float]]:
    """Max-abs, relative max error, mean cosine (and accuracy) of each model's first output against PyTorch's."""
    import numpy as np

    from edgeopt.measure.fidelity import compare
    from edgeopt.measure.runners import make_runner

    def outputs(art):
        r = make_runner(art, threads=2)
        try:
            return [np.asarray(r.run(f)[0]) for f in feeds]
        finally:
            r.close()

    ref = outputs(base)
    scale = max(float(np.abs(x).max()) for x in ref) or 1.0
    res = {}
    for label, art in {"PyTorch eager": base, **arts}.items():
        got = ref if art is base else outputs(art)
        c = compare(ref, got)
        row = {"max_abs": c["max_abs"], "rel": c["max_abs"] / scale, "mean_cos": c["mean_cosine"]}
        if labels is not None:
            pred = np.concatenate([g.reshape(len(g), -1).argmax(-1) for g in got])
            row["accuracy"] = float((pred == np.concatenate([np.asarray(y).reshape(-1) for y in labels])).mean())
        res[label] = row
    return res


def one_model(name: str, source: str, variants: dict[str, Steps], args, claims: list[Claim], console) -> None:
    from rich.table import Table

    from edgeopt import data
    from edgeopt.errors import EdgeoptError, first_line
    from edgeopt.load import load_model
    from edgeopt.measure.bench import bench
    from edgeopt.measure.memory import peak_rss_mb

    seq = 128
    base = load_model(source, seq_len=seq, batch=1)
    out = Path(args.out) / name
    if name == "digits":
        cal_spec, ev_spec, timed = "zoo:digits[train][:128]", "zoo:digits[test][:200]", "zoo:digits[test][:1]"
    elif name == "minilm":
        cal_spec, ev_spec, timed = "zoo:sentences[:64]", "zoo:sentences[64:192]", "zoo:sentences[64:65]"
    else:
        cal_spec, ev_spec, timed = "zoo:images[:64]", "zoo:images[64:96]", "zoo:images[64:65]"
    calib, _ = data.split_labels(data.resolve(cal_spec, base, seq_len=seq, batch=1, role="calibration",
                                              default_slice=slice(0, 64)))
    feeds, labels = data.split_labels(data.resolve(ev_spec, base, seq_len=seq, batch=1, role="eval",
                                                   default_slice=slice(0, 64)))
    console.print(f"[bold]{name}[/bold]: building {len(variants)} variants from {source} …")
    arts, errors = build(base, variants, out, calib, seq)
    for label, why in errors.items():
        console.print(f"  [red]{label}: {why}[/red]")
        claims.append(Claim(f"{name}: {label} converts", False, why))
    agree = agreement(base, arts, feeds, labels)
    labels_all = ["PyTorch eager", *arts]
    b = bench([base, *arts.values()], threads=2, runs=args.runs, warmup=10, data=timed, seq_len=seq, batch=1)
    rows = dict(zip(labels_all, b.rows))
    peak: dict[str, float | str] = {}
    feed0 = feeds[0]
    for label, art in {"PyTorch eager": base, **arts}.items():
        try:
            peak[label] = float(peak_rss_mb(art, feed0, threads=2).peak_mb)
        except EdgeoptError as e:
            peak[label] = "— (" + first_line(e, 60) + ")"
    t = Table(title=f"{name}: batch 1, 2 threads, {args.runs} interleaved rounds", title_justify="left")
    for c in ("model", "runtime", "p50 ms", "vs PyTorch (95%)", "peak MB", "size MB", "max-abs", "rel err",
              "mean cos", *(["accuracy"] if labels is not None else [])):
        t.add_column(c, justify="left" if c in ("model", "runtime") else "right")
    for label in labels_all:
        r, a = rows[label], agree[label]
        pk = peak[label]
        t.add_row(label, r.runtime, f"{r.p50:.3f}", f"{r.speedup:.2f}× ({r.speedup_lo:.2f}–{r.speedup_hi:.2f})",
                  f"{pk:.0f}" if isinstance(pk, float) else pk, f"{r.size_bytes / 1e6:.2f}", f"{a['max_abs']:.2e}",
                  f"{a['rel']:.1e}", f"{a['mean_cos']:.5f}",
                  *([f"{a['accuracy']:.4f}"] if labels is not None else []))
    console.print(t)
    for label in FP32:
        if label in agree:
            claims.append(Claim(f"{name}: {label} output equals PyTorch within {FP32_REL_TOL:g} relative",
                                agree[label]["rel"] <= FP32_REL_TOL,
                                f"max |diff| {agree[label]['max_abs']:.2e} = {agree[label]['rel']:.1e} of max |PyTorch|"))
    ok = [lab for lab in arts if (agree[lab].get("accuracy", 1.0) >= agree["PyTorch eager"].get("accuracy", 1.0) - 0.015
                                  and agree[lab]["mean_cos"] >= (0.99 if labels is None else 0.0))]
    if ok:
        win = min(ok, key=lambda lab: rows[lab].p50)
        claims.append(statement(f"{name}: fastest runtime here (within the fidelity gate)",
                                f"{win}: {rows[win].p50:.3f} ms, {rows[win].speedup:.2f}× PyTorch "
                                f"({rows[win].speedup_lo:.2f}–{rows[win].speedup_hi:.2f}); runner-up "
                                + ", ".join(f"{lab} {rows[lab].p50:.3f}" for lab in sorted(ok, key=lambda x: rows[x].p50)[1:3])))
    console.print(f"[dim]versions: {b.versions}[/dim]")


def main() -> int:
    from rich.console import Console

    from edgeopt.report.claims import exit_code, summary, table
    from edgeopt.target import detect_target

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,mobilenetv2,minilm")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--out", default="runs/bench-runtimes")
    args = ap.parse_args()
    t = detect_target()
    console = Console(width=180)
    console.print(f"CPU: {t.cpu_model}; flags: {' '.join(t.isa)}; cores {t.cores}")
    claims: list[Claim] = []
    Path(args.out).mkdir(parents=True, exist_ok=True)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "digits":
            one_model(name, "zoo:digits-cnn", CNN_VARIANTS, args, claims, console)
        elif name == "mobilenetv2":
            one_model(name, mobilenetv2(Path(args.out)), CNN_VARIANTS, args, claims, console)
        elif name == "minilm":
            one_model(name, "zoo:minilm", MINILM_VARIANTS, args, claims, console)
        else:
            console.print(f"[red]unknown model {name!r} (digits, mobilenetv2, minilm)[/red]")
            return 2
    console.print(table(claims, title=f"checks on {t.cpu_model}"))
    console.print(summary(claims))
    return exit_code(claims)


if __name__ == "__main__":
    sys.exit(main())
