"""Kernel micro-benchmarks: the Winograd tuner on a model or layer, its counts and errors, the conv and attention grids.

What `edgeopt winograd`, `edgeopt kernels attention|conv` and `benchmarks/kernels.py` call (the UNet table is
`edgeopt.unet_table`). Every function returns one JSON-ready dict (schema "edgeopt.kernels/1");
`edgeopt.report.kernels` renders any of them as tables. Timings are medians of interleaved runs
(`edgeopt.measure.latency.measure_interleaved`: candidates rotated round by round, so noise hits all alike)
with pinned intra-op threads; errors are norm-wise relative errors against a float64 reference; memory is
said where it is measured (analytic, or ATen-visible tensor bytes from a dispatch mode). Arguments are
checked by `edgeopt.kernels.checks` (one line naming the field).
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from fractions import Fraction
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.errors import InputError
from edgeopt.kernels import checks
from edgeopt.kernels.attention import (IMPLS, attention, check_impls, measured_peak_intermediate_bytes,
                                       peak_intermediate_bytes)
from edgeopt.kernels.layer_stats import CallRunner, relative_error, time_interleaved
from edgeopt.kernels.op_count import winograd_multiplications
from edgeopt.kernels.winograd import (TILES, WinogradConv2d, check_tiles, multiplications, tune_layer, tune_model,
                                      winograd_matrices)
from edgeopt.load import load_model
from edgeopt.measure.latency import measure_interleaved, paired_speedup
from edgeopt.zoo.unet import check_size, load_unet

SCHEMA = "edgeopt.kernels/1"
SEQ_LENS: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
HEAD_DIMS: tuple[int, ...] = (40, 64, 80)
CONV_CHANNELS: tuple[int, ...] = (32, 64, 128, 256, 512)
CONV_SIZES: tuple[int, ...] = (16, 32, 64, 128)
SPREAD = 0.8  # conv_vs_torch: the speedup's paired-bootstrap interval from its 10th to its 90th percentile


# ---------------------------------------------------------------------------------------------- sources
def parse_layer_spec(spec: str) -> dict[str, int]:
    """`conv:C_INxC_OUTxHxW` (3×3, stride 1, padding 1) -> {"c_in", "c_out", "h", "w"}; InputError otherwise."""
    body = spec[len("conv:"):] if spec.startswith("conv:") else None
    parts = body.lower().split("x") if body else []
    if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise InputError(f"{spec}: expected a layer spec conv:C_INxC_OUTxHxW with positive integers, "
                         f"e.g. conv:256x256x64x64")
    c_in, c_out, h, w = (int(p) for p in parts)
    return {"c_in": c_in, "c_out": c_out, "h": h, "w": w}


def _parse_shape(text: str | Sequence[int] | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    if isinstance(text, str):
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        if not parts or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise InputError(f"input_shape: expected positive integers like 1,3,64,64, got {text!r}")
        return tuple(int(p) for p in parts)
    return tuple(int(p) for p in text)


def load_source(model_or_layer: Any, input_shape: str | Sequence[int] | None = None,
                batch: int = 1) -> tuple[Any, Any, str]:
    """(torch module, example input, description) for the tuner.

    `model_or_layer`: a layer spec `conv:C_INxC_OUTxHxW`; `unet:tiny|small|medium` (zoo:unet-*, the diffusers
    UNet of `edgeopt.zoo.unet`); anything `edgeopt.load_model` loads as a torch model (`zoo:digits-cnn`, ...); a torch
    module path `package.module:attribute` (an nn.Module, or a class/function building one with no
    arguments; needs `input_shape`); or an nn.Module itself (needs `input_shape`).
    """
    checks.pos_int(batch, "batch")
    shape = _parse_shape(input_shape)
    if isinstance(model_or_layer, nn.Module):
        if shape is None:
            raise InputError("input_shape: needed for a torch module (e.g. 1,3,64,64)")
        example = torch.randn(shape)
        return load_model(model_or_layer, example).module, example, type(model_or_layer).__name__
    src = str(model_or_layer)
    if src.startswith("conv:"):
        d = parse_layer_spec(src)
        torch.manual_seed(0)
        conv = nn.Conv2d(d["c_in"], d["c_out"], 3, padding=1).eval()
        return conv, torch.randn(batch, d["c_in"], d["h"], d["w"]), (
            f"Conv2d {d['c_in']}->{d['c_out']}, 3x3, padding 1, input {batch}x{d['c_in']}x{d['h']}x{d['w']}")
    if src.startswith("unet:"):
        art = load_unet(check_size(src[5:]))
        return art.module, art.meta["example_inputs"], f"diffusers UNet2DConditionModel ({src}, random weights)"
    if src.startswith("zoo:") or os.path.exists(src):
        art = load_model(src)
        if art.kind != "torch" or art.module is None:
            raise InputError(f"{src}: is a model of kind {art.kind!r}; the Winograd tuner needs a PyTorch model")
        example = art.meta.get("example_inputs")
        if shape is not None:
            example = torch.randn(shape)
        if example is None:
            raise InputError(f"{src}: no example inputs; give input_shape")
        return art.module, example, src
    if ":" in src:
        mod_name, _, attr = src.partition(":")
        try:
            obj = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as e:
            raise InputError(f"{src}: cannot import ({e.__class__.__name__}: {e})") from None
        if not isinstance(obj, nn.Module):
            try:
                obj = obj() if callable(obj) else obj
            except Exception as e:
                raise InputError(f"{src}: calling it with no arguments failed ({e.__class__.__name__}: {e})") from None
        if not isinstance(obj, nn.Module):
            raise InputError(f"{src}: is not a torch.nn.Module (got {type(obj).__name__})")
        if shape is None:
            raise InputError(f"{src}: give input_shape (e.g. 1,3,64,64) for a torch module path")
        example = torch.randn(shape)
        return load_model(obj, example).module, example, src
    raise InputError(f"{src}: not a layer spec (conv:C_INxC_OUTxHxW), unet:NAME, zoo:NAME, model path or "
                     f"package.module:attribute")


# ---------------------------------------------------------------------------------------------- winograd
def winograd_tune(model_or_layer: Any, tiles: str | Sequence[int] | None = None, error_budget: float = 1e-5,
                  runs: int = 5, warmup: int = 1, threads: int = 2, input_shape: str | Sequence[int] | None = None,
                  batch: int = 1) -> dict[str, Any]:
    """The tuner: per eligible 3×3 conv, direct against every tile, and the pick within `error_budget`.

    Per layer and candidate: exact multiplications (element-wise stage, one pass of the input), FLOPs ratio
    to direct, median latency (interleaved, `threads` threads), extra memory (transformed weights and
    tiles), norm-wise relative error against float64 on a seeded input; tiles over budget are refused with
    the reason, and the fastest accepted candidate is chosen ("direct" is always accepted).
    """
    tiles = check_tiles(TILES if tiles is None else tiles)
    checks.error_budget(error_budget)
    checks.pos_int(runs, "runs")
    checks.pos_int(threads, "threads")
    module, example, desc = load_source(model_or_layer, input_shape, batch)
    layers = tune_model(module, example, tiles=tiles, error_budget=error_budget, runs=runs, threads=threads,
                        warmup=warmup)
    if isinstance(module, torch.nn.Conv2d) and list(layers) == [""]:
        layers = {"conv": layers[""]}
    eligible = {n: r for n, r in layers.items() if r.get("supported")}
    summary = {"convs": len(layers), "eligible": len(eligible),
               "winograd": sum(1 for r in eligible.values() if r["tile"] is not None),
               "direct": sum(1 for r in eligible.values() if r["tile"] is None),
               "skipped": {n: r["reason"] for n, r in layers.items() if not r.get("supported")}}
    source = type(model_or_layer).__name__ if isinstance(model_or_layer, torch.nn.Module) else str(model_or_layer)
    return {"schema": SCHEMA, "kind": "winograd", "source": source, "description": desc, "threads": threads,
            "runs": runs, "error_budget": error_budget, "tiles": list(tiles), "layers": layers, "summary": summary,
            "versions": versions()}


STATED_RATIOS = {2: 2.25, 4: 4.0, 6: 5.06, 8: 5.76}  # "fewer multiplications", as the literature states them


def winograd_counts() -> dict[str, Any]:
    """Per tile: exact multiplications per output tile and input channel, direct m²·9 vs Winograd α², counted at
    run time (`edgeopt.kernels.op_count`: the ATen ops direct conv2d and the Winograd module run on one m×m
    output tile of one channel); checked against the tuner's formula (`multiplications`), the closed form
    m²·9/(m+2)² and the commonly stated 2.25x, 4x, 5.06x, 5.76x (to two decimals)."""
    rows = []
    for m in TILES:
        c = multiplications(m)
        alpha = len(winograd_matrices(m)[2])  # B^T is α×α: the element-wise stage multiplies α² values per tile
        run = winograd_multiplications(m, c_in=1, c_out=1, size=m)  # one tile, one input and output channel
        counted = Fraction(run["direct"], run["elementwise"]) if run["elementwise"] else Fraction(0)
        theory = Fraction(9 * m * m, (m + 2) ** 2)
        rows.append({"m": m, "alpha": alpha, "direct": run["direct"], "winograd": run["elementwise"],
                     "ratio": f"{counted.numerator}/{counted.denominator}", "ratio_value": float(counted),
                     "theory": f"{theory.numerator}/{theory.denominator}", "stated": STATED_RATIOS.get(m),
                     "exact": (run["direct"], run["elementwise"]) == (c["direct"], c["winograd"])
                     and counted == c["ratio"] == theory and round(float(theory), 2) == STATED_RATIOS.get(m)})
    return {"schema": SCHEMA, "kind": "winograd_counts", "rows": rows}


def winograd_errors(layers: Sequence[tuple[int, int, int]] = ((64, 64, 32), (256, 256, 32)),
                    tiles: Sequence[int] | None = None, error_budget: float = 1e-5, seed: int = 0) -> dict[str, Any]:
    """Norm-wise relative error of fp32 direct convolution and of each tile against float64, per layer
    (C_in, C_out, H=W), on a seeded normal input and PyTorch's default weight initialization."""
    tiles = check_tiles(TILES if tiles is None else tiles)
    error_budget = checks.error_budget(error_budget)
    rows = []
    for c_in, c_out, s in layers:
        torch.manual_seed(seed)
        conv = nn.Conv2d(c_in, c_out, 3, padding=1).eval()
        x = torch.randn(1, c_in, s, s, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            ref = copy.deepcopy(conv).double()(x.double())  # (1, C_out, s, s) float64 reference
            errs = {"direct": relative_error(conv(x), ref)}
            for t in tiles:
                errs[f"F{t}"] = relative_error(WinogradConv2d(conv, t)(x), ref)
        rows.append({"c_in": c_in, "c_out": c_out, "size": s, "rel_error": errs,
                     "within_budget": {k: v <= error_budget for k, v in errs.items()}})
    return {"schema": SCHEMA, "kind": "winograd_errors", "error_budget": error_budget, "dtype": "float32",
            "rows": rows}


def conv_vs_torch(c_in: int = 256, c_out: int = 256, size: int = 64, batch: int = 1, tiles: Sequence[int] | None = None,
                  error_budget: float = 1e-5, runs: int = 7, tune_runs: int = 5, threads: int = 2,
                  seed: int = 0) -> dict[str, Any]:
    """The tuner's pick on one layer, then that tile against PyTorch's own F.conv2d on the same input.

    The second measurement is its own interleaved session (warm-up 2, `runs` rounds): the speedup conv2d /
    Winograd as the ratio of medians (`ratio_p50`) with the 10th and 90th percentile of its paired bootstrap
    over rounds (`ratio_p10`, `ratio_p90`: `edgeopt.measure.latency.paired_speedup` at SPREAD).
    """
    tiles = check_tiles(TILES if tiles is None else tiles)
    error_budget = checks.error_budget(error_budget)
    for n, v in (("c_in", c_in), ("c_out", c_out), ("size", size), ("batch", batch), ("runs", runs),
                 ("threads", threads)):
        checks.pos_int(v, n)
    torch.manual_seed(seed)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1).eval()
    shape = (batch, c_in, size, size)
    tuned = tune_layer(conv, shape, tiles=tiles, error_budget=error_budget, runs=tune_runs, threads=threads, seed=seed)
    out = {"schema": SCHEMA, "kind": "conv_vs_torch", "layer": {"c_in": c_in, "c_out": c_out, "size": size,
                                                               "batch": batch}, "threads": threads, "tuner": tuned}
    if tuned["tile"] is None:
        return {**out, "choice": "direct", "vs_torch": None}
    wino = WinogradConv2d(conv, tuned["tile"])
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    w, b = conv.weight.detach(), conv.bias.detach()
    runners = {"torch.conv2d": CallRunner("torch.conv2d", lambda: F.conv2d(x, w, b, padding=1), threads),
               tuned["choice"]: CallRunner(tuned["choice"], lambda: wino(x), threads)}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            stats = measure_interleaved(runners, feed={}, warmup=2, runs=runs)
    finally:
        torch.set_num_threads(before)
    a, b_ = stats["torch.conv2d"].samples, stats[tuned["choice"]].samples
    p50, p10, p90 = paired_speedup(a, b_, per_turn=1, ci=SPREAD)  # conv2d / Winograd, paired over rounds
    return {**out, "choice": tuned["choice"],
            "vs_torch": {"torch_ms": stats["torch.conv2d"].p50, "winograd_ms": stats[tuned["choice"]].p50,
                         "ratio_p50": p50, "ratio_p10": p10, "ratio_p90": p90, "runs": runs,
                         "torch_msp10_p90": p10_p90(a), "winograd_msp10_p90": p10_p90(b_)}}


