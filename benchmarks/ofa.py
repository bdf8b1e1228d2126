"""Building blocks and once-for-all benchmark (issue 15): part `nn` (the `edgeopt.nn` checks) and part `digits` (a
once-for-all supernet on zoo:digits, subnets for three latency budgets).

Prints the CPU flags, then, in one process:
- `nn`: `compute_flops_reduction(64, 128, 3, 56)` against the Conv MACs / FLOPs counted (`edgeopt.analyze.flops`)
  in the exported ONNX graphs of a dense 3×3 Conv2d and a `DepthwiseSeparableConv2d` at 56×56; then
  `AttentionHeadPruner` at sparsity 0.3 on a 48-head self-attention block (`nn.MultiheadAttention(768, 48)`
  + residual + LayerNorm, batch 1, `--seq` tokens): heads left, ONNX file sizes, and ONNX Runtime latency of
  the original and the pruned graph timed interleaved (`--threads`, blocks of 5 calls, the first untimed),
  with a paired bootstrap interval; the pruned graph's outputs equal the original's with the removed heads
  masked.
- `digits`: a MobileNetV3-style `OFANet` (depths 1-3, kernels 3/5/7, expansions 3/4/6, resolutions 24/28/32) trained
  on the zoo:digits train split by progressive shrinking (`--epochs`, resumable under `--out`); a latency table
  of its parts on ONNX Runtime (`--threads`); `--samples` random subnets' validation accuracy (BatchNorm
  recalibrated per subnet) fit the accuracy predictor (held-out rank correlation); whole subnets measured against
  the table's prediction (median absolute % error) beside the FLOPs proxy's rank correlation with latency; then
  the most accurate subnet (predicted) under three latency budgets, each also searched with FLOPs as the cost
  (same MACs budget), and each trained from scratch for an equal share of the supernet's CPU time. Test-split
  accuracy and measured latency (interleaved) for every model.
- `runtimes`: the same supernet's latency table on each of `--runtimes` (ONNX Runtime, OpenVINO, LiteRT/XNNPACK;
  the LiteRT table converts every part with litert-torch, ~10 min, reused by later runs), each against the same 22
  whole subnets timed in the same session as the parts (median absolute % error of the raw sum of parts and of the
  table calibrated on 8 other subnets timed there too, rank correlation) beside the FLOPs proxy's rank
  correlation; and at the
  middle budget the subnet the table picks against the one FLOPs picks (same MACs), both measured there.
The exit status is 1 when a check does not hold.

    .venv/bin/python benchmarks/ofa.py [--parts nn,digits,runtimes] [--runtimes onnxruntime,openvino,litert] [--threads 2] [--runs 200] [--seq 128] [--epochs 40]
        [--samples 60] [--out runs/bench-ofa] [--json out.json]
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

PARTS = ("nn", "digits", "runtimes")
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


def _scratch(arch: Any, fit_data: Any, seconds: float, seed: int) -> tuple[Any, int]:
    """`arch` re-initialised and trained on the labels one epoch at a time until `seconds` of CPU time are spent."""
    import torch

    from edgeopt.train import TrainConfig, fit

    torch.manual_seed(seed)
    for m in arch.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    t0, epochs = time.process_time(), 0
    while time.process_time() - t0 < seconds:
        fit(arch, fit_data, TrainConfig(epochs=1, lr=3e-3, schedule="constant", seed=seed + epochs,
                                        augment_shift=0.1, weight_decay=1e-5), progress=False)
        epochs += 1
    return arch.eval(), epochs


def _digits_supernet(args: argparse.Namespace, console: Any) -> tuple[Any, ...]:
    """The digits supernet trained by progressive shrinking under --out (resumed: trained once for every part), its
    search space, the fit / validation / test data and the phases' records."""
    import torch

    from edgeopt.nn import ofa
    from edgeopt.train import TensorData
    from edgeopt.zoo.digits import load_split

    out = Path(args.out) / "digits"
    xtr, ytr = (a.copy() for a in load_split("train"))
    xte, yte = (a.copy() for a in load_split("test"))
    data = TensorData((torch.from_numpy(xtr),), torch.from_numpy(ytr))
    fit_data, val = data.split(0.2, seed=0)
    test = TensorData((torch.from_numpy(xte),), torch.from_numpy(yte))
    cfg = ofa.OFAConfig(stem_stride=2)  # the digits are 8×8 upscaled: the stem halves 32×32 at no accuracy cost
    torch.manual_seed(0)
    net = ofa.OFANet(cfg)
    schedule = ofa.create_progressive_shrinking_schedule(cfg, args.epochs)
    t0 = time.process_time()
    done = ofa.train_progressive(net, fit_data, schedule, lr=3e-3, batch_size=64, checkpoint=out / "supernet",
                                 progress=True, augment_shift=0.1)
    console.print(f"supernet: {len(done)} phases, {args.epochs} epochs, {sum(d['seconds'] for d in done):.0f} s "
                  f"wall, {sum(d['cpu_seconds'] for d in done):.0f} s CPU (this call "
                  f"{time.process_time() - t0:.0f} s CPU)")
    return cfg, net, fit_data, val, test, done


