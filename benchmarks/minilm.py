"""MiniLM benchmark: edgeopt's best stage against PyTorch eager and ONNX Runtime's own tools, side by side.

Runs the bundled cpu-int8 recipe on zoo:minilm (reusing finished stages), builds the recipe users get
from ONNX Runtime's tools (transformer optimizer, then quantize_dynamic with defaults, and with
per-channel weights), then in ONE process measures all of them interleaved: batch 1, sequence 128,
2 intra-op threads. Fidelity is the cosine of each model's sentence embeddings to PyTorch fp32 over
256 held-out sentences. Prints the table, the speedups with their 95% confidence intervals (paired
bootstrap over rounds) and a check per target; the exit status is 1 when a check does not hold (or the
recipe run fails).

    .venv/bin/python benchmarks/minilm.py [--runs 100] [--out runs/bench-minilm]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from pathlib import Path

from edgeopt.measure.latency import paired_speedup
from edgeopt.report.claims import Claim


def ort_tools_recipe(fp32: Path, out_dir: Path) -> dict[str, Path]:
    """The recipe users get from ONNX Runtime's own tools: transformer optimizer, then quantize_dynamic."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.transformers import optimizer

    from edgeopt.passes.graph.quantize import quiet_root_logger

    out_dir.mkdir(parents=True, exist_ok=True)
    opt = out_dir / "optimized.onnx"
    paths = {"ort-tools int8": out_dir / "int8_default.onnx", "ort-tools int8 per-channel": out_dir / "int8_per_channel.onnx"}
    if all(p.exists() for p in paths.values()):
        return paths
    with quiet_root_logger():
        m = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=12, hidden_size=384, opt_level=0)
        m.save_model_to_file(str(opt))
        # DefaultTensorType: the fused contrib ops defeat the quantizer's shape inference without it
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        quantize_dynamic(str(opt), str(paths["ort-tools int8"]), extra_options=extra)
        quantize_dynamic(str(opt), str(paths["ort-tools int8 per-channel"]), per_channel=True, extra_options=extra)
    return paths