def p10_p90(samples: Sequence[float]) -> list[float]:
    """The 10th and 90th percentile of latency samples (ms)."""
    return [float(v) for v in np.percentile(np.asarray(samples, dtype=float), [10, 90])]


def conv_grid(channels: str | Sequence[int] = CONV_CHANNELS, sizes: str | Sequence[int] = CONV_SIZES,
              tiles: str | Sequence[int] | None = None, error_budget: float = 1e-5, runs: int = 3, warmup: int = 1,
              threads: int = 2, batch: int = 1, seed: int = 0) -> dict[str, Any]:
    """Direct convolution against each Winograd tile on C→C 3×3 layers over `channels` × `sizes` (H = W)."""
    channels, sizes = checks.pos_ints(channels, "channels"), checks.pos_ints(sizes, "sizes")
    tiles = check_tiles(TILES if tiles is None else tiles)
    error_budget = checks.error_budget(error_budget)
    for n, v in (("runs", runs), ("threads", threads), ("batch", batch)):
        checks.pos_int(v, n)
    rows = []
    for c in channels:
        for s in sizes:
            torch.manual_seed(seed)
            conv = nn.Conv2d(c, c, 3, padding=1).eval()
            res = tune_layer(conv, (batch, c, s, s), tiles=tiles, error_budget=error_budget, runs=runs,
                             threads=threads, warmup=warmup, seed=seed)
            rows.append({"channels": c, "size": s, "candidates": res["candidates"], "refused": res["refused"],
                         "choice": res["choice"], "speedup": res["speedup"]})
    return {"schema": SCHEMA, "kind": "conv_grid", "threads": threads, "runs": runs, "batch": batch,
            "error_budget": error_budget, "tiles": list(tiles), "rows": rows, "versions": versions()}


