"""Structural MiniLM: a narrower all-MiniLM-L6-v2 (feed-forward neurons pruned with OBS compensation, optionally
distilled) against the ONNX Runtime fp32 reference, side by side.

Builds the chain of `--variant` (torch passes from edgeopt's registry, on generated sentences that are not the
evaluation slice), exports it like the reference (convert.onnx → graph.simplify → graph.fuse), optionally adds
dynamic INT8, then in ONE process measures all of them interleaved: batch 1, sequence 128, 2 intra-op threads.
Fidelity is the mean cosine of each model's sentence embeddings to PyTorch fp32 over the 256 held-out sentences
zoo:sentences[64:320]. Prints the CPU flags, the table, speedups with 95% intervals (paired bootstrap over
rounds), the CPU time the chain took and its training data, and the checks; exits 1 when the structural model is
not ≥ 1.25× faster than ORT fp32 at mean cosine ≥ 0.99. Finished builds are reused (`--fresh` rebuilds).

    .venv/bin/python benchmarks/structural_minilm.py [--variant ffn50] [--runs 200] [--int8] [--out runs/bench-structural]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from edgeopt.measure.latency import paired_speedup
from edgeopt.report.claims import Claim, statement

TRAIN = "{train}"  # replaced by the generated training sentences (a .txt file in --out)
N_TRAIN = 3000  # generated sentences written for training / calibration: zoo:sentences' generator, indices 640..3639
EVAL = slice(64, 320)  # the held-out slice every MiniLM benchmark scores on (never trained or calibrated on)


def _prune(sparsity: float, sentences: int = 1000) -> tuple[str, dict[str, Any]]:
    """prune.ffn: `sparsity` of the feed-forward neurons, OBS-compensated + residual refit, widths by sensitivity,
    calibrated on the first `sentences` generated sentences."""
    return ("prune.ffn", {"sparsity": sparsity, "data": TRAIN, "limit": sentences, "samples": sentences})


def _distill(epochs: int, limit: int | None = None) -> tuple[str, dict[str, Any]]:
    """distill from the original (output cosine + every layer's hidden states) on `limit` (None: all 3000)
    generated sentences for `epochs`."""
    return ("distill", {"teacher": "zoo:minilm", "data": TRAIN, **({"limit": limit} if limit else {}),
                        "loss": "cosine", "layer_map": "same", "beta": 1.0, "feature_tokens": "all", "dropout": False,
                        "train": {"epochs": epochs, "lr": 5e-5, "batch_size": 16, "weight_decay": 0.0,
                                  "patience": None}})


# The structural family: (pass, config) chains a search space can take as they are (with TRAIN as the data spec).
# Measured on a 2-core AMD EPYC (AVX-512 + VNNI), ORT 1.32, 200 interleaved calls, quiet machine:
#   ffn40          1.25× (1.22–1.27)  cos 0.9932  3.5 CPU-min   (misses the speed bar by a hair)
#   ffn50          1.34× (1.32–1.36)  cos 0.9905  ~4 CPU-min
#   ffn50-distill  1.38× (1.36–1.40)  cos 0.9922  8.4 CPU-min
#   ffn60-distill  1.48× (1.44–1.51)  cos 0.9872  5.0 CPU-min   (misses the fidelity bar)
# and on a 2-core Zen 4 class EPYC (AVX-512, VNNI, bf16), 120 interleaved calls:
#   ffn55-distill  1.42× (1.40–1.44)  cos 0.9908  7.1 CPU-min
#   ffn60-distill2 1.47× (1.42–1.50)  cos 0.9904  11.2 CPU-min
CHAINS: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "ffn50": [_prune(0.5)],  # one-shot: half the neurons, no training
    "ffn40": [_prune(0.4, 512)],  # cheaper and looser: 40% of the neurons, 512 sentences
    "ffn60-distill": [_prune(0.6), _distill(1, 1000)],  # faster: 60%, a short distillation on 1000 sentences
    # 55% / 60% of the neurons, then distillation on all 3000 sentences (1 / 2 epochs): the speed margin the
    # AVX2-only check needs (ffn50 there: 1.24-1.35x), with the fidelity bought back
    "ffn55-distill": [_prune(0.55), _distill(1)],
    "ffn60-distill2": [_prune(0.6), _distill(2)],
    "ffn50-distill": [_prune(0.5), _distill(1)],  # half the neurons, distilled on all 3000 (more fidelity margin)
}
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


def cpu_facts() -> tuple[str, str]:
    """(model name, the flags line) of this CPU, from lscpu (else /proc/cpuinfo)."""
    text = ""
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        pass
    if not text and Path("/proc/cpuinfo").exists():
        text = Path("/proc/cpuinfo").read_text()
    model = flags = ""
    for line in text.splitlines():
        key, _, val = line.partition(":")
        if key.strip().lower() in ("model name",) and not model:
            model = val.strip()
        if key.strip().lower() == "flags" and not flags:
            flags = val.strip()
    return model or platform.processor(), flags


def resolve(chain: list[tuple[str, dict[str, Any]]], train: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(name, {k: (str(train) if v == TRAIN else v) for k, v in cfg.items()}) for name, cfg in chain]


def export(art: Any, folder: Path) -> Any:
    """convert.onnx → graph.simplify → graph.fuse (transformer), as the reference is built."""
    from edgeopt.passes.base import PassContext, build_pass

    for i, (name, cfg) in enumerate((("convert.onnx", {}), ("graph.simplify", {}),
                                     ("graph.fuse", {"rules": "transformer"}))):
        art = build_pass(name, cfg)(art, PassContext(stage_dir=folder / f"{i}-{name}"))
    return art


def build_structural(base: Any, chain: list[tuple[str, dict[str, Any]]], folder: Path, fresh: bool
                     ) -> tuple[Path, dict[str, Any]]:
    """Run the chain's torch passes on `base` and export the result; reuses a finished build of the same chain."""
    from edgeopt.passes.base import PassContext, build_pass

    key = hashlib.sha256(json.dumps(chain, sort_keys=True).encode()).hexdigest()[:12]
    done = folder / "build.json"
    if not fresh and done.exists():
        rec = json.loads(done.read_text())
        if rec.get("key") == key and Path(rec["onnx"]).exists():
            return Path(rec["onnx"]), rec
    steps = []
    art = base
    for i, (name, cfg) in enumerate(chain):
        ctx = PassContext(stage_dir=folder / f"{i}-{name}", progress=None)
        c0, w0 = time.process_time(), time.perf_counter()
        art = build_pass(name, cfg)(art, ctx)
        notes = ctx.notes.get(name, {})
        steps.append({"pass": name, "config": cfg, "cpu_s": round(time.process_time() - c0, 1),
                      "wall_s": round(time.perf_counter() - w0, 1),
                      "notes": {k: notes.get(k) for k in ("widths", "kept", "total", "sensitivity", "samples",
                                                           "calibration_samples", "score_before_recovery", "score",
                                                           "student_score_before", "student_score", "per_layer")
                                if notes.get(k) is not None},
                      "fit": {k: notes["fit"].get(k) for k in ("epochs", "steps", "best_score", "seconds")}
                      if "fit" in notes else None, "warnings": ctx.warnings})
    onnx_art = export(art, folder / "export")
    rec = {"key": key, "onnx": str(onnx_art.path), "steps": steps,
           "cpu_s": round(sum(s["cpu_s"] for s in steps), 1), "wall_s": round(sum(s["wall_s"] for s in steps), 1)}
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=2))
    os.replace(tmp, done)
    return onnx_art.path, rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=sorted(CHAINS), default="ffn50")
    ap.add_argument("--out", type=Path, default=Path("runs/bench-structural"))
    ap.add_argument("--runs", type=int, default=200, help="timed calls per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--int8", action="store_true", help="also time the structural model with dynamic INT8")
    ap.add_argument("--fresh", action="store_true", help="rebuild instead of reusing finished builds")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from rich.console import Console
    from rich.table import Table

    from edgeopt.artifact import Artifact
    from edgeopt.data import tokenize
    from edgeopt.load import load_model
    from edgeopt.measure import fidelity, latency, runners
    from edgeopt.passes.base import PassContext, build_pass
    from edgeopt.report import claims as C
    from edgeopt.versions import versions
    from edgeopt.zoo.minilm import minilm_path
    from edgeopt.zoo.sentences import sentences

    console = Console(width=max(Console().width, 110))
    model_name, flags = cpu_facts()
    console.print(f"CPU: {model_name}, {os.cpu_count()} logical cores")
    console.print(f"Flags: {flags}")
    args.out.mkdir(parents=True, exist_ok=True)
    train = args.out / f"train_sentences_{N_TRAIN}.txt"
    if not train.exists():
        texts = sentences(640 + N_TRAIN)[640:]  # the generator's sentences after the bundled 640: none is in [64:320]
        tmp = train.with_suffix(".tmp")
        tmp.write_text("\n".join(texts) + "\n")
        os.replace(tmp, train)
    chain = resolve(CHAINS[args.variant], train)

    base = load_model("zoo:minilm", seq_len=128, batch=1)
    console.print("[bold]1/3[/bold] reference: ONNX export of the unpruned model, simplified + fused")
    ref_path = args.out / "reference" / "2-graph.fuse" / "model.onnx"
    ref_art = Artifact.from_onnx(ref_path) if ref_path.exists() and not args.fresh else export(base, args.out / "reference")
    console.print(f"[bold]2/3[/bold] structural chain {args.variant}: " + " → ".join(n for n, _ in chain))
    s_path, rec = build_structural(base, chain, args.out / args.variant, args.fresh)
    candidates = {"onnxruntime fp32 (reference)": ref_art, f"structural {args.variant}": Artifact.from_onnx(s_path)}
    if args.int8:
        q = build_pass("graph.quantize_dynamic", {})(candidates[f"structural {args.variant}"],
                                                     PassContext(stage_dir=args.out / args.variant / "int8"))
        candidates[f"structural {args.variant} + int8"] = q

    console.print(f"[bold]3/3[/bold] fidelity on {EVAL.stop - EVAL.start} held-out sentences, then latency interleaved")
    feeds = tokenize(sentences()[EVAL], str(minilm_path()), 128, 1, NAMES)
    torch_ref = runners.make_runner(base, threads=args.threads)
    ref_out = [torch_ref.run(f)[0] for f in feeds]
    torch_ref.close()
    live = {k: runners.make_runner(v, threads=args.threads, spinning=True) for k, v in candidates.items()}
    fid = {k: fidelity.compare(ref_out, [r.run(f)[0] for f in feeds]) for k, r in live.items()}
    block, settle = 5, 1
    stats = latency.measure_interleaved(live, feeds[0], warmup=3, runs=args.runs, block=block, settle=settle,
                                        pause_s=0.05)
    ref_key = "onnxruntime fp32 (reference)"
    t = Table(title=f"all-MiniLM-L6-v2, batch 1, seq 128, {args.threads} threads, {stats[ref_key].n} timed calls each, "
                    "interleaved", title_justify="left")
    for c in ("model", "p50 ms", "p90 ms", "speedup vs ORT fp32 (95% CI)", "mean cos", "min cos", "size MB"):
        t.add_column(c, justify="left" if c == "model" else "right")
    rows = {}
    for k, st in stats.items():
        sp = paired_speedup(stats[ref_key].samples, st.samples, block - settle)
        rows[k] = {"p50": st.p50, "p90": st.p90, "speedup": sp.ratio, "lo": sp.lo, "hi": sp.hi,
                   "mean_cosine": fid[k]["mean_cosine"], "min_cosine": fid[k]["min_cosine"],
                   "size_bytes": candidates[k].size_bytes}
        t.add_row(k, f"{st.p50:.2f}", f"{st.p90:.2f}", f"{sp.ratio:.2f}× ({sp.lo:.2f}–{sp.hi:.2f})",
                  f"{fid[k]['mean_cosine']:.4f}", f"{fid[k]['min_cosine']:.4f}", f"{candidates[k].size_bytes / 1e6:.1f}")
    console.print(t)

    s = rows[f"structural {args.variant}"]
    widths = next((st["notes"].get("widths") for st in rec["steps"] if st["pass"] == "prune.ffn"), None)
    kept = next((f"{st['notes']['kept']}/{st['notes']['total']}" for st in rec["steps"] if st["pass"] == "prune.ffn"), "")
    trained = sum((st["notes"].get("samples") or 0) for st in rec["steps"] if st["pass"] == "distill")
    calib = max((st["notes"].get("calibration_samples") or 0) for st in rec["steps"])
    checks = [
        Claim("structural ≥ 1.25× faster than ORT fp32", s["speedup"] >= 1.25,
              f"{s['speedup']:.2f}× ({s['lo']:.2f}–{s['hi']:.2f})"),
        Claim("structural mean cosine ≥ 0.99", s["mean_cosine"] >= 0.99,
              f"{s['mean_cosine']:.4f} (min {s['min_cosine']:.4f})"),
        statement("what it took", f"FFN neurons kept {kept}, widths {list(widths.values()) if widths else '-'}; heads "
                  f"all 12; calibration {calib} generated sentences; distillation on {trained or 'none'}"),
        statement("CPU time of pruning + distillation",
                  f"{rec['cpu_s'] / 60:.1f} CPU-min ({rec['wall_s'] / 60:.1f} min wall) on {os.cpu_count()} cores"),
    ]
    if args.int8:
        q = rows[f"structural {args.variant} + int8"]
        checks.append(statement("structural + dynamic INT8", f"{q['speedup']:.2f}× ({q['lo']:.2f}–{q['hi']:.2f}), "
                                f"cosine {q['mean_cosine']:.4f}"))
    console.print(C.table(checks))
    (args.out / f"benchmark_{args.variant}.json").write_text(json.dumps(
        {"variant": args.variant, "chain": CHAINS[args.variant], "rows": rows, "build": rec,
         "checks": C.to_json(checks), "cpu": {"model": model_name, "flags": flags, "cores": os.cpu_count()},
         "versions": versions(), "threads": args.threads, "block": block, "settle": settle}, indent=2))
    console.print(C.summary(checks))
    return C.exit_code(checks)


if __name__ == "__main__":
    sys.exit(main())
