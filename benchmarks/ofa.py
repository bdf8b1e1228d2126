"""Building blocks and once-for-all benchmark (issue 15). Built so far: part `nn` (the `edgeopt.nn` checks).

Prints the CPU flags, then, in one process:
- `nn`: `compute_flops_reduction(64, 128, 3, 56)` against the Conv MACs / FLOPs counted (`edgeopt.analyze.flops`)
  in the exported ONNX graphs of a dense 3×3 Conv2d and a `DepthwiseSeparableConv2d` at 56×56; then
  `AttentionHeadPruner` at sparsity 0.3 on a 48-head self-attention block (`nn.MultiheadAttention(768, 48)`
  + residual + LayerNorm, batch 1, `--seq` tokens): heads left, ONNX file sizes, and ONNX Runtime latency of
  the original and the pruned graph timed interleaved (`--threads`, blocks of 5 calls, the first untimed),
  with a paired bootstrap interval; the pruned graph's outputs equal the original's with the removed heads
  masked.
The once-for-all parts (supernet training, latency table, subnet search on zoo:digits) are not built yet.
The exit status is 1 when a check does not hold.

    .venv/bin/python benchmarks/ofa.py [--parts nn] [--threads 2] [--runs 200] [--seq 128] [--out runs/bench-ofa]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any

from edgeopt.report.claims import Claim, statement

PARTS = ("nn",)
BLOCK, SETTLE = 5, 1


def cpu_line() -> str:
    from edgeopt.target import detect_target

    t = detect_target()
    return f"{t.cpu_model}; {t.cores} cores; flags: {' '.join(t.isa)}"


def _export(module: Any, args: tuple[Any, ...], path: Path, names: list[str]) -> Path:
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    # not under inference_mode / no_grad: nn.MultiheadAttention would take its fused fast path, which has no
    # ONNX export
    torch.onnx.export(module.eval(), args, str(path), input_names=names, opset_version=17, dynamo=False)
    return path


def _conv_counts(path: Path) -> tuple[int, int]:
    import onnx

    from edgeopt.analyze.flops import count_flops, prepare

    p = prepare(onnx.load(str(path)))
    nodes = [n for n in count_flops(p["model"], p["shapes"])["nodes"] if n["op_type"] == "Conv"]
    return sum(n["macs"] for n in nodes), sum(n["flops"] for n in nodes)


def nn_part(args: argparse.Namespace, claims: list[Claim], console: Any) -> dict[str, Any]:
    import numpy as np
    import torch
    from torch import nn

    from edgeopt.artifact import Artifact
    from edgeopt.measure import latency, runners
    from edgeopt.measure.latency import paired_speedup
    from edgeopt.nn import AttentionHeadPruner, DepthwiseSeparableConv2d, PruningConfig, compute_flops_reduction

    out = Path(args.out)
    res: dict[str, Any] = {}
    # 1. depthwise-separable saving, predicted and counted in the graphs
    pred = compute_flops_reduction(64, 128, 3, 56)
    x = torch.randn(1, 64, 56, 56)
    dense = _conv_counts(_export(nn.Conv2d(64, 128, 3, padding=1, bias=False), (x,), out / "dense.onnx", ["x"]))
    sep = _conv_counts(_export(DepthwiseSeparableConv2d(64, 128, 3), (x,), out / "separable.onnx", ["x"]))
    counted = dense[0] / sep[0]
    res["flops_reduction"] = {"predicted": pred, "graph_macs": {"dense": dense[0], "separable": sep[0]},
                              "graph_flops": {"dense": dense[1], "separable": sep[1]}}
    claims.append(Claim("compute_flops_reduction(64, 128, 3, 56) reports about 8.4x and equals the MACs ratio "
                        "counted in the exported graphs", round(pred["reduction_ratio"], 1) == 8.4
                        and dense[0] == pred["dense_macs"] and sep[0] == pred["separable_macs"],
                        f"predicted {pred['reduction_ratio']:.3f}x; graphs {dense[0]:,} / {sep[0]:,} MACs = "
                        f"{counted:.3f}x; FLOPs {dense[1]:,} / {sep[1]:,} (the separable graph's folded BatchNorm "
                        "biases add one FLOP per output)"))

    # 2. head pruning of a 48-head block: heads, size, speed
    class SelfAttention(nn.Module):
        def __init__(self, dim: int = 768, heads: int = 48):
            super().__init__()
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.norm = nn.LayerNorm(dim)

        def forward(self, h):
            return self.norm(h + self.attn(h, h, h, need_weights=False)[0])

    torch.manual_seed(0)
    model = SelfAttention().eval()
    original = copy.deepcopy(model)
    data = torch.randn(32, args.seq, 768)
    pruner = AttentionHeadPruner(model, PruningConfig(sparsity=0.3, use_gradients=False))
    pruner.prune(data)
    stats = pruner.get_stats()
    feed_x = data[:1]
    paths = {"48 heads": _export(original, (feed_x,), out / "heads48.onnx", ["h"]),
             f"{stats['active_heads']} heads": _export(model, (feed_x,), out / "pruned.onnx", ["h"])}
    arts = {k: Artifact.from_onnx(p) for k, p in paths.items()}
    live = {k: runners.make_runner(a, threads=args.threads, spinning=True) for k, a in arts.items()}
    try:
        feed = {"h": feed_x.numpy()}
        outs = {k: r.run(feed)[0] for k, r in live.items()}
        lat = latency.measure_interleaved(live, feed, warmup=20, runs=args.runs, block=BLOCK, settle=SETTLE,
                                          pause_s=0.05)
    finally:
        for r in live.values():
            r.close()
    with torch.no_grad():
        ref_pruned = model(feed_x).numpy()
    base, pruned = list(paths)
    sp = paired_speedup(lat[base].samples, lat[pruned].samples, BLOCK - SETTLE)
    sizes = {k: p.stat().st_size for k, p in paths.items()}
    res["heads"] = {"stats": stats, "p50_ms": {k: lat[k].p50 for k in lat}, "speedup": list(sp), "bytes": sizes,
                    "max_abs_vs_torch": float(np.abs(outs[pruned] - ref_pruned).max())}
    console.print(f"48-head self-attention, seq {args.seq}: {base} {lat[base].p50:.2f} ms, {pruned} "
                  f"{lat[pruned].p50:.2f} ms ({sp[0]:.2f}x, 95% {sp[1]:.2f}-{sp[2]:.2f}); "
                  f"{sizes[base] / 1e6:.2f} MB -> {sizes[pruned] / 1e6:.2f} MB")
    claims.append(Claim("AttentionHeadPruner at sparsity 0.3 on a 48-head model leaves 34 heads",
                        stats["total_heads"] == 48 and stats["active_heads"] == 34,
                        f"{stats['total_heads']} -> {stats['active_heads']} heads ({stats['importance']} importance)"))
    claims.append(Claim("the pruned model's exported graph is smaller", sizes[pruned] < sizes[base],
                        f"{sizes[base] / 1e6:.2f} MB -> {sizes[pruned] / 1e6:.2f} MB "
                        f"({sizes[pruned] / sizes[base]:.2f}x)"))
    claims.append(Claim("the pruned model's exported graph is faster (ONNX Runtime, interleaved; the 95% interval "
                        "above 1)", sp[1] > 1.0,
                        f"p50 {lat[base].p50:.2f} -> {lat[pruned].p50:.2f} ms, {sp[0]:.2f}x (95% {sp[1]:.2f}-"
                        f"{sp[2]:.2f}), {args.threads} threads, seq {args.seq}"))
    claims.append(statement("pruned ONNX graph vs pruned PyTorch model", f"max abs difference "
                            f"{res['heads']['max_abs_vs_torch']:.1e}"))
    return res


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from edgeopt.report.claims import finish

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--out", default="runs/bench-ofa")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        print(f"error: unknown part(s) {', '.join(unknown)}; known: {', '.join(PARTS)}", file=sys.stderr)
        return 2
    console = Console()
    console.print(f"CPU: {cpu_line()}")
    load = os.getloadavg()[0]
    claims: list[Claim] = []
    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for part, fn in (("nn", nn_part),):
        if part in parts:
            t0 = time.perf_counter()
            results[part] = fn(args, claims, console)
            seconds[part] = time.perf_counter() - t0
    return finish(claims, console, cpu=cpu_line(), args=args, results=results, seconds=seconds, load_before=load)


if __name__ == "__main__":
    sys.exit(main())