def claims(rows: dict[str, dict], best_key: str, vs_tools: tuple[float, float, float]) -> list[Claim]:
    """The targets, from the table rows (speedups against PyTorch eager fp32) and the speedup of best over
    ORT-tools int8 (`vs_tools`: ratio of medians, low and high end of its 95% CI)."""
    b, tools = rows[best_key], rows["ort-tools int8"]
    fp32_bytes = rows["onnxruntime fp32"]["size_bytes"]
    return [
        Claim("best ≥ 4.5× faster than PyTorch eager fp32", b["speedup"] >= 4.5, f"{b['speedup']:.2f}×"),
        Claim("best mean cosine ≥ 0.995", b["mean_cosine"] >= 0.995, f"{b['mean_cosine']:.4f}"),
        Claim("best min cosine ≥ 0.98", b["min_cosine"] >= 0.98, f"{b['min_cosine']:.4f}"),
        Claim("best at least as fast as ORT tools int8", vs_tools[0] >= 1.0,
              f"{vs_tools[0]:.2f}× ({vs_tools[1]:.2f}–{vs_tools[2]:.2f})"),
        Claim("best more faithful than ORT tools int8", b["mean_cosine"] > tools["mean_cosine"],
              f"{b['mean_cosine']:.4f} vs {tools['mean_cosine']:.4f}"),
        Claim("best file ≤ 30% of the fp32 ONNX file", b["size_bytes"] <= 0.30 * fp32_bytes,
              f"{b['size_bytes'] / fp32_bytes:.1%}"),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("runs/bench-minilm"))
    ap.add_argument("--runs", type=int, default=100, help="timed calls per model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--fresh", action="store_true", help="rerun every recipe stage instead of resuming")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")

    from rich.console import Console
    from rich.table import Table

    from edgeopt.data import tokenize
    from edgeopt.measure import fidelity, latency, runners
    from edgeopt.artifact import Artifact
    from edgeopt.ledger import Ledger
    from edgeopt.pipeline import stage_artifact
    from edgeopt.report import claims as C
    from edgeopt.versions import versions
    from edgeopt.zoo.minilm import load_minilm, minilm_path
    from edgeopt.zoo.sentences import sentences

    console = Console(width=max(Console().width, 110))
    console.print("[bold]1/3[/bold] edgeopt cpu-int8 recipe on zoo:minilm (finished stages reused)")
    # In a child process: runtimes loaded and timed there (OpenVINO's thread pools especially) would
    # otherwise stay in this process and slow down the side-by-side measurement below.
    cmd = [sys.executable, "-m", "edgeopt.cli", "optimize", "zoo:minilm", "-r", "cpu-int8", "-o", str(args.out)]
    if subprocess.run(cmd + ([] if args.fresh else ["--resume"])).returncode != 0:
        return 1
    led = Ledger.load(args.out)
    if led.best is None:
        console.print("[red]no stage passed its gate[/red]")
        return 1
    best_art = stage_artifact(led.stage(led.best))
    fp32_art = stage_artifact(led.stage("onnx"))

    console.print("[bold]2/3[/bold] ONNX Runtime tools recipe (transformer optimizer + quantize_dynamic)")
    tools = {k: Artifact.from_onnx(p) for k, p in ort_tools_recipe(fp32_art.path, args.out / "ort-tools").items()}

    console.print("[bold]3/3[/bold] fidelity on 256 held-out sentences, then latency interleaved in one process")
    names = ["input_ids", "attention_mask", "token_type_ids"]
    feeds = tokenize(sentences()[64:320], str(minilm_path()), 128, 1, names)
    torch_art = load_minilm(seq_len=128, batch=1)
    candidates = {"pytorch eager fp32": torch_art, "onnxruntime fp32": fp32_art, **tools,
                  f"edgeopt best ({led.best})": best_art}
    live = {k: runners.make_runner(v, threads=args.threads, spinning=True) for k, v in candidates.items()}
    ref = [live["pytorch eager fp32"].run(f)[0] for f in feeds]
    fid = {k: fidelity.compare(ref, [r.run(f)[0] for f in feeds]) for k, r in live.items()}
    block, settle = 5, 1
    stats = latency.measure_interleaved(live, feeds[0], warmup=3, runs=args.runs, block=block, settle=settle,
                                        pause_s=0.05)
    sizes = {k: v.size_bytes for k, v in candidates.items()}

    base = stats["pytorch eager fp32"]
    t = Table(title=f"all-MiniLM-L6-v2, batch 1, seq 128, {args.threads} threads, {base.n} timed calls each, interleaved",
              title_justify="left")
    for c in ("model", "p50 ms", "p90 ms", "speedup vs torch (95% CI)", "mean cos", "min cos", "size MB"):
        t.add_column(c, justify="left" if c == "model" else "right")
    rows = {}
    for k, st in stats.items():
        sp, lo, hi = paired_speedup(base.samples, st.samples, block - settle)
        rows[k] = {"p50": st.p50, "p90": st.p90, "speedup": sp, "speedup_lo": lo, "speedup_hi": hi,
                   "mean_cosine": fid[k]["mean_cosine"], "min_cosine": fid[k]["min_cosine"], "size_bytes": sizes[k]}
        t.add_row(k, f"{st.p50:.2f}", f"{st.p90:.2f}", f"{sp:.2f}× ({lo:.2f}–{hi:.2f})",
                  f"{fid[k]['mean_cosine']:.4f}", f"{fid[k]['min_cosine']:.4f}", f"{sizes[k] / 1e6:.1f}")
    console.print(t)

    best_key = f"edgeopt best ({led.best})"
    faster_than_tools = paired_speedup(stats["ort-tools int8"].samples, stats[best_key].samples, block - settle)
    checks = claims(rows, best_key, faster_than_tools)
    console.print(C.table(checks))
    md = ["| model | p50 ms | p90 ms | speedup vs torch (95% CI) | mean cos | min cos | size MB |",
          "|---|---|---|---|---|---|---|"]
    md += [f"| {k} | {r['p50']:.2f} | {r['p90']:.2f} | {r['speedup']:.2f}× ({r['speedup_lo']:.2f}–{r['speedup_hi']:.2f}) "
           f"| {r['mean_cosine']:.4f} | {r['min_cosine']:.4f} | {r['size_bytes'] / 1e6:.1f} |" for k, r in rows.items()]
    md += ["", C.markdown(checks)]
    (args.out / "benchmark.md").write_text("\n".join(md) + "\n")
    (args.out / "benchmark.json").write_text(json.dumps(
        {"rows": rows, "checks": C.to_json(checks),
         "versions": versions(), "threads": args.threads, "block": block, "settle": settle,
         "environment": led.environment}, indent=2))
    console.print(C.summary(checks))
    return C.exit_code(checks)


if __name__ == "__main__":
    raise SystemExit(main())
