"""CNN compression benchmark: the cnn-course recipe on zoo:digits-cnn (baseline → distilled student →
channel-pruned → INT8) timed side by side in ONNX Runtime, plus the depthwise rewrite of the teacher, MiniLM
with half its heads pruned (and a 3-layer distilled MiniLM), and QAT against post-training static INT8.

Every latency here is ONNX Runtime on CPU with 2 intra-op threads, all models of one table measured
interleaved in the same process (warm-up, blocks of 5 calls with the first untimed); accuracy is top-1 on
all 360 images of the zoo:digits test split; sizes are the ONNX files' bytes and deflate-compressed bytes.
MACs are counted from the exported ONNX graphs (`edgeopt.analyze.flops`), heads from the models' attention
projections. Ends with a check per claim (statements, measured facts that are not pass/fail, are marked as
such); the exit status is 1 when a check does not hold, 2 on a usage error.

    .venv/bin/python benchmarks/cnn_compression.py [--parts course,depthwise,heads,qat] [--runs 200] [--out runs/bench-cnn]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.measure.latency import paired_speedup
from edgeopt.report.claims import Claim, statement

BLOCK, SETTLE = 5, 1


def run_course(out: Path, console: Any) -> tuple[Any, dict[str, Any]]:
    """optimize() with the bundled cnn-course recipe; returns the ledger and every stage's artifact."""
    from edgeopt.pipeline import optimize

    res = optimize(recipe="cnn-course", out=out, console=console, progress=True)
    return res.ledger, res.artifacts


def to_onnx(art: Any, folder: Path) -> Any:
    from edgeopt.passes.base import PassContext, build_pass

    if art.kind == "onnx":
        return art
    return build_pass("convert.onnx", {"opset": 17})(art, PassContext(stage_dir=folder))


SPIN = True  # ONNX Runtime worker threads spin between calls, as deployed (--no-spin turns it off)


def time_models(paths: dict[str, Any], feed: dict[str, np.ndarray], threads: int, runs: int) -> dict[str, Any]:
    from edgeopt.measure import latency, runners

    live = {k: runners.make_runner(a, threads=threads, spinning=SPIN) for k, a in paths.items()}
    try:
        return latency.measure_interleaved(live, feed, warmup=20, runs=runs, block=BLOCK, settle=SETTLE, pause_s=0.05)
    finally:
        for r in live.values():
            r.close()


def onnx_accuracy(art: Any, x: np.ndarray, y: np.ndarray) -> float:
    import torch

    from edgeopt.passes.compress.qat import onnx_score
    from edgeopt.train import TensorData

    return onnx_score(art.path, TensorData((torch.from_numpy(x.copy()),), torch.from_numpy(y.copy())),
                      [art.input_spec.names[0]])


def magnitude(args: Any, console: Any, report: dict[str, Any]) -> list[Claim]:
    """prune.magnitude at 50% and 90%: a dense runtime gains no speed; the compressed file shrinks."""
    from rich.table import Table

    from edgeopt.measure.size import size_report
    from edgeopt.passes.base import PassContext, build_pass
    from edgeopt.load import load_model
    from edgeopt.zoo.digits import load_split

    console.print("[bold]magnitude[/bold]: unstructured L1 pruning of zoo:digits-cnn, timed in ONNX Runtime (dense)")
    base = load_model("zoo:digits-cnn")
    arts = {"dense": base}
    for sp in (0.5, 0.9):
        ctx = PassContext(stage_dir=args.out / f"magnitude-{sp}")
        arts[f"{int(sp * 100)}% zeros"] = build_pass("prune.magnitude", {"sparsity": sp})(base, ctx)
    onnx = {k: to_onnx(a, args.out / f"magnitude-onnx-{i}") for i, (k, a) in enumerate(arts.items())}
    x, y = load_split("test")
    acc = {k: onnx_accuracy(a, x, y) for k, a in onnx.items()}
    sizes = {k: size_report(a) for k, a in onnx.items()}
    lat = time_models(onnx, {"image": x[:16].copy()}, args.threads, args.runs)
    t = Table(title="prune.magnitude on zoo:digits-cnn — ONNX Runtime (dense kernels), batch 16, interleaved",
              title_justify="left")
    for c in ("model", "top-1 %", "b16 p50 ms", "speedup (95% CI)", "ONNX KB", "zipped KB"):
        t.add_column(c, justify="left" if c == "model" else "right")
    rows = {}
    for k in onnx:
        r = paired_speedup(lat["dense"].samples, lat[k].samples, BLOCK - SETTLE)
        rows[k] = {"accuracy": acc[k], "b16_p50_ms": lat[k].p50, "speedup": r[0], "bytes": sizes[k]["bytes"],
                   "zipped_bytes": sizes[k]["zipped_bytes"]}
        t.add_row(k, f"{100 * acc[k]:.2f}", f"{lat[k].p50:.3f}", f"{r[0]:.2f}× ({r[1]:.2f}–{r[2]:.2f})",
                  f"{sizes[k]['bytes'] / 1024:.0f}", f"{sizes[k]['zipped_bytes'] / 1024:.0f}")
    console.print(t)
    report["magnitude"] = rows
    z90 = rows["90% zeros"]
    return [
        Claim("magnitude: 90% zeros buy no dense-runtime speed (within ±15%)", 0.85 <= z90["speedup"] <= 1.15,
              f"{z90['speedup']:.2f}×"),
        Claim("magnitude: 90% zeros shrink the zipped file to under half",
              z90["zipped_bytes"] < 0.5 * rows["dense"]["zipped_bytes"],
              f"{z90['zipped_bytes'] / rows['dense']['zipped_bytes']:.0%} of dense"),
    ]


