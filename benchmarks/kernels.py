"""Kernel benchmark: Winograd counts, errors and speed, attention memory and speed, the UNet table.

Prints, from one run in one process (the UNet rows' peak RSS comes from one child process per row):
1. Winograd multiplication counts per tile against theory (exact fractions: 2.25x, 4x, 5.06x, 5.76x fewer),
   counted from the matrix products and convolutions the module actually runs (a dispatch mode records their
   shapes: `edgeopt.kernels.op_count`), not from the formula the module is written from;
2. the error of each tile against float64, per layer (F(8x8) is refused at the 1e-5 budget);
3. the tuner's pick on a UNet-decoder-sized layer (256->256 at 64x64) against PyTorch's own conv2d on the
   same input, interleaved, with the 10th-90th percentile of the speedup's paired bootstrap over rounds; the conv grid (channels 32..512 x
   spatial 16..128, direct vs each tile);
4. attention: latency, peak intermediate memory (analytic and measured: the ATen-visible bytes a dispatch
   mode sees allocated) and error for naive, partially fused softmax, flash and SDPA over sequence lengths x
   head dims, with the measured memory at 4096 tokens checked and the cells where SDPA is fastest stated (and
   flash / partial softmax at 4096 tokens with 128/128 blocks);
5. the diffusers UNet tables (32x32 and 64x64 latents): the techniques switched on one by one, cumulative
   latency change.
Then a check per claim; statements (measured facts that are not pass/fail) are marked as such. The exit
status is 1 when a check does not hold. Default run: about 2-3 minutes on 2 quiet cores (the UNet rows take
most).

    .venv/bin/python benchmarks/kernels.py [--threads 2] [--quick] [--unet small,medium|tiny|none]
                                           [--markdown out.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

from edgeopt.report.claims import Claim, statement

# "F(m×m, 3×3) does 9m²/(m+2)² times fewer multiplications", as the literature states it (Lavin & Gray):
# the exact fractions and their usual two-decimal forms. Written out here, not computed from the code.
THEORY = {2: Fraction(9, 4), 4: Fraction(4, 1), 6: Fraction(81, 16), 8: Fraction(144, 25)}
STATED = {2: 2.25, 4: 4.0, 6: 5.06, 8: 5.76}
COUNT_LAYER = (8, 16, 24)  # C_in, C_out, H=W: 24 is a multiple of every tile, so tiles cover the output exactly


def winograd_counts(c_in: int = COUNT_LAYER[0], c_out: int = COUNT_LAYER[1], size: int = COUNT_LAYER[2]) -> dict:
    """Per tile: multiplications counted while direct conv2d and the Winograd module run on one input."""
    from edgeopt.kernels.op_count import winograd_multiplications

    rows = []
    for m in THEORY:
        r = winograd_multiplications(m, c_in, c_out, size)
        rows.append({k: r[k] for k in ("m", "direct", "elementwise", "input_transform", "output_transform",
                                       "winograd_total", "calls", "max_abs_diff")})
    return {"kind": "winograd_counts_measured", "layer": {"c_in": c_in, "c_out": c_out, "size": size}, "rows": rows}


def _frac(f: Fraction) -> str:
    return f"{f.numerator}/{f.denominator}" if f.denominator != 1 else str(f.numerator)


def counts_table(counts: dict) -> tuple[str, list[str], list[list[str]]]:
    L = counts["layer"]
    title = (f"Winograd F(m×m, 3×3) multiplications counted at run time, {L['c_in']}->{L['c_out']} channels at "
             f"{L['size']}x{L['size']} (direct: aten conv2d; element-wise stage: aten bmm; transforms as executed)")
    cols = ["m", "direct", "element-wise stage", "fewer (counted)", "theory", "input transform", "output transform",
            "Winograd total / direct"]
    rows = []
    for r in counts["rows"]:
        ratio = Fraction(r["direct"], r["elementwise"]) if r["elementwise"] else None
        rows.append([str(r["m"]), f"{r['direct']:,}", f"{r['elementwise']:,}",
                     f"{_frac(ratio)} = {float(ratio):.4g}x" if ratio else "none counted", _frac(THEORY[r["m"]]),
                     f"{r['input_transform']:,}", f"{r['output_transform']:,}",
                     f"{r['winograd_total'] / r['direct']:.2f}"])
    return title, cols, rows


# ---------------------------------------------------------------------------------------------- the claims
def count_claims(counts: dict) -> list[Claim]:
    """The counted ratio direct / element-wise stage equals theory exactly for every tile, and rounds to the
    stated figure; what the transforms add is a statement."""
    got = {r["m"]: (Fraction(r["direct"], r["elementwise"]) if r["elementwise"] else None) for r in counts["rows"]}
    ok = set(got) == set(THEORY) and all(got[m] == THEORY[m] and round(float(got[m]), 2) == STATED[m] for m in THEORY)
    nums = ", ".join(f"F{m}: {_frac(f) if f is not None else 'no bmm seen'}" for m, f in got.items())
    L = counts["layer"]
    return [Claim("Winograd multiplications counted from the executed ops (direct conv2d / element-wise bmm) equal "
                  "theory exactly (9/4, 4, 81/16, 144/25)", ok, nums),
            statement(f"with the transforms counted too ({L['c_in']}->{L['c_out']} channels, dense transform "
                      "matrices as executed), Winograd's total over direct",
                      ", ".join(f"F{r['m']}: {r['winograd_total'] / r['direct']:.2f}" for r in counts["rows"]))]


def error_claims(errors: dict) -> list[Claim]:
    f8 = [row["rel_error"]["F8"] for row in errors["rows"]]
    f6 = [row["rel_error"]["F6"] for row in errors["rows"]]
    return [Claim(f"F(8x8,3x3) over the {errors['error_budget']:.0e} budget on every layer, F(6x6) within",
                  bool(errors["rows"]) and all(not row["within_budget"]["F8"] and row["within_budget"]["F6"]
                                               for row in errors["rows"]),
                  "F8 " + ", ".join(f"{e:.1e}" for e in f8) + "; F6 " + ", ".join(f"{e:.1e}" for e in f6))]


def conv_claims(vs: dict, grid: dict) -> list[Claim]:
    v, L = vs["vs_torch"], vs["layer"]
    where = f"{L['c_in']}->{L['c_out']} @ {L['size']}x{L['size']}"
    if v is None:
        out = [Claim(f"tuner's pick beats torch conv2d at {where}", False, "the tuner kept direct convolution")]
    else:
        out = [Claim(f"tuner's pick ({vs['choice']}) beats torch conv2d at {where} (p10 of its paired bootstrap over rounds > 1)",
                     v["ratio_p10"] > 1.0, f"{v['ratio_p50']:.2f}x (p10 {v['ratio_p10']:.2f}x, p90 "
                     f"{v['ratio_p90']:.2f}x); {v['torch_ms']:.1f} ms vs {v['winograd_ms']:.1f} ms")]
    wins = [f"{r['channels']}@{r['size']}: {r['choice']} {r['speedup']:.2f}x" for r in grid["rows"]
            if r["choice"] != "direct"]
    out.append(statement("conv grid: where a Winograd tile beats direct convolution within budget",
                         f"{len(wins)} of {len(grid['rows'])} cells: " + (", ".join(wins) or "none")))
    return out


def _mib(b: float) -> str:
    return f"{b / 2**20:.1f} MiB"


def attention_memory_claims(att: dict, tolerance: float = 0.05) -> list[Claim]:
    """At the longest sequence, the measured (ATen-visible) peak intermediate bytes: flash < partial softmax <
    naive / 4; and the analytic model of this code within `tolerance` of the measurement."""
    T = max(r["seq_len"] for r in att["rows"])
    at_t = [r for r in att["rows"] if r["seq_len"] == T]
    impls = ("naive", "partial_softmax", "flash")
    meas = {i: [r["impls"][i]["peak_intermediate_bytes"]["measured"] for r in at_t] for i in impls}
    ana = {i: [r["impls"][i]["peak_intermediate_bytes"]["analytic"] for r in at_t] for i in impls}
    measured = all(None not in meas[i] for i in impls)
    far_less = measured and all(f < p < n / 4
                                for n, p, f in zip(meas["naive"], meas["partial_softmax"], meas["flash"]))
    nums = "; ".join(f"hs {r['head_dim']}: naive {_mib(n)}, partial {_mib(p)}, flash {_mib(f)}"
                     for r, n, p, f in zip(at_t, meas["naive"], meas["partial_softmax"], meas["flash"])) if measured \
        else "not measured"
    devs = [abs(a - m) / m for i in impls for a, m in zip(ana[i], meas[i]) if measured and m]
    return [Claim(f"at {T} tokens, measured peak intermediate bytes: flash < partial softmax < naive / 4", far_less, nums),
            Claim(f"the analytic intermediate bytes (naive, partial softmax, flash) within {tolerance:.0%} of the "
                  f"measured ones at {T} tokens", measured and bool(devs) and max(devs) <= tolerance,
                  f"largest deviation {max(devs):.2%}" if devs else "not measured")]


def attention_statements(att: dict, small: dict) -> list[Claim]:
    sd = att["sdpa_fastest"]
    others = [(r["seq_len"], r["head_dim"], r["fastest"]) for r in att["rows"] if r["fastest"] != "sdpa"]
    T_max = max(r["seq_len"] for r in att["rows"])
    dflt = next(r for r in att["rows"] if r["seq_len"] == T_max and r["head_dim"] == 40)["impls"]
    b128 = small["rows"][0]["impls"]
    return [statement("where PyTorch's SDPA is fastest",
                      f"{len(sd)} of {len(att['rows'])} cells: " + (", ".join(f"{t}x{h}" for t, h in sd) or "none")
                      + ("; elsewhere " + ", ".join(f"{t}x{h}: {f}" for t, h, f in others) if others else "")),
            statement(f"block sizes matter: flash at {T_max} tokens, head dim 40, blocks q/k "
                      f"{att['blocks']['q_block']}/{att['blocks']['k_block']} (default) vs 128/128",
                      f"flash {dflt['flash']['latency_ms']:.1f} ms vs {b128['flash']['latency_ms']:.1f} ms; partial "
                      f"softmax {dflt['partial_softmax']['latency_ms']:.1f} ms vs "
                      f"{b128['partial_softmax']['latency_ms']:.1f} ms")]


def unet_claims(unet: dict, budget: float = 1e-5) -> list[Claim]:
    rows = unet["rows"]
    cum = [r for r in rows if not r["reference"]]
    naive = next((r for r in rows if r["reference"]), None)
    return [Claim(f"UNet {unet['size']}: every row within {budget:.0e} of the untouched output (norm-wise)",
                  bool(rows) and all(r["rel_error"] < budget for r in rows),
                  ", ".join(f"{r['rel_error']:.1e}" for r in rows)),
            statement(f"UNet {unet['size']}: cumulative latency change per row",
                      "; ".join(f"{r['label']}: {100 * r['change_vs_untouched']:+.1f}%" for r in cum)
                      + (f"; naive attention instead of SDPA: {100 * naive['change_vs_untouched']:+.1f}%, peak "
                         f"tensors {_mib(naive['peak_tensor_bytes'])} vs {_mib(rows[0]['peak_tensor_bytes'])}"
                         if naive else ""))]


def claims(reports: dict[str, Any]) -> list[Claim]:
    """Every claim of the run, from the reports by part name."""
    out = count_claims(reports["counts"]) + error_claims(reports["errors"])
    out += conv_claims(reports["vs_torch"], reports["conv_grid"])
    out += attention_memory_claims(reports["attention"])
    out += attention_statements(reports["attention"], reports["attention_128_blocks"])
    for name, rep in reports.items():
        if name.startswith("unet-"):
            out += unet_claims(rep)
    return out




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="small grids and the tiny UNet (a development check)")
    ap.add_argument("--unet", default=None,
                    help="UNet sizes, comma-separated: tiny, small (32x32 latents), medium (64x64: 4096 tokens), or "
                         "none (default: small,medium; tiny with --quick)")
    ap.add_argument("--markdown", type=Path, help="also write every table as markdown here")
    ap.add_argument("--json", type=Path, help="also write every report as JSON here")
    args = ap.parse_args()

    import torch
    from rich.console import Console

    from edgeopt.measure import kernels as K
    from edgeopt.unet_table import unet_table
    from edgeopt.report.kernels import markdown, render

    console = Console(width=160)
    torch.set_num_threads(args.threads)
    import cpuinfo

    cpu = cpuinfo.get_cpu_info()
    flags = set(cpu.get("flags", []))
    isa = ", ".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags)
    header = (f"{cpu.get('brand_raw', 'CPU')} ({cpu.get('count')} logical cores; {isa}); {args.threads} intra-op "
              f"threads; torch {torch.__version__}; fp32")
    load_before = os.getloadavg()[0]  # the cores are shared: a busy neighbour shows here
    console.print(f"[bold]edgeopt kernels benchmark[/bold]: {header}; 1-min load average {load_before:.2f}")
    quick = args.quick
    reports: dict[str, dict] = {}
    timings: dict[str, float] = {}

    def step(name: str, fn, *a, **kw) -> dict:
        t0 = time.perf_counter()
        rep = fn(*a, **kw)
        timings[name] = time.perf_counter() - t0
        reports[name] = rep
        console.print(render(rep))
        return rep

    from rich.table import Table

    from edgeopt.report import claims as C

    t0 = time.perf_counter()
    reports["counts"] = counts = winograd_counts()
    timings["counts"] = time.perf_counter() - t0
    title, cols, rows = counts_table(counts)
    ct = Table(title=title, title_justify="left")
    for c in cols:
        ct.add_column(c, overflow="fold")
    for r in rows:
        ct.add_row(*r)
    console.print(ct)
    step("errors", K.winograd_errors, layers=[(16, 16, 16)] if quick else [(64, 64, 32), (256, 256, 32)])
    # the claim's layer in both modes (a smaller one would test another claim), fewer rounds with --quick
    step("vs_torch", K.conv_vs_torch, 256, 256, 64, runs=8 if quick else 30, tune_runs=3 if quick else 7,
         threads=args.threads)
    step("conv_grid", K.conv_grid, channels=(8, 16) if quick else K.CONV_CHANNELS,
         sizes=(8,) if quick else K.CONV_SIZES, runs=1 if quick else 3, threads=args.threads)
    # quick: 2048 tokens, the blocked kernels' memory claim needs sequences well beyond the 512-key blocks
    att = step("attention", K.attention_grid, seq_lens=(256, 2048) if quick else (256, 1024, 4096),
               head_dims=(40,) if quick else (40, 64, 80), runs=2 if quick else 5, threads=args.threads)
    T_max = max(r["seq_len"] for r in att["rows"])
    step("attention_128_blocks", K.attention_grid, seq_lens=(T_max,), head_dims=(40,),
         impls="partial_softmax,flash", q_block=128, k_block=128, runs=2 if quick else 3,
         measure_memory=False, threads=args.threads)
    unet = args.unet if args.unet is not None else ("tiny" if quick else "small,medium")
    for size in [u.strip() for u in unet.split(",") if u.strip() and u.strip() != "none"]:
        step(f"unet-{size}", unet_table, size, runs=3 if quick else (10 if size != "medium" else 6),
             tune_runs=1 if quick else 3, threads=args.threads)

    checks = claims(reports)
    console.print(C.table(checks))
    load = f"1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after"
    console.print("seconds per part: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()) + f"; {load}")
    if args.markdown:
        lines = [f"Machine: {header}; {load}.", "", "Command: `.venv/bin/python benchmarks/kernels.py"
                 + (" --quick" if quick else "") + (f" --unet {args.unet}" if args.unet else "")
                 + f" --threads {args.threads}`", ""]
        title, cols, rows = counts_table(counts)
        lines += [f"**{title}**", "", "| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows] + [""]
        for name, rep in reports.items():
            if name != "counts":
                lines.append(markdown(rep))
        lines += ["**checks**", "", C.markdown(checks)]
        args.markdown.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps({"machine": header, "reports": reports, "checks": C.to_json(checks)},
                                        indent=1, default=str))
    console.print(C.summary(checks))
    return C.exit_code(checks)


if __name__ == "__main__":
    raise SystemExit(main())