# ---------------------------------------------------------------------------------------------- attention
def attention_grid(seq_lens: str | Sequence[int] = SEQ_LENS, head_dims: str | Sequence[int] = HEAD_DIMS,
                   impls: str | Sequence[str] | None = None, heads: int = 2, batch: int = 1, runs: int = 3,
                   warmup: int = 1, threads: int = 2, q_block: int = 256, k_block: int = 512,
                   measure_memory: bool = True, seed: int = 0) -> dict[str, Any]:
    """Self-attention of `heads` heads over `seq_lens` × `head_dims` with each implementation, fp32.

    Per cell and implementation: median latency (the implementations of one cell interleaved), peak bytes of
    the intermediates (analytic, from this code; and ATen-visible, measured op by op, where SDPA's kernel
    workspace is invisible), and the norm-wise relative error against a float64 naive reference.
    """
    impls = check_impls(IMPLS if impls is None else impls)
    seq_lens, head_dims = checks.pos_ints(seq_lens, "seq_lens"), checks.pos_ints(head_dims, "head_dims")
    for n, v in (("heads", heads), ("batch", batch), ("runs", runs), ("threads", threads), ("q_block", q_block),
                 ("k_block", k_block)):
        checks.pos_int(v, n)
    blocks = {"q_block": q_block, "k_block": k_block}
    rows = []
    for T in seq_lens:
        for hs in head_dims:
            gen = torch.Generator().manual_seed(seed + T + hs)
            q, k, v = (torch.randn(batch, heads, T, hs, generator=gen) for _ in range(3))  # (B, nh, T, hs)
            with torch.inference_mode():
                ref = torch.cat([attention(q[:, h:h + 1].double(), k[:, h:h + 1].double(), v[:, h:h + 1].double())
                                 for h in range(heads)], dim=1)  # (B, nh, T, hs) float64, one head at a time
                errs = {i: relative_error(attention(q, k, v, impl=i, **blocks), ref) for i in impls}
            del ref
            mem = {i: {"analytic": peak_intermediate_bytes(i, batch, heads, T, T, hs, blocks=blocks),
                       "measured": measured_peak_intermediate_bytes(i, q, k, v, **blocks) if measure_memory else None}
                   for i in impls}
            lat = time_interleaved({i: (lambda i=i: attention(q, k, v, impl=i, **blocks)) for i in impls},
                                   runs=runs, warmup=warmup, threads=threads)
            rows.append({"seq_len": T, "head_dim": hs, "impls": {i: {"latency_ms": lat[i], "rel_error": errs[i],
                                                                      "peak_intermediate_bytes": mem[i]}
                                                                  for i in impls},
                         "fastest": min(impls, key=lambda i: lat[i])})
    return {"schema": SCHEMA, "kind": "attention_grid", "threads": threads, "runs": runs, "heads": heads,
            "batch": batch, "dtype": "float32", "blocks": blocks, "impls": list(impls), "rows": rows,
            "sdpa_fastest": [[r["seq_len"], r["head_dim"]] for r in rows if r["fastest"] == "sdpa"],
            "versions": versions()}


def versions() -> dict[str, str]:
    """torch, python and (when installed) diffusers versions, as every report records them."""
    out = {"torch": torch.__version__, "python": sys.version.split()[0]}
    try:
        out["diffusers"] = version("diffusers")
    except PackageNotFoundError:  # the diffusion extra is not installed
        pass
    return out