FP32_FINAL, INT8_FINAL = "pruned (½ of the student's channels)", "pruned INT8 (static QDQ)"


def course_claims(rows: dict[str, dict[str, Any]]) -> list[Claim]:
    """The course's claims from its table rows (speedups against the baseline, accuracy drops in points)."""
    f, q = rows[FP32_FINAL], rows[INT8_FINAL]
    fastest = max((FP32_FINAL, INT8_FINAL), key=lambda k: rows[k]["b16_speedup"])
    return [
        Claim("final fp32 ≥ 2.5× baseline batch-16 throughput (ORT fp32)", f["b16_speedup"] >= 2.5,
              f"{f['b16_speedup']:.2f}×"),
        Claim("final fp32 faster than baseline at batch 1", f["b1_speedup"] > 1.0, f"{f['b1_speedup']:.2f}×"),
        Claim("final fp32 loses ≤ 1.5 accuracy points", f["drop_points"] <= 1.5, f"{f['drop_points']:.2f}"),
        Claim("INT8 loses ≤ 1.5 accuracy points", q["drop_points"] <= 1.5, f"{q['drop_points']:.2f}"),
        # a statement: as a check it would hold whenever the fp32 check above does
        statement("fastest final at batch 16, against the baseline",
                  f"{fastest}: {rows[fastest]['b16_speedup']:.2f}× (fp32 {f['b16_speedup']:.2f}×, INT8 "
                  f"{q['b16_speedup']:.2f}×)"),
    ]


