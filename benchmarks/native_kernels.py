"""Native C++ kernels against the untouched PyTorch path at Stable Diffusion 512 px shapes (64×64 latents), fp32.

Prints the CPU flags, how the native library was obtained (compiled in this run or found cached, the compile
seconds, the code path: AVX2+FMA or scalar), then three cases, each timed interleaved in one process
(`edgeopt.measure.latency.measure_interleaved`, rotated order, p50 over `--runs` rounds) with the paired
speedup against the untouched path (90 % bootstrap interval over rounds), the process CPU time of the same
calls (all threads together; on a shared machine it moves far less than wall time, which waits for the
cores), the norm-wise relative error against a float64 reference and the peak bytes of intermediates:
1. GroupNorm(32 groups) + SiLU on (1, 320, 64, 64): F.group_norm then F.silu (untouched), the "eager" fused
   module (in-place SiLU), the native kernel (AVX2 path and forced scalar path);
2. self-attention, 4096 tokens × 8 heads × 40 dims (SD-1.4's top level): naive softmax (untouched), SDPA,
   the Python partial_softmax and flash, the native partial_softmax and flash;
3. cross-attention, 4096 queries × 77 keys, same heads;
4. Winograd F(4×4, 3×3) at the SD UNet's 3×3 convolutions (C_in = C_out = 320 at 64×64, 640 at 32×32, 1280 at
   16×16 and 8×8; padding 1, batch 1), on 1 and 2 threads (`--winograd-threads`): F.conv2d (untouched: oneDNN's
   direct convolution), WinogradConv2d on PyTorch ops, and the native kernel; each shape ends with a verdict
   line, and where the native kernel loses to oneDNN, the reason in numbers (how many weight bytes it streams
   per tile it computes).
Peak intermediate bytes: for PyTorch code, the tensors ATen allocates and does not return, measured op by op
(SDPA's internal workspace is invisible to that, shown as "internal"); for the native kernels, the scratch the
kernel reports allocating (all threads' buffers), checked against `native.attention_workspace_bytes`.
`--sweep` first times the native kernels over a grid of (q_block, k_block) at the self-attention shape and
uses the fastest pair for the table. Timing claims belong here, never in tests; on a shared machine the
1-minute load average printed at the start and the end says how noisy the numbers are.

    .venv/bin/python benchmarks/native_kernels.py [--threads 2] [--runs 10] [--sweep] [--quick] [--json out.json]
        [--cases group_norm,attention,winograd] [--winograd-threads 1,2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any, Callable

SWEEP_Q = (32, 64, 128, 256)
SWEEP_K = (128, 256, 512, 1024)
SD = {"C": 320, "HW": 64, "groups": 32, "heads": 8, "head_dim": 40, "tokens": 4096, "text_tokens": 77}
WINOGRAD_SHAPES = ((320, 64), (640, 32), (1280, 16), (1280, 8))  # (channels in = out, height = width)
CASES = ("group_norm", "attention", "winograd")


def _time(fns: dict[str, Callable[[], Any]], threads: int, runs: int, warmup: int
          ) -> tuple[dict[str, Any], dict[str, float]]:
    """(LatencyStats of each callable, interleaved in one session; median process CPU ms of its timed calls)."""
    import torch

    from edgeopt.kernels.layer_stats import CallRunner
    from edgeopt.measure.latency import measure_interleaved

    cpu: dict[str, list[float]] = {k: [] for k in fns}

    def with_cpu_time(name: str, fn: Callable[[], Any]) -> Callable[[], Any]:
        def call() -> Any:
            start = time.process_time()
            out = fn()
            cpu[name].append((time.process_time() - start) * 1e3)
            return out
        return call

    torch.set_num_threads(threads)
    with torch.inference_mode():
        stats = measure_interleaved({k: CallRunner(k, with_cpu_time(k, f), threads) for k, f in fns.items()},
                                    feed={}, warmup=warmup, runs=runs)
    return stats, {k: statistics.median(v[warmup:]) for k, v in cpu.items()}  # warm-up calls come first


def _rows(timed: tuple[dict[str, Any], dict[str, float]], base: str, errors: dict[str, float],
          peaks: dict[str, Any]) -> list[dict[str, Any]]:
    from edgeopt.measure.latency import paired_speedup

    stats, cpu = timed
    rows = []
    for name, s in stats.items():
        sp = paired_speedup(stats[base].samples, s.samples, ci=0.9)
        rows.append({"name": name, "p50_ms": s.p50, "p90_ms": s.p90, "speedup": sp.ratio, "speedup_lo": sp.lo,
                     "speedup_hi": sp.hi, "cpu_ms": cpu[name], "cpu_speedup": cpu[base] / cpu[name],
                     "rel_error": errors.get(name), "peak_intermediate_bytes": peaks.get(name)})
    return rows


def _mib(b: Any) -> str:
    return b if isinstance(b, str) else "-" if b is None else f"{b / 2**20:,.2f} MiB"


def _print(console: Any, title: str, rows: list[dict[str, Any]]) -> None:
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for c in ("implementation", "p50 ms", "p90 ms", "speedup vs untouched (90 % CI)", "CPU ms", "CPU-time ratio",
              "rel. error", "peak intermediates"):
        t.add_column(c, justify="left" if c == "implementation" else "right")
    for r in rows:
        err = "-" if r["rel_error"] is None else f"{r['rel_error']:.1e}"
        t.add_row(r["name"], f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}",
                  f"{r['speedup']:.2f}x [{r['speedup_lo']:.2f}, {r['speedup_hi']:.2f}]", f"{r['cpu_ms']:.2f}",
                  f"{r['cpu_speedup']:.2f}x", err, _mib(r["peak_intermediate_bytes"]))
    console.print(t)


def group_norm_case(threads: int, runs: int, warmup: int) -> list[dict[str, Any]]:
    """GroupNorm(32) + SiLU at (1, 320, 64, 64)."""
    import torch
    import torch.nn.functional as F

    from edgeopt.kernels import native
    from edgeopt.kernels.fused_norm import group_norm_act
    from edgeopt.kernels.layer_stats import peak_intermediate_bytes, relative_error

    gen = torch.Generator().manual_seed(0)
    C, HW, G = SD["C"], SD["HW"], SD["groups"]
    x = torch.randn(1, C, HW, HW, generator=gen) * 2 + 0.5  # (1, C, H, W)
    w, b = torch.randn(C, generator=gen), torch.randn(C, generator=gen)  # (C,)
    fns = {
        "F.group_norm + F.silu (untouched)": lambda: F.silu(F.group_norm(x, G, w, b)),
        "eager fused (in-place SiLU)": lambda: group_norm_act(x, G, w, b, 1e-5, "silu"),
        "native (AVX2+FMA)": lambda: native.group_norm_act(x, G, w, b, 1e-5, "silu", scalar=False),
        "native (scalar path)": lambda: native.group_norm_act(x, G, w, b, 1e-5, "silu", scalar=True),
    }
    with torch.inference_mode():
        ref = F.silu(F.group_norm(x.double(), G, w.double(), b.double()))  # (1, C, H, W) float64
        errors = {k: relative_error(f(), ref) for k, f in fns.items()}
        peaks: dict[str, Any] = {}
        for k, f in fns.items():
            peaks[k] = peak_intermediate_bytes(f, keep=(x, w, b))
            if k.startswith("native"):
                peaks[k] = max(peaks[k], native.workspace_bytes())
    return _rows(_time(fns, threads, runs, warmup), "F.group_norm + F.silu (untouched)", errors, peaks)


def _attention_inputs(Tk: int) -> tuple[Any, Any, Any]:
    import torch

    gen = torch.Generator().manual_seed(Tk)
    nh, hs, Tq = SD["heads"], SD["head_dim"], SD["tokens"]
    q = torch.randn(1, nh, Tq, hs, generator=gen)  # (B, nh, Tq, hs)
    k = torch.randn(1, nh, Tk, hs, generator=gen) * 1.5  # (B, nh, Tk, hs)
    v = torch.randn(1, nh, Tk, hs, generator=gen)  # (B, nh, Tk, hv)
    return q, k, v


def attention_case(Tk: int, threads: int, runs: int, warmup: int, blocks: dict[str, int]) -> list[dict[str, Any]]:
    """Attention of 4096 queries over Tk keys, 8 heads of 40, every implementation."""
    import torch

    from edgeopt.kernels import native
    from edgeopt.kernels.attention import attention, measured_peak_intermediate_bytes
    from edgeopt.kernels.layer_stats import relative_error

    q, k, v = _attention_inputs(Tk)
    impls = {"naive softmax (untouched)": "naive", "sdpa": "sdpa", "partial_softmax (Python)": "partial_softmax",
             "flash (Python)": "flash", "partial_softmax_native": "partial_softmax_native",
             "flash_native": "flash_native"}
    fns = {name: (lambda i=impl: attention(q, k, v, impl=i, **blocks)) for name, impl in impls.items()}
    errors: dict[str, float] = {}
    peaks: dict[str, Any] = {}
    with torch.inference_mode():
        ref = torch.cat([attention(q[:, h:h + 1].double(), k[:, h:h + 1].double(), v[:, h:h + 1].double())
                         for h in range(q.shape[1])], dim=1)  # (B, nh, Tq, hv) float64, one head at a time
        for name, impl in impls.items():
            errors[name] = relative_error(fns[name](), ref)
            if impl in native.ATTENTION_IMPLS:
                reported = native.workspace_bytes()  # the scratch of the call just made
                expected = native.attention_workspace_bytes(1, q.shape[1], q.shape[2], Tk, blocks["q_block"],
                                                            blocks["k_block"], torch.get_num_threads())
                if reported != expected:
                    raise SystemExit(f"{impl}: kernel reported {reported} scratch bytes, the formula says {expected}")
                peaks[name] = reported
            elif impl == "sdpa":
                peaks[name] = "internal"
            else:
                peaks[name] = measured_peak_intermediate_bytes(impl, q, k, v, **blocks)
    del ref
    return _rows(_time(fns, threads, runs, warmup), "naive softmax (untouched)", errors, peaks)


def winograd_case(C: int, HW: int, threads: int, runs: int, warmup: int) -> list[dict[str, Any]]:
    """A 3×3 conv, C -> C channels, padding 1, on (1, C, HW, HW): direct, F4 on PyTorch ops, F4 native."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from edgeopt.kernels import native
    from edgeopt.kernels.layer_stats import peak_intermediate_bytes, relative_error
    from edgeopt.kernels.winograd import WinogradConv2d

    torch.manual_seed(C + HW)
    conv = nn.Conv2d(C, C, 3, padding=1).eval()
    x = torch.randn(1, C, HW, HW)  # (1, C, H, W)
    mods = {"F.conv2d, direct (untouched)": conv, "WinogradConv2d F4 (PyTorch ops)": WinogradConv2d(conv, 4),
            "native F4 (AVX2+FMA)": WinogradConv2d(conv, 4, backend="native")}
    fns = {k: (lambda m=m: m(x)) for k, m in mods.items()}
    torch.set_num_threads(threads)
    with torch.inference_mode():
        ref = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)  # (1, C, H, W) float64
        errors = {k: relative_error(f(), ref) for k, f in fns.items()}
        peaks: dict[str, Any] = {}
        for k, f in fns.items():
            peaks[k] = peak_intermediate_bytes(f, keep=(x,))
            if k.startswith("native"):
                expected = native.winograd_workspace_bytes(tuple(x.shape), C, 4, (1, 1, 1, 1), threads)
                if native.workspace_bytes() != expected:
                    raise SystemExit(f"native Winograd: kernel reported {native.workspace_bytes()} scratch bytes, "
                                     f"the formula says {expected}")
                peaks[k] = max(peaks[k], expected)
    del ref
    return _rows(_time(fns, threads, runs, warmup), "F.conv2d, direct (untouched)", errors, peaks)