def runtimes_part(args: argparse.Namespace, claims: list[Claim], console: Any) -> dict[str, Any]:
    """The digits supernet's latency table on each runtime (ONNX Runtime, OpenVINO, LiteRT/XNNPACK) against the same
    22 whole subnets measured on that runtime, beside the FLOPs proxy; and at the middle budget, the subnet the
    table picks against the one FLOPs picks, both measured on that runtime."""
    import numpy as np
    from rich.table import Table
    from scipy.stats import spearmanr

    from edgeopt.measure.latency_table import RUNTIMES, LatencyTable, measure_subnets
    from edgeopt.nn import ofa

    out = Path(args.out) / "runtimes"
    cfg, net, fit_data, val, _, _ = _digits_supernet(args, console)
    ex = ofa.OFASubNetworkExtractor(net)
    subs = [ex.sample_smallest(), ex.sample_largest()] + [ex.sample_random(seed=i) for i in range(20)]
    flops = [ex.get_complexity(s)["flops"] for s in subs]
    accs = [ofa.evaluate_subnet(net, s, val, calibration=fit_data) for s in subs]
    pred = ofa.AccuracyPredictor(cfg).fit(subs, accs)
    t = Table(title=f"latency tables per runtime: 22 subnets of the digits supernet, {args.threads} threads, batch 1",
              title_justify="left")
    for c in ("runtime", "table s", "median |error| % raw → calibrated", "Spearman table", "Spearman FLOPs", "largest / smallest ms",
              "mid budget: table pick ms", "FLOPs pick ms"):
        t.add_column(c, justify="left" if c == "runtime" else "right")
    res: dict[str, Any] = {}
    for rt in args.runtimes.split(","):
        if rt not in RUNTIMES:
            raise SystemExit(f"error: unknown runtime {rt!r}; known: {', '.join(RUNTIMES)}")
        t0 = time.perf_counter()
        # the parts, 8 calibration subnets (seeds 10000+) and the 22 probe subnets timed in ONE session: the error
        # is the table's, not the machine's drift between sessions
        table = LatencyTable.build(net, out / f"parts-{rt}", threads=args.threads, runs=30, runtime=rt, calibrate=8,
                                   probe=subs)
        built_s = time.perf_counter() - t0
        table.save(out / f"table-{rt}-{args.threads}t.json")
        measured = table.probe_ms
        raw_err = float(np.median([abs(table.raw_predict(net, s) - m) / m * 100 for s, m in zip(subs, measured)]))
        predicted = [table.predict(net, s) for s in subs]
        err = float(np.median([abs(p - m) / m * 100 for p, m in zip(predicted, measured)]))
        rho_t = float(spearmanr(predicted, measured).statistic)
        rho_f = float(spearmanr(flops, measured).statistic)
        lo, hi = predicted[0], predicted[1]
        budget = lo + 0.45 * (hi - lo)
        by_t = ofa.search_subnet(cfg, lambda s: pred.predict([s])[0], lambda s: table.predict(net, s), budget,
                                 trials=300, seed=0)["subnet"]
        macs = ex.get_complexity(by_t)["macs"]
        by_f = ofa.search_subnet(cfg, lambda s: pred.predict([s])[0], lambda s: ex.get_complexity(s)["macs"], macs,
                                 trials=300, seed=0)["subnet"]
        pick_t, pick_f = measure_subnets(ex, [by_t, by_f], out / f"picks-{rt}", threads=args.threads,
                                         runs=args.runs, runtime=rt)
        res[rt] = {"table_seconds": built_s, "entries": len(table.entries), "error_pct": err, "raw_error_pct": raw_err,
                   "scale": table.scale, "overhead_ms": table.overhead_ms, "spearman_table": rho_t,
                   "spearman_flops": rho_f, "largest_ms": measured[1], "smallest_ms": measured[0],
                   "budget_ms": budget, "table_pick": {"subnet": by_t.to_dict(), "ms": pick_t},
                   "flops_pick": {"subnet": by_f.to_dict(), "ms": pick_f}}
        t.add_row(rt, f"{built_s:.0f}", f"{raw_err:.1f} → {err:.1f}", f"{rho_t:.3f}", f"{rho_f:.3f}",
                  f"{measured[1]:.3f} / {measured[0]:.3f}", f"{pick_t:.3f} (budget {budget:.3f})", f"{pick_f:.3f}")
        claims.append(Claim(f"{rt}: the latency table ranks the 22 measured subnets at least as well as FLOPs",
                            rho_t >= rho_f, f"Spearman {rho_t:.3f} vs FLOPs {rho_f:.3f}; median |error| {err:.1f} % "
                            f"calibrated (scale {table.scale:.3f}, overhead {table.overhead_ms:.4f} ms per part), "
                            f"{raw_err:.1f} % raw"))
        claims.append(statement(f"{rt}: at the middle budget ({budget:.3f} ms) the table's pick and FLOPs' pick "
                                "(same MACs budget)", f"table pick r{by_t.r} d{list(by_t.d)} {pick_t:.3f} ms "
                                f"({'over' if pick_t > budget else 'within'}); FLOPs pick r{by_f.r} d{list(by_f.d)} "
                                f"{pick_f:.3f} ms ({'over' if pick_f > budget else 'within'})"))
    console.print(t)
    return res