def course(args: Any, console: Any, report: dict[str, Any]) -> list[Claim]:
    from rich.table import Table

    from edgeopt.measure.size import size_report
    from edgeopt.zoo.digits import load_split

    console.print("[bold]course[/bold]: cnn-course recipe on zoo:digits-cnn (distill → prune.channels → INT8)")
    t0 = time.perf_counter()
    ledger, arts = run_course(args.out / "course", console)
    console.print(f"  recipe ran in {time.perf_counter() - t0:.0f} s")
    onnx = {"baseline": to_onnx(arts["baseline"], args.out / "onnx-baseline"),
            "student (distilled, ½ width)": to_onnx(arts["student"], args.out / "onnx-student"),
            FP32_FINAL: arts["onnx"],
            INT8_FINAL: arts["int8"]}
    x, y = load_split("test")
    acc = {k: onnx_accuracy(a, x, y) for k, a in onnx.items()}
    sizes = {k: size_report(a) for k, a in onnx.items()}
    params = {k: s.params for k, s in zip(onnx, [ledger.stage(n) for n in ("baseline", "student", "pruned", "int8")])}
    lat = {}
    for batch in (1, 16):
        lat[batch] = time_models(onnx, {"image": x[:batch].copy()}, args.threads, args.runs)
    eager = time_models({"pytorch eager": arts["baseline"], "onnxruntime": onnx["baseline"]},
                        {"image": x[:16].copy()}, args.threads, max(20, args.runs // 4))
    base = "baseline"
    t = Table(title=f"zoo:digits-cnn course — ONNX Runtime, {args.threads} threads, interleaved; accuracy on 360 test images",
              title_justify="left")
    for c in ("stage", "top-1 %", "Δ pts", "params", "ONNX KB", "zipped KB", "b1 p50 ms", "b1 speedup",
              "b16 p50 ms", "b16 speedup (95% CI)", "b16 img/s"):
        t.add_column(c, justify="left" if c == "stage" else "right")
    rows = {}
    for k in onnx:
        s1, s16 = lat[1][k], lat[16][k]
        r1 = paired_speedup(lat[1][base].samples, s1.samples, BLOCK - SETTLE)
        r16 = paired_speedup(lat[16][base].samples, s16.samples, BLOCK - SETTLE)
        rows[k] = {"accuracy": acc[k], "drop_points": 100 * (acc[base] - acc[k]), "params": params[k],
                   "bytes": sizes[k]["bytes"], "zipped_bytes": sizes[k]["zipped_bytes"],
                   "b1_p50_ms": s1.p50, "b1_speedup": r1[0], "b16_p50_ms": s16.p50, "b16_speedup": r16[0],
                   "b16_speedup_lo": r16[1], "b16_speedup_hi": r16[2], "b16_images_per_s": 16e3 / s16.p50}
        t.add_row(k, f"{100 * acc[k]:.2f}", f"{-rows[k]['drop_points']:+.2f}", f"{params[k]:,}" if params[k] else "–",
                  f"{sizes[k]['bytes'] / 1024:.0f}", f"{sizes[k]['zipped_bytes'] / 1024:.0f}", f"{s1.p50:.3f}",
                  f"{r1[0]:.2f}×", f"{s16.p50:.3f}", f"{r16[0]:.2f}× ({r16[1]:.2f}–{r16[2]:.2f})", f"{16e3 / s16.p50:,.0f}")
    console.print(t)
    fw = paired_speedup(eager["pytorch eager"].samples, eager["onnxruntime"].samples, BLOCK - SETTLE)
    console.print(f"  for scale: the same baseline in PyTorch eager takes {eager['pytorch eager'].p50:.2f} ms at batch 16, "
                  f"ONNX Runtime {eager['onnxruntime'].p50:.2f} ms ({fw[0]:.1f}× — framework overhead, not a compression win)")
    report["course"] = {"rows": rows, "pytorch_eager_b16_ms": eager["pytorch eager"].p50,
                        "ort_b16_ms": eager["onnxruntime"].p50, "ledger": str(args.out / "course" / "ledger.json")}
    return course_claims(rows)


def onnx_macs_by_module(path: Any) -> dict[str, int]:
    """MACs of an exported ONNX graph's nodes (`edgeopt.analyze.flops`, batch 1), summed by the torch module
    path the exporter writes into each node's name: the scopes of the modules called on the way to it
    (`/features/features.1/conv1/conv1.0/Conv` -> `features.1.conv1.0`)."""
    import onnx

    from edgeopt.analyze.flops import count_flops, prepare

    p = prepare(onnx.load(str(path)), batch=1)
    out: dict[str, int] = {}
    for rec in count_flops(p["model"], p["shapes"])["nodes"]:
        if rec["macs"]:
            scopes = rec["name"].strip("/").split("/")[:-1]
            module = ".".join(sc.rsplit(".", 1)[-1] for sc in scopes)
            out[module] = out.get(module, 0) + rec["macs"]
    return out


def graph_ratio(before: dict[str, int], after: dict[str, int], name: str) -> float | None:
    """MACs of module `name` in the original graph over those of everything under `name` in the rewritten one."""
    a = sum(v for k, v in after.items() if k == name or k.startswith(name + "."))
    return before[name] / a if a and before.get(name) else None


def depthwise_claims(replaced: dict[str, dict[str, Any]], ratios: dict[str, float | None], drop_points: float,
                     rel: float = 1e-9) -> list[Claim]:
    """Per replaced conv, the MACs ratio counted from the ONNX graphs equals `flops_reduction`'s prediction;
    accuracy is within 1.5 points after recovery."""
    bad = [f"{n}: {'no node found' if ratios.get(n) is None else f'{ratios[n]:.4f}'} vs {r['predicted_ratio']:.4f}"
           for n, r in replaced.items()
           if ratios.get(n) is None or abs(ratios[n] - r["predicted_ratio"]) > rel * r["predicted_ratio"]]
    return [Claim("depthwise: per replaced conv, the MACs ratio counted from the exported ONNX graphs equals "
                  "flops_reduction's", bool(replaced) and not bad,
                  f"{len(replaced) - len(bad)} of {len(replaced)} convs exact" + ("; " + "; ".join(bad) if bad else "")),
            Claim("depthwise: accuracy within 1.5 points after recovery", drop_points <= 1.5, f"{drop_points:.2f}")]


def depthwise(args: Any, console: Any, report: dict[str, Any]) -> list[Claim]:
    from rich.table import Table

    from edgeopt import train as tr
    from edgeopt.passes.base import PassContext, build_pass
    from edgeopt.zoo import digits as d
    from edgeopt.load import load_model

    console.print("[bold]depthwise[/bold]: arch.depthwise on zoo:digits-teacher, recovered by distillation from it")
    teacher = load_model("zoo:digits-teacher")
    ctx = PassContext(stage_dir=args.out / "depthwise")
    out = build_pass("arch.depthwise", {"min_channels": 16, "train": {"epochs": 8, "lr": 0.002, "patience": 3,
                                                                     "augment_shift": 0.08}})(teacher, ctx)
    n = ctx.notes["arch.depthwise"]
    test = d.tensor_data("test")
    acc_t, acc_s = tr.evaluate(teacher.module, test), tr.evaluate(out.module, test)
    macs_t = onnx_macs_by_module(to_onnx(teacher, args.out / "depthwise-onnx-teacher").path)
    macs_s = onnx_macs_by_module(to_onnx(out, args.out / "depthwise-onnx-rewritten").path)
    ratios = {name: graph_ratio(macs_t, macs_s, name) for name in n["replaced"]}
    t = Table(title="depthwise-separable rewrite of the ResNet-style teacher (per replaced conv; MACs counted from "
                    "the exported ONNX graphs)", title_justify="left")
    for c in ("conv", "Cin→Cout", "k", "out H×W", "predicted MACs ratio", "ONNX graph MACs ratio"):
        t.add_column(c, justify="left" if c == "conv" else "right")
    for name, r in n["replaced"].items():
        t.add_row(name, f"{r['in']}→{r['out']}", "×".join(map(str, r["kernel"])), "×".join(map(str, r["output_hw"])),
                  f"{r['predicted_ratio']:.3f}", "–" if ratios[name] is None else f"{ratios[name]:.3f}")
    console.print(t)
    g_t, g_s = sum(macs_t.values()), sum(macs_s.values())
    console.print(f"  whole model MACs (ONNX graphs) {g_t:,} → {g_s:,} ({g_t / max(1, g_s):.2f}×), "
                  f"params {n['params_before']:,} → {n['params_after']:,}; test top-1 {100 * acc_t:.2f}% → "
                  f"{100 * acc_s:.2f}% after {n['fit']['epochs']} epochs of distillation "
                  f"(validation {100 * n['score_before_recovery']:.1f}% before recovery)")
    report["depthwise"] = {**{k: v for k, v in n.items() if k != "fit"}, "test_teacher": acc_t, "test_rewritten": acc_s,
                           "onnx_graph_macs": {"teacher": g_t, "rewritten": g_s}, "onnx_graph_ratios": ratios}
    return depthwise_claims(n["replaced"], ratios, 100 * (acc_t - acc_s))


def count_heads(module: Any, head_dim: int) -> int:
    """Attention heads of a torch model, counted from the width of its attention blocks' query projections."""
    from edgeopt.passes.compress.prune_heads import find_attention

    units, _ = find_attention(module)
    return sum(u.q.out_features // head_dim for u in units)


def heads_claims(rows: dict[str, dict[str, Any]], heads: dict[str, int]) -> list[Claim]:
    """The pruned model keeps half the heads (counted), is faster, and stays close to the original."""
    h, base, pruned = rows["50% heads pruned + KD"], heads["MiniLM-L6 fp32"], heads["50% heads pruned + KD"]
    return [Claim("heads: the pruned MiniLM keeps half its heads (counted from the model)",
                  base > 0 and pruned in (base // 2, (base + 1) // 2), f"{pruned} of {base}"),
            Claim("heads: 50% pruned MiniLM is faster", h["speedup"] > 1.0, f"{h['speedup']:.2f}×"),
            Claim("heads: mean cosine to the original ≥ 0.9", h["mean_cosine"] >= 0.9, f"{h['mean_cosine']:.4f}")]


def heads(args: Any, console: Any, report: dict[str, Any]) -> list[Claim]:
    from rich.table import Table

    from edgeopt.data import tokenize
    from edgeopt.measure import fidelity, runners
    from edgeopt.passes.base import PassContext, build_pass
    from edgeopt.zoo.minilm import load_minilm, minilm_path
    from edgeopt.zoo.sentences import sentences

    console.print("[bold]heads[/bold]: zoo:minilm with half its heads pruned, and a 3-layer distilled student")
    art = load_minilm(seq_len=128, batch=1)
    train_spec = "zoo:sentences[320:640]"  # never overlaps the held-out sentences [64:320]
    recover = {"epochs": 3, "lr": 5e-5, "batch_size": 16, "patience": 2}
    ctx_h = PassContext(stage_dir=args.out / "heads")
    pruned = build_pass("prune.heads", {"sparsity": 0.5, "data": train_spec, "train": recover})(art, ctx_h)
    ctx_d = PassContext(stage_dir=args.out / "student3")
    student = build_pass("distill", {"student_layers": 3, "layer_map": "pkd-skip", "loss": "cosine", "data": train_spec,
                                     "train": {"epochs": 4, "lr": 1e-4, "batch_size": 16, "patience": 2}})(art, ctx_d)
    onnx = {"MiniLM-L6 fp32": to_onnx(art, args.out / "onnx-minilm"),
            "50% heads pruned + KD": to_onnx(pruned, args.out / "onnx-minilm-heads"),
            "3 layers, PKD-skip + cosine KD": to_onnx(student, args.out / "onnx-minilm-l3")}
    names = ["input_ids", "attention_mask", "token_type_ids"]
    feeds = tokenize(sentences()[64:320], str(minilm_path()), 128, 1, names)
    live = {k: runners.make_runner(a, threads=args.threads, spinning=SPIN) for k, a in onnx.items()}
    ref = [live["MiniLM-L6 fp32"].run(f)[0] for f in feeds]
    fid = {k: fidelity.compare(ref, [r.run(f)[0] for f in feeds]) for k, r in live.items()}
    for r in live.values():
        r.close()
    stats = time_models(onnx, feeds[0], args.threads, max(50, args.runs // 2))
    base = stats["MiniLM-L6 fp32"]
    t = Table(title=f"MiniLM, batch 1, seq 128, ONNX Runtime {args.threads} threads; cosine to fp32 on 256 held-out sentences",
              title_justify="left")
    for c in ("model", "heads", "p50 ms", "speedup (95% CI)", "mean cos", "min cos", "MB"):
        t.add_column(c, justify="left" if c == "model" else "right")
    rows = {}
    from edgeopt.passes.compress.prune_heads import find_attention

    head_dim = find_attention(art.module)[0][0].head_dim
    counted = {k: count_heads(a.module, head_dim) for k, a in zip(onnx, (art, pruned, student))}
    for k, st in stats.items():
        r = paired_speedup(base.samples, st.samples, BLOCK - SETTLE)
        rows[k] = {"p50_ms": st.p50, "speedup": r[0], "speedup_lo": r[1], "speedup_hi": r[2],
                   "mean_cosine": fid[k]["mean_cosine"], "min_cosine": fid[k]["min_cosine"], "bytes": onnx[k].size_bytes}
        t.add_row(k, str(counted[k]), f"{st.p50:.2f}", f"{r[0]:.2f}× ({r[1]:.2f}–{r[2]:.2f})",
                  f"{fid[k]['mean_cosine']:.4f}",
                  f"{fid[k]['min_cosine']:.4f}", f"{onnx[k].size_bytes / 1e6:.1f}")
    console.print(t)
    report["heads"] = {"rows": rows, "prune_heads": {k: v for k, v in ctx_h.notes["prune.heads"].items() if k != "scores"},
                       "distill": ctx_d.notes["distill"], "counted_heads": counted}
    return heads_claims(rows, counted)


def qat(args: Any, console: Any, report: dict[str, Any]) -> list[Claim]:
    from rich.table import Table

    from edgeopt.passes.base import PassContext, build_pass
    from edgeopt.target import get_target
    from edgeopt.zoo.digits import load_split
    from edgeopt.load import load_model

    console.print("[bold]qat[/bold]: quant.qat on zoo:digits-cnn against graph.quantize_static of the same model")
    art = load_model("zoo:digits-cnn")
    ctx = PassContext(stage_dir=args.out / "qat", target=get_target("auto"))
    out = build_pass("quant.qat", {"train": {"epochs": 3, "lr": 2e-4}})(art, ctx)
    n = ctx.notes["quant.qat"]
    from edgeopt.artifact import Artifact

    x, y = load_split("test")
    float_onnx = Artifact.from_onnx(args.out / "qat" / "ptq" / "float" / "model.onnx")
    ptq = Artifact.from_onnx(n["ptq_model"])
    models = {"fp32 (ONNX)": float_onnx, "PTQ static INT8 (QDQ, minmax)": ptq, "QAT INT8 (QDQ)": out}
    acc = {k: onnx_accuracy(a, x, y) for k, a in models.items()}
    stats = time_models(models, {"image": x[:16].copy()}, args.threads, args.runs)
    t = Table(title="QAT vs post-training static INT8 on zoo:digits-cnn (360 test images; batch 16 latency)",
              title_justify="left")
    for c in ("model", "top-1 %", "Δ pts vs fp32", "b16 p50 ms", "KB"):
        t.add_column(c, justify="left" if c == "model" else "right")
    for k, a in models.items():
        t.add_row(k, f"{100 * acc[k]:.2f}", f"{100 * (acc[k] - acc['fp32 (ONNX)']):+.2f}", f"{stats[k].p50:.3f}",
                  f"{a.size_bytes / 1024:.0f}")
    console.print(t)
    report["qat"] = {"accuracy": acc, "b16_p50_ms": {k: s.p50 for k, s in stats.items()},
                     "notes": {k: v for k, v in n.items() if k != "fit"}}
    return [Claim("qat: QAT INT8 within 1 point of fp32", 100 * (acc["fp32 (ONNX)"] - acc["QAT INT8 (QDQ)"]) <= 1.0,
                  f"{100 * (acc['fp32 (ONNX)'] - acc['QAT INT8 (QDQ)']):.2f}")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-cnn"))
    ap.add_argument("--runs", type=int, default=200, help="timed calls per model and batch size")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parts", default="course,magnitude,depthwise,heads,qat")
    ap.add_argument("--no-spin", action="store_true", help="ONNX Runtime threads do not spin between calls")
    args = ap.parse_args()
    global SPIN
    SPIN = not args.no_spin
    warnings.filterwarnings("ignore")

    from rich.console import Console

    from edgeopt.report import claims as C
    from edgeopt.versions import versions

    console = Console(width=None if Console().is_terminal else 200)
    args.out.mkdir(parents=True, exist_ok=True)
    parts = {"course": course, "magnitude": magnitude, "depthwise": depthwise, "heads": heads, "qat": qat}
    report: dict[str, Any] = {"threads": args.threads, "runs": args.runs, "block": BLOCK, "settle": SETTLE,
                              "versions": versions()}
    checks: list[Claim] = []
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in parts]
    if unknown:
        console.print(f"[red]unknown part {unknown[0]!r}; known: {', '.join(parts)}[/red]")
        return 2
    for name in chosen:
        checks += parts[name](args, console, report)
    import os

    load = os.getloadavg()
    console.print(f"machine load average (1/5/15 min) at the end: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} on "
                  f"{os.cpu_count()} cores — other work on the machine widens the speedup intervals")
    report["loadavg"] = load
    report["spinning"] = SPIN
    console.print(C.table(checks))
    report["checks"] = C.to_json(checks)
    (args.out / "benchmark.json").write_text(json.dumps(report, indent=2, default=str))
    console.print(C.summary(checks))
    return C.exit_code(checks)


if __name__ == "__main__":
    raise SystemExit(main())