def winograd_verdict(C: int, HW: int, rows: list[dict[str, Any]]) -> str:
    """One line: how the native F4 kernel compares with oneDNN's direct convolution, and why where it loses."""
    r = {row["name"]: row for row in rows}
    nat = r["native F4 (AVX2+FMA)"]
    tiles = (HW // 4) ** 2
    u_mb, w_mb = 36 * C * C * 4 / 2**20, 9 * C * C * 4 / 2**20
    flops = 2 * 36 * C * C * tiles / 1e9
    line = (f"native F4 vs oneDNN direct: {nat['speedup']:.2f}x by p50 [{nat['speedup_lo']:.2f}, "
            f"{nat['speedup_hi']:.2f}], {nat['cpu_speedup']:.2f}x by CPU time; vs F4 on PyTorch ops "
            f"{r['WinogradConv2d F4 (PyTorch ops)']['p50_ms'] / nat['p50_ms']:.2f}x")
    if nat["speedup"] < 1.0:
        line += (f". Loses because its GEMM streams {u_mb:.0f} MB of transformed weights (4x the {w_mb:.0f} MB "
                 f"3x3 weights) for only {tiles} tiles ({flops:.2f} GFLOP): bound by memory bandwidth, so the "
                 f"2.25x fewer multiplications do not pay")
    return line


def sweep(threads: int, runs: int, warmup: int) -> dict[str, Any]:
    """p50 ms of both native kernels over (q_block, k_block) at the self-attention shape; the fastest pair."""
    from edgeopt.kernels import native

    q, k, v = _attention_inputs(SD["tokens"])
    scale = SD["head_dim"] ** -0.5
    fns = {}
    for qb in SWEEP_Q:
        for kb in SWEEP_K:
            fns[f"flash {qb}/{kb}"] = lambda qb=qb, kb=kb: native.flash_attention(q, k, v, scale, None, qb, kb)
            fns[f"partial {qb}/{kb}"] = lambda qb=qb, kb=kb: native.partial_softmax_attention(q, k, v, scale, None,
                                                                                              qb, kb)
    stats, _ = _time(fns, threads, runs, warmup)
    p50 = {k: s.p50 for k, s in stats.items()}
    total = {(qb, kb): p50[f"flash {qb}/{kb}"] + p50[f"partial {qb}/{kb}"] for qb in SWEEP_Q for kb in SWEEP_K}
    best = min(total, key=total.get)
    return {"p50_ms": p50, "best": {"q_block": best[0], "k_block": best[1]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=10, help="timed rounds per case")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--sweep", action="store_true", help="pick the native block sizes by measurement first")
    ap.add_argument("--quick", action="store_true", help="3 rounds, 1 warm-up (rougher numbers)")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    ap.add_argument("--winograd-threads", default="1,2", help="intra-op threads of the Winograd case, each in turn")
    args = ap.parse_args(argv)
    runs, warmup = (3, 1) if args.quick else (args.runs, args.warmup)
    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        ap.error(f"--cases: unknown {', '.join(unknown)}; known: {', '.join(CASES)}")
    try:
        wthreads = [int(t) for t in args.winograd_threads.split(",")]
    except ValueError:
        ap.error(f"--winograd-threads: expected integers like 1,2, got {args.winograd_threads!r}")
    if any(t < 1 for t in wthreads):
        ap.error("--winograd-threads: each must be >= 1")

    import torch
    from rich.console import Console

    from edgeopt.artifact import write_bytes_atomic
    from edgeopt.kernels import native
    from edgeopt.kernels.attention import DEFAULT_BLOCKS
    from edgeopt.target import detect_target

    console = Console(width=160)
    t = detect_target()
    console.print(f"CPU: {t.cpu_model}; flags: {' '.join(t.isa)}; cores {t.cores}; {args.threads} intra-op threads; "
                  f"torch {torch.__version__}; fp32; 1-min load average {os.getloadavg()[0]:.2f}")
    try:
        native.load()
    except native.NativeUnavailable as e:
        console.print(f"[red]native kernels unavailable:[/red] {e}")
        return 1
    info = native.build_info()
    how = "compiled in this run" if info["compiled"] else "loaded from the cache"
    console.print(f"native library: {how} ({info['seconds']:.1f} s to compile), code path {info['isa']}, "
                  f"{info['path']}")
    out: dict[str, Any] = {"cpu": t.cpu_model, "flags": list(t.isa), "threads": args.threads,
                           "torch": torch.__version__, "native": info, "shapes": SD}
    blocks = dict(DEFAULT_BLOCKS)
    if args.sweep and "attention" in cases:
        out["sweep"] = sw = sweep(args.threads, runs, warmup)
        best = sw["best"]
        console.print("block sweep (p50 ms, flash / partial_softmax native, self-attention): " + "; ".join(
            f"{qb}/{kb}: {sw['p50_ms'][f'flash {qb}/{kb}']:.0f} / {sw['p50_ms'][f'partial {qb}/{kb}']:.0f}"
            for qb in SWEEP_Q for kb in SWEEP_K))
        console.print(f"fastest (sum of both kernels): q_block {best['q_block']}, k_block {best['k_block']}")
        blocks = dict(best)
    out["blocks"] = blocks
    if "group_norm" in cases:
        out["group_norm"] = gn = group_norm_case(args.threads, runs, warmup)
        _print(console, f"GroupNorm({SD['groups']}) + SiLU, (1, {SD['C']}, {SD['HW']}, {SD['HW']})", gn)
    for key, Tk, what in (("self_attention", SD["tokens"], "self-attention"),
                          ("cross_attention", SD["text_tokens"], "cross-attention")):
        if "attention" not in cases:
            break
        out[key] = rows = attention_case(Tk, args.threads, runs, warmup, blocks)
        _print(console, f"{what}: {SD['tokens']} queries × {Tk} keys, {SD['heads']} heads × {SD['head_dim']}, "
                        f"blocks q {blocks['q_block']} / k {blocks['k_block']}", rows)
    if "winograd" in cases:
        out["winograd"] = []
        for threads in wthreads:
            for C, HW in WINOGRAD_SHAPES:
                rows = winograd_case(C, HW, threads, runs, warmup)
                verdict = winograd_verdict(C, HW, rows)
                out["winograd"].append({"C": C, "HW": HW, "threads": threads, "rows": rows, "verdict": verdict})
                _print(console, f"3x3 conv {C} -> {C} channels, (1, {C}, {HW}, {HW}), padding 1, {threads} "
                                f"thread{'s' if threads > 1 else ''}", rows)
                console.print(verdict)
    console.print(f"1-min load average at the end {os.getloadavg()[0]:.2f}")
    if args.json:
        write_bytes_atomic(args.json, json.dumps(out, indent=2, default=str).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