def digits_part(args: argparse.Namespace, claims: list[Claim], console: Any) -> dict[str, Any]:
    import numpy as np
    import torch
    from rich.table import Table
    from scipy.stats import spearmanr

    from edgeopt.measure.latency_table import LatencyTable, measure_subnets
    from edgeopt.nn import ofa
    from edgeopt.train import evaluate

    out = Path(args.out) / "digits"
    cfg, net, fit_data, val, test, done = _digits_supernet(args, console)
    train_cpu = sum(d["cpu_seconds"] for d in done)  # recorded per phase, so a resumed run knows it too
    ex = ofa.OFASubNetworkExtractor(net)

    def acc(sub: Any, on: Any) -> float:
        return ofa.evaluate_subnet(net, sub, on, calibration=fit_data)

    table = LatencyTable.build(net, out / "table", threads=args.threads, runs=30)
    table.save(out / "latency_table.json")
    subs = [ex.sample_smallest(), ex.sample_largest()] + [ex.sample_random(seed=i) for i in range(args.samples)]
    val_acc = [acc(s, val) for s in subs]
    n_fit = int(len(subs) * 0.75)
    pred = ofa.AccuracyPredictor(cfg).fit(subs[:n_fit], val_acc[:n_fit])
    pscore = pred.score(subs[n_fit:], val_acc[n_fit:])
    # the latency table against whole subnets, and FLOPs as a latency proxy
    probe = subs[:2] + subs[2:22]
    measured = measure_subnets(ex, probe, out / "probe", threads=args.threads, runs=30)
    predicted = [table.predict(net, s) for s in probe]
    flops = [ex.get_complexity(s)["flops"] for s in probe]
    err = float(np.median([abs(p - m) / m * 100 for p, m in zip(predicted, measured)]))
    rho_table = float(spearmanr(predicted, measured).statistic)
    rho_flops = float(spearmanr(flops, measured).statistic)
    # three budgets between the smallest and largest subnet's predicted latency
    lo, hi = table.predict(net, subs[0]), table.predict(net, subs[1])
    budgets = [lo + f * (hi - lo) for f in (0.2, 0.45, 0.7)]
    picks = []
    for b in budgets:
        by_lat = ofa.search_subnet(cfg, lambda s: pred.predict([s])[0], lambda s: table.predict(net, s), b,
                                   trials=300, seed=0)
        macs_budget = ex.get_complexity(by_lat["subnet"])["macs"]
        by_flops = ofa.search_subnet(cfg, lambda s: pred.predict([s])[0], lambda s: ex.get_complexity(s)["macs"],
                                     macs_budget, trials=300, seed=0)
        picks.append((b, by_lat, by_flops))
    models = {"largest": subs[1], "smallest": subs[0]}
    for i, (b, by_lat, by_flops) in enumerate(picks):
        models[f"budget {b:.3f} ms"] = by_lat["subnet"]
        models[f"budget {b:.3f} ms (FLOPs search)"] = by_flops["subnet"]
    lat = dict(zip(models, measure_subnets(ex, list(models.values()), out / "final", threads=args.threads,
                                            runs=args.runs)))
    test_acc = {k: acc(s, test) for k, s in models.items()}
    scratch = {}
    share = train_cpu / len(picks)
    for i, (b, by_lat, _) in enumerate(picks):
        arch, epochs = _scratch(ex.extract(by_lat["subnet"]).train(), fit_data, share, seed=i)
        scratch[f"budget {b:.3f} ms"] = (float(evaluate(arch, test)), epochs)
    t = Table(title=f"once-for-all on zoo:digits (test split, {len(test)} images); ONNX Runtime {args.threads} threads, "
                    "batch 1, interleaved", title_justify="left")
    for c in ("model", "subnet", "MACs", "predicted ms", "measured ms", "test acc %", "from scratch % (epochs)"):
        t.add_column(c, justify="left" if c in ("model", "subnet") else "right")
    rows = {}
    for k, s in models.items():
        c = ex.get_complexity(s)
        sc = scratch.get(k)
        rows[k] = {"subnet": s.to_dict(), "macs": c["macs"], "params": c["params"], "predicted_ms": table.predict(net, s),
                   "measured_ms": lat[k], "test_accuracy": test_acc[k], "scratch": sc}
        t.add_row(k, f"r{s.r} d{list(s.d)}", f"{c['macs'] / 1e6:.2f}M", f"{rows[k]['predicted_ms']:.3f}",
                  f"{lat[k]:.3f}", f"{100 * test_acc[k]:.2f}", f"{100 * sc[0]:.2f} ({sc[1]})" if sc else "-")
    console.print(t)
    full = test_acc["largest"]
    for b, by_lat, by_flops in picks:
        k = f"budget {b:.3f} ms"
        a, sc = test_acc[k], scratch[k][0]
        claims.append(Claim(f"digits, latency budget {b:.3f} ms: the subnet is within 1.5 points of the full "
                            "supernet's accuracy or better than its architecture trained from scratch for an equal "
                            "share of the supernet's CPU time", a >= full - 0.015 or a > sc,
                            f"{100 * a:.2f} % vs full {100 * full:.2f} %, scratch {100 * sc:.2f} %; measured "
                            f"{lat[k]:.3f} ms (budget {b:.3f})"))
        kf = f"{k} (FLOPs search)"
        claims.append(statement(f"digits, budget {b:.3f} ms, FLOPs as the cost (same MACs)",
                                f"picked r{by_flops['subnet'].r} d{list(by_flops['subnet'].d)}, measured "
                                f"{lat[kf]:.3f} ms ({'over' if lat[kf] > b else 'within'} the budget), test "
                                f"{100 * test_acc[kf]:.2f} % vs the latency search's {100 * test_acc[k]:.2f} %"))
    fastest = min((f"budget {b:.3f} ms" for b, _, _ in picks), key=lambda k: lat[k])
    claims.append(Claim("digits: the fastest budget subnet is >= 3x faster than the largest subnet (ONNX Runtime)",
                        lat["largest"] / lat[fastest] >= 3.0,
                        f"{lat['largest']:.3f} ms / {lat[fastest]:.3f} ms = {lat['largest'] / lat[fastest]:.2f}x"))
    claims.append(statement("latency table vs measured whole subnets (22 subnets)",
                            f"median absolute error {err:.1f} %; rank correlation {rho_table:.3f}; FLOPs proxy's rank "
                            f"correlation with measured latency {rho_flops:.3f}"))
    claims.append(statement("accuracy predictor on held-out subnets",
                            f"{len(subs) - n_fit} subnets: RMSE {100 * pscore['rmse']:.2f} points, Spearman "
                            f"{pscore['spearman']:.3f}"))
    return {"phases": done, "train_cpu_s": train_cpu, "table_error_pct": err, "spearman_table": rho_table,
            "spearman_flops": rho_flops, "predictor": pscore, "rows": rows, "budgets": budgets}


def main(argv: list[str] | None = None) -> int:
    from rich.console import Console

    from edgeopt.report.claims import finish, run_parts

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=40, help="digits: progressive-shrinking epochs in all")
    ap.add_argument("--samples", type=int, default=60, help="digits: random subnets that fit the accuracy predictor")
    ap.add_argument("--runtimes", default="onnxruntime,openvino,litert", help="runtimes: the tables' runtimes")
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
    results, seconds = run_parts((("nn", nn_part), ("digits", digits_part), ("runtimes", runtimes_part)), parts, args,
                                 claims, console)
    return finish(claims, console, cpu=cpu_line(), args=args, results=results, seconds=seconds, load_before=load)


if __name__ == "__main__":
    sys.exit(main())
