"""Kernel micro-benchmarks: the Winograd tuner on a model or layer, attention and convolution grids, the UNet table.

What `edgeopt winograd`, `edgeopt kernels attention|conv|unet` and `benchmarks/kernels.py` call. Every
function returns one JSON-ready dict (schema "edgeopt.kernels/1"); `render(report)` turns any of them into
rich tables and `markdown(report)` into markdown tables. Timings are medians of interleaved runs
(`edgeopt.measure.latency.measure_interleaved`: candidates rotated round by round, so noise hits all alike)
with pinned intra-op threads; errors are norm-wise relative errors against a float64 reference (or, for the
UNet, against the untouched model); memory is said where it is measured (analytic, ATen-visible tensor
bytes from a dispatch mode, or the peak RSS of a child process).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Sequence

from edgeopt.errors import InputError, RecipeError
from edgeopt.load import load_model

SCHEMA = "edgeopt.kernels/1"
SEQ_LENS: tuple[int, ...] = (256, 512, 1024, 2048, 4096)
HEAD_DIMS: tuple[int, ...] = (40, 64, 80)
CONV_CHANNELS: tuple[int, ...] = (32, 64, 128, 256, 512)
CONV_SIZES: tuple[int, ...] = (16, 32, 64, 128)

# diffusers' UNet2DConditionModel takes the number of heads in `attention_head_dim` (a known misnomer):
# 2 heads over 80 / 160 channels give head dims 40 and 80, two of Stable Diffusion's (40, 80, 160).
UNET_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": {"latent": 16, "text_tokens": 8, "config": dict(
        sample_size=16, in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8)},
    "small": {"latent": 32, "text_tokens": 77, "config": dict(
        sample_size=32, in_channels=4, out_channels=4, block_out_channels=(80, 160, 160), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=2, norm_num_groups=16)},
}
UNET_CONFIGS["medium"] = {**UNET_CONFIGS["small"], "latent": 64,  # 4096 tokens at the top level, as SD at 512 px
                          "config": {**UNET_CONFIGS["small"]["config"], "sample_size": 64}}


# ---------------------------------------------------------------------------------------------- checks
def _check_pos_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RecipeError(f"{name}: must be an integer >= 1, got {value!r}")
    return value


def _split(name: str, values: str | Sequence[Any]) -> tuple[Any, ...]:
    """A comma-separated string (as the CLI passes lists) or a sequence, as a tuple."""
    if isinstance(values, str):
        return tuple(v.strip() for v in values.split(",") if v.strip())
    return tuple(values)


def _check_ints(name: str, values: str | Sequence[Any]) -> tuple[int, ...]:
    values = _split(name, values)
    if any(isinstance(v, str) and not v.isdigit() for v in values):
        raise RecipeError(f"{name}: expected positive integers separated by commas, got {','.join(map(str, values))!r}")
    values = tuple(int(v) if isinstance(v, str) else v for v in values)
    if not values:
        raise RecipeError(f"{name}: empty")
    return tuple(_check_pos_int(name, v) for v in values)


def check_error_budget(value: Any, name: str = "error_budget") -> float:
    """A relative-error budget must be a finite number in (0, 1); anything else is a one-line RecipeError."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1
    if not ok:
        raise RecipeError(f"{name}: a relative error budget must be in (0, 1), got {value!r}")
    return float(value)


def check_tiles(tiles: str | Sequence[Any]) -> tuple[int, ...]:
    """Winograd output tiles from TILES; an unknown one is a RecipeError listing the known ones."""
    from edgeopt.kernels.winograd import TILES

    tiles = _split("tiles", tiles)
    tiles = tuple(int(t) if isinstance(t, str) and t.isdigit() else t for t in tiles)
    if not tiles:
        raise RecipeError(f"tiles: empty; known tiles: {', '.join(map(str, TILES))}")
    for t in tiles:
        if t not in TILES:
            raise RecipeError(f"tiles: unknown tile {t!r}; known tiles: {', '.join(map(str, TILES))}")
    return tiles


def check_impls(impls: str | Sequence[Any]) -> tuple[str, ...]:
    """Attention implementation names from IMPLS; an unknown one is a RecipeError listing the known ones."""
    from edgeopt.kernels.attention import IMPLS

    impls = _split("impls", impls)
    if not impls:
        raise RecipeError(f"impls: empty; known: {', '.join(IMPLS)}")
    for i in impls:
        if i not in IMPLS:
            raise RecipeError(f"impls: unknown attention implementation {i!r}; known: {', '.join(IMPLS)}")
    return impls


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


@lru_cache(maxsize=1)
def _unet_step_class():
    import torch
    from torch import nn

    class UNetStep(nn.Module):
        """One denoising step of a diffusers UNet2DConditionModel: (sample, timestep, text) -> predicted noise."""

        def __init__(self, unet: nn.Module):
            super().__init__()
            self.unet = unet

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                    encoder_hidden_states: torch.Tensor) -> torch.Tensor:
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]  # (B, 4, h, w)

    return UNetStep


def build_unet(size: str = "small", seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """(module, example inputs) of a diffusers UNet2DConditionModel from UNET_CONFIGS, random weights, no download.

    The module is a `UNetStep` wrapper returning the predicted noise tensor; the example is one latent
    (1, 4, L, L), timestep 500 and (1, text_tokens, cross_attention_dim) text states, all seeded.
    """
    if size not in UNET_CONFIGS:
        raise InputError(f"unet:{size}: unknown UNet size; known: {', '.join('unet:' + k for k in UNET_CONFIGS)}")
    try:
        from diffusers import UNet2DConditionModel
    except ImportError:  # pragma: no cover - diffusers is a dependency
        raise InputError("unet:*: needs the diffusers package") from None
    import torch

    spec = UNET_CONFIGS[size]
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**spec["config"]).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    L, T, D = spec["latent"], spec["text_tokens"], spec["config"]["cross_attention_dim"]
    example = {"sample": torch.randn(1, 4, L, L, generator=gen), "timestep": torch.tensor([500]),
               "encoder_hidden_states": torch.randn(1, T, D, generator=gen)}
    return _unet_step_class()(unet).eval(), example


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

    `model_or_layer`: a layer spec `conv:C_INxC_OUTxHxW`; `unet:tiny|small|medium` (the diffusers UNet of
    `build_unet`); anything `edgeopt.load_model` loads as a torch model (`zoo:digits-cnn`, ...); a torch
    module path `package.module:attribute` (an nn.Module, or a class/function building one with no
    arguments; needs `input_shape`); or an nn.Module itself (needs `input_shape`).
    """
    import torch
    from torch import nn

    _check_pos_int("batch", batch)
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
        module, example = build_unet(src[5:])
        return module, example, f"diffusers UNet2DConditionModel ({src}, random weights)"
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
        import importlib

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
    import torch

    from edgeopt.kernels.winograd import TILES, tune_model

    tiles = check_tiles(TILES if tiles is None else tiles)
    error_budget = check_error_budget(error_budget)
    _check_pos_int("runs", runs)
    _check_pos_int("threads", threads)
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
            "versions": _versions()}


STATED_RATIOS = {2: 2.25, 4: 4.0, 6: 5.06, 8: 5.76}  # "fewer multiplications", as the literature states them


def winograd_counts() -> dict[str, Any]:
    """Per tile: exact multiplications per output tile and input channel (direct m²·9 vs Winograd α², counted
    from the generated transforms' shapes), their ratio as an exact fraction, the closed form m²·9/(m+2)² and
    the commonly stated 2.25x, 4x, 5.06x, 5.76x (to two decimals)."""
    from fractions import Fraction

    from edgeopt.kernels.winograd import TILES, multiplications, winograd_matrices

    rows = []
    for m in TILES:
        c = multiplications(m)
        AT, G, BT = winograd_matrices(m)
        alpha = len(BT)  # the element-wise stage multiplies α×α transformed values per tile
        counted = Fraction(m * m * 9, alpha * alpha)
        theory = Fraction(9 * m * m, (m + 2) ** 2)
        rows.append({"m": m, "alpha": alpha, "direct": c["direct"], "winograd": c["winograd"],
                     "ratio": f"{c['ratio'].numerator}/{c['ratio'].denominator}", "ratio_value": float(c["ratio"]),
                     "theory": f"{theory.numerator}/{theory.denominator}", "stated": STATED_RATIOS.get(m),
                     "exact": c["ratio"] == counted == theory and round(float(theory), 2) == STATED_RATIOS.get(m)})
    return {"schema": SCHEMA, "kind": "winograd_counts", "rows": rows}


def winograd_errors(layers: Sequence[tuple[int, int, int]] = ((64, 64, 32), (256, 256, 32)),
                    tiles: Sequence[int] | None = None, error_budget: float = 1e-5, seed: int = 0) -> dict[str, Any]:
    """Norm-wise relative error of fp32 direct convolution and of each tile against float64, per layer
    (C_in, C_out, H=W), on a seeded normal input and PyTorch's default weight initialization."""
    import copy

    import torch
    from torch import nn

    from edgeopt.kernels.winograd import TILES, WinogradConv2d, relative_error

    tiles = check_tiles(TILES if tiles is None else tiles)
    error_budget = check_error_budget(error_budget)
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

    The second measurement is its own interleaved session (warm-up 2, `runs` rounds): per round the ratio
    conv2d / Winograd, reported as median with the 10th and 90th percentile of the per-round ratios.
    """
    import torch
    import torch.nn.functional as F
    from torch import nn

    from edgeopt.kernels.winograd import TILES, WinogradConv2d, _CallRunner, tune_layer
    from edgeopt.measure.latency import measure_interleaved, paired_ratio

    tiles = check_tiles(TILES if tiles is None else tiles)
    error_budget = check_error_budget(error_budget)
    for n, v in (("c_in", c_in), ("c_out", c_out), ("size", size), ("batch", batch), ("runs", runs),
                 ("threads", threads)):
        _check_pos_int(n, v)
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
    runners = {"torch.conv2d": _CallRunner("torch.conv2d", lambda: F.conv2d(x, w, b, padding=1), threads),
               tuned["choice"]: _CallRunner(tuned["choice"], lambda: wino(x), threads)}
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            stats = measure_interleaved(runners, feed={}, warmup=2, runs=runs)
    finally:
        torch.set_num_threads(before)
    a, b_ = stats["torch.conv2d"].samples, stats[tuned["choice"]].samples
    p50, p10, p90 = paired_ratio(a, b_, per_turn=1)  # per-round ratios conv2d / Winograd
    return {**out, "choice": tuned["choice"],
            "vs_torch": {"torch_ms": stats["torch.conv2d"].p50, "winograd_ms": stats[tuned["choice"]].p50,
                         "ratio_p50": p50, "ratio_p10": p10, "ratio_p90": p90, "runs": runs,
                         "torch_ms_p10_p90": _p10_p90(a), "winograd_ms_p10_p90": _p10_p90(b_)}}


def _p10_p90(samples: Sequence[float]) -> list[float]:
    import numpy as np

    return [float(v) for v in np.percentile(np.asarray(samples, dtype=float), [10, 90])]


def conv_grid(channels: str | Sequence[int] = CONV_CHANNELS, sizes: str | Sequence[int] = CONV_SIZES,
              tiles: str | Sequence[int] | None = None, error_budget: float = 1e-5, runs: int = 3, warmup: int = 1,
              threads: int = 2, batch: int = 1, seed: int = 0) -> dict[str, Any]:
    """Direct convolution against each Winograd tile on C→C 3×3 layers over `channels` × `sizes` (H = W)."""
    import torch
    from torch import nn

    from edgeopt.kernels.winograd import TILES, tune_layer

    channels, sizes = _check_ints("channels", channels), _check_ints("sizes", sizes)
    tiles = check_tiles(TILES if tiles is None else tiles)
    error_budget = check_error_budget(error_budget)
    for n, v in (("runs", runs), ("threads", threads), ("batch", batch)):
        _check_pos_int(n, v)
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
            "error_budget": error_budget, "tiles": list(tiles), "rows": rows, "versions": _versions()}


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
    import torch

    from edgeopt.kernels.attention import (IMPLS, attention, measured_peak_intermediate_bytes,
                                           peak_intermediate_bytes)
    from edgeopt.kernels.winograd import relative_error, time_interleaved

    impls = check_impls(IMPLS if impls is None else impls)
    seq_lens, head_dims = _check_ints("seq_lens", seq_lens), _check_ints("head_dims", head_dims)
    for n, v in (("heads", heads), ("batch", batch), ("runs", runs), ("threads", threads), ("q_block", q_block),
                 ("k_block", k_block)):
        _check_pos_int(n, v)
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
            "versions": _versions()}


# ---------------------------------------------------------------------------------------------- UNet table
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


def _choices(notes: dict[str, Any]) -> dict[str, Any]:
    """What a row's passes decided, in the form `_apply_choices` replays in a child process."""
    out: dict[str, Any] = {}
    if "fused_norm" in notes:
        out["fused_norm"] = bool(notes["fused_norm"]["fused"])
    if "attention" in notes:
        out["attention"] = {n: r["impl"] for n, r in notes["attention"]["layers"].items()}
    if "winograd" in notes:
        out["winograd"] = dict(notes["winograd"]["replaced"])
    return out


def _apply_choices(module: Any, choices: dict[str, Any], blocks: dict[str, int] | None = None) -> Any:
    """Replay recorded choices on a freshly built UNet: fuse norms, set attention processors, swap convs."""
    from pathlib import Path
    from tempfile import TemporaryDirectory

    from edgeopt.artifact import Artifact, InputSpec
    from edgeopt.kernels.attention import diffusers_processor_for
    from edgeopt.kernels.winograd import WinogradConv2d
    from edgeopt.passes.base import PassContext, build_pass

    blocks = blocks or {}
    if choices.get("fused_norm"):
        with TemporaryDirectory() as d:
            art = Artifact.from_module(module, InputSpec(()))
            module = build_pass("kernels.fused_norm", {"measure": False})(art, PassContext(stage_dir=Path(d))).module
    for name, impl in choices.get("attention", {}).items():
        layer = module.get_submodule(name)
        layer.set_processor(diffusers_processor_for(layer, impl, **blocks))
    for name, tile in choices.get("winograd", {}).items():
        module.set_submodule(name, WinogradConv2d(module.get_submodule(name), int(tile)))
    return module


def _summarize_notes(notes: dict[str, Any]) -> str:
    """A short 'what changed' for one row: fused pairs, attention choices, Winograd tiles."""
    from collections import Counter

    parts = []
    if "fused_norm" in notes:
        fn = notes["fused_norm"]
        parts.append(f"{len(fn['fused'])} pairs fused" + (f", {len(fn['skipped'])} skipped" if fn["skipped"] else ""))
    if "attention" in notes:
        c = Counter(r["impl"] for r in notes["attention"]["layers"].values())
        parts.append("attention " + ", ".join(f"{k}×{v}" for k, v in sorted(c.items())))
    if "winograd" in notes:
        w = notes["winograd"]
        c = Counter(f"F{t}" for t in w["replaced"].values())
        parts.append("Winograd " + (", ".join(f"{k}×{v}" for k, v in sorted(c.items())) or "none")
                     + f"; direct kept ×{len(w['kept_direct'])}; skipped ×{len(w['skipped'])}")
    return "; ".join(parts)


def _child_memory(size: str, seed: int, choices: dict[str, Any], threads: int, blocks: dict[str, int],
                  timeout: float = 300) -> dict[str, float] | None:
    """Peak RSS of a child that builds the UNet, replays `choices`, and runs one step (MB, 2**20 bytes)."""
    arg = json.dumps({"size": size, "seed": seed, "choices": choices, "threads": threads, "blocks": blocks})
    try:
        proc = subprocess.run([sys.executable, "-m", "edgeopt.analyze.kernels", "unet-memory", arg],
                              capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (subprocess.TimeoutExpired, json.JSONDecodeError, IndexError):
        return None


def _unet_memory_child(arg: str) -> int:
    import psutil
    import torch

    from edgeopt.measure.memory import _maxrss_mb

    spec = json.loads(arg)
    torch.set_num_threads(int(spec["threads"]))
    import diffusers  # noqa: F401  (imported before the baseline reading, like torch)

    proc = psutil.Process()
    import_mb = proc.memory_info().rss / 2**20
    module, example = build_unet(spec["size"], spec["seed"])
    module = _apply_choices(module, spec["choices"], spec["blocks"])
    built_mb = proc.memory_info().rss / 2**20
    with torch.inference_mode():
        module(*example.values())
    print(json.dumps({"import_mb": import_mb, "built_mb": built_mb, "peak_mb": _maxrss_mb()}))
    return 0


def unet_table(size: str = "small", runs: int = 10, warmup: int = 2, threads: int = 2, tune_runs: int = 3,
               child_memory: bool = True, reference_naive: bool = True, seed: int = 0) -> dict[str, Any]:
    """The techniques switched on one by one on a diffusers UNet2DConditionModel (random weights), as rows.

    Rows are cumulative (each adds its passes to the row above), except the naive-attention reference,
    which is the untouched model with naive attention. Per row: latency of one UNet step (all rows timed
    interleaved in one session, median and 10th/90th percentile), peak ATen tensor bytes of one step
    (activations and workspace visible to a dispatch mode, inputs and weights excluded), optionally the
    peak RSS of a child process that builds the row's model and runs one step, the output's deviation from
    the untouched model (norm-wise relative error, max abs), and the latency change against the untouched
    row (cumulative) and against the row above.
    """
    import tempfile
    from pathlib import Path

    import torch

    from edgeopt.kernels.layer_stats import peak_intermediate_bytes
    from edgeopt.kernels.winograd import _CallRunner, relative_error
    from edgeopt.measure.latency import measure_interleaved
    from edgeopt.passes.base import PassContext, build_pass

    for n, v in (("runs", runs), ("threads", threads), ("tune_runs", tune_runs)):
        _check_pos_int(n, v)
    module, example = build_unet(size, seed)
    base = load_model(module, example)
    before_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    arts: dict[str, Any] = {}
    choices: dict[str, dict[str, Any]] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prev, prev_choices = base, {}
            for i, row in enumerate(r for r in UNET_ROWS if reference_naive or not r.reference):
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
        runners = {r["label"]: _CallRunner(r["label"], lambda m=arts[r["label"]].module: m(*args), threads)
                   for r in rows}
        with torch.inference_mode():
            stats = measure_interleaved(runners, feed={}, warmup=warmup, runs=runs)
    finally:
        torch.set_num_threads(before_threads)
    base_ms = stats["untouched"].p50
    prev_ms = None
    for r in rows:
        s = stats[r["label"]]
        r["latency_ms"] = {"p50": s.p50, "p10_p90": _p10_p90(s.samples), "n": s.n}
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
            "rows": rows, "versions": _versions()}


def _versions() -> dict[str, str]:
    import torch

    out = {"torch": torch.__version__, "python": sys.version.split()[0]}
    try:
        import diffusers

        out["diffusers"] = diffusers.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


# ---------------------------------------------------------------------------------------------- rendering
@dataclass
class Tab:
    """One table as plain strings: what both `render` (rich) and `markdown` print."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""


def _ms(v: float | None) -> str:
    return "?" if v is None else (f"{v:.3g}" if v < 10 else f"{v:.1f}")


def _bytes(n: float | None) -> str:
    from edgeopt.analyze.render import human_bytes

    return "—" if n is None else human_bytes(n)


def _err(e: float | None) -> str:
    return "?" if e is None else f"{e:.1e}"


def tables(report: dict[str, Any]) -> list[Tab]:
    """The report as plain-string tables (one or more per kind)."""
    kind = report.get("kind")
    if kind == "winograd":
        return _tabs_winograd(report)
    if kind == "winograd_errors":
        return _tabs_winograd_errors(report)
    if kind == "conv_grid":
        return _tabs_conv_grid(report)
    if kind == "conv_vs_torch":
        return _tabs_conv_vs_torch(report)
    if kind == "attention_grid":
        return _tabs_attention(report)
    if kind == "unet_table":
        return _tabs_unet(report)
    if kind == "winograd_counts":
        return _tabs_counts(report)
    raise ValueError(f"report kind {kind!r} has no tables")


def _cand_cells(cands: dict[str, Any]) -> str:
    return "  ".join(f"{k} {_ms(c['latency_ms'])}" + ("" if c["accepted"] else "✗") for k, c in cands.items())


def _tabs_winograd(r: dict[str, Any]) -> list[Tab]:
    out = []
    for name, res in r["layers"].items():
        if not res.get("supported"):
            continue
        t = Tab(f"{name or 'model'}: input {'x'.join(map(str, res['input_shape']))}, choice {res['choice']}"
                + (f" ({res['speedup']:.2f}x vs direct)" if res.get("speedup") else ""),
                ["candidate", "multiplications", "FLOPs ratio", "latency ms", "extra memory", "rel. error vs fp64",
                 "verdict"])
        for k, c in res["candidates"].items():
            verdict = "chosen" if k == res["choice"] else ("ok" if c["accepted"] else "refused: over budget")
            t.rows.append([k, f"{c['multiplications']:,}", f"{c['flops_ratio']:.2f}x", _ms(c["latency_ms"]),
                           _bytes(c["extra_bytes"]["total"]), _err(c["rel_error"]), verdict])
        out.append(t)
    s = r["summary"]
    t = Tab(f"Winograd tuner: {r['description']}", ["layers", "count / reason"],
            caption=f"error budget {r['error_budget']:.0e} (norm-wise, fp32 vs fp64); {r['threads']} threads; "
                    f"median of {r['runs']} interleaved runs")
    t.rows += [["Conv2d layers", str(s["convs"])], ["eligible (3x3, stride 1, groups 1, dilation 1)", str(s["eligible"])],
               ["Winograd chosen", str(s["winograd"])], ["direct kept", str(s["direct"])]]
    for n, why in s["skipped"].items():
        t.rows.append([f"skipped {n}", why])
    return [t] + out


def _tabs_counts(r: dict[str, Any]) -> list[Tab]:
    t = Tab("Winograd F(m×m, 3×3): multiplications per m×m output tile and input channel",
            ["m", "input tile α×α", "direct m²·9", "Winograd α²", "fewer (exact)", "m²·9/(m+2)²", "stated", "match"])
    for row in r["rows"]:
        t.rows.append([str(row["m"]), f"{row['alpha']}x{row['alpha']}", str(row["direct"]), str(row["winograd"]),
                       f"{row['ratio']} = {row['ratio_value']:.4g}x", row["theory"], f"{row['stated']}x",
                       "exact" if row["exact"] else "MISMATCH"])
    return [t]


def _tabs_winograd_errors(r: dict[str, Any]) -> list[Tab]:
    keys = list(r["rows"][0]["rel_error"]) if r["rows"] else []
    t = Tab("Relative error against float64 (fp32 input and weights, norm-wise)", ["layer"] + keys,
            caption=f"budget {r['error_budget']:.0e}: ✗ marks a tile the tuner refuses")
    for row in r["rows"]:
        t.rows.append([f"{row['c_in']}→{row['c_out']} @ {row['size']}x{row['size']}"]
                      + [_err(row["rel_error"][k]) + ("" if row["within_budget"][k] else " ✗") for k in keys])
    return [t]


def _tabs_conv_vs_torch(r: dict[str, Any]) -> list[Tab]:
    L = r["layer"]
    tabs = _tabs_winograd({"layers": {"tuner": r["tuner"]}, "summary": {"convs": 1, "eligible": 1,
                                                                       "winograd": int(r["choice"] != "direct"),
                                                                       "direct": int(r["choice"] == "direct"),
                                                                       "skipped": {}},
                           "description": f"Conv2d {L['c_in']}→{L['c_out']} at {L['size']}x{L['size']}, batch {L['batch']}",
                           "error_budget": r["tuner"]["error_budget"], "threads": r["threads"],
                           "runs": r["tuner"]["runs"]})[1:]
    v = r["vs_torch"]
    t = Tab(f"tuner's pick against torch.nn.functional.conv2d on the same input ({r['threads']} threads)",
            ["", "torch conv2d ms", f"{r['choice']} ms", "speedup p50", "p10 … p90 (per-round ratios)"])
    if v is None:
        t.rows.append(["tuner kept direct convolution", "", "", "1.00x", ""])
    else:
        t.rows.append([f"{L['c_in']}→{L['c_out']} @ {L['size']}x{L['size']}", _ms(v["torch_ms"]),
                       _ms(v["winograd_ms"]), f"{v['ratio_p50']:.2f}x", f"{v['ratio_p10']:.2f}x … {v['ratio_p90']:.2f}x"])
        t.caption = f"{v['runs']} interleaved rounds after 2 warm-up rounds"
    return tabs + [t]


def _tabs_conv_grid(r: dict[str, Any]) -> list[Tab]:
    names = ["direct"] + [f"F{t}" for t in r["tiles"]]
    t = Tab(f"3x3 conv C→C, direct vs Winograd: median ms ({r['threads']} threads, batch {r['batch']}); "
            f"✗ = over the {r['error_budget']:.0e} error budget",
            ["C", "H=W"] + names + ["choice", "speedup", "max err (accepted)"])
    for row in r["rows"]:
        c = row["candidates"]
        worst = max((c[k]["rel_error"] for k in names if k in c and c[k]["accepted"]), default=None)
        t.rows.append([str(row["channels"]), str(row["size"])]
                      + [(_ms(c[k]["latency_ms"]) + ("" if c[k]["accepted"] else " ✗")) if k in c else "" for k in names]
                      + [row["choice"], f"{row['speedup']:.2f}x", _err(worst)])
    return [t]


def _tabs_attention(r: dict[str, Any]) -> list[Tab]:
    impls = r["impls"]
    lat = Tab(f"attention latency, median ms (batch {r['batch']}, {r['heads']} heads, fp32, {r['threads']} threads, "
              f"blocks q {r['blocks']['q_block']} / k {r['blocks']['k_block']})", ["tokens", "head dim"] + impls
              + ["fastest"])
    mem = Tab("peak intermediate memory: analytic (ATen-visible, measured)", ["tokens", "head dim"] + impls,
              caption="SDPA's kernel workspace is internal to it: measured shows only what it allocates through ATen")
    err = Tab("relative error against a float64 reference", ["tokens", "head dim"] + impls)
    for row in r["rows"]:
        key = [str(row["seq_len"]), str(row["head_dim"])]
        c = row["impls"]
        lat.rows.append(key + [_ms(c[i]["latency_ms"]) for i in impls] + [row["fastest"]])
        mem.rows.append(key + [f"{_bytes(c[i]['peak_intermediate_bytes']['analytic'])} "
                               f"({_bytes(c[i]['peak_intermediate_bytes']['measured'])})" for i in impls])
        err.rows.append(key + [_err(c[i]["rel_error"]) for i in impls])
    return [lat, mem, err]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}%"


def _tabs_unet(r: dict[str, Any]) -> list[Tab]:
    cols = ["row", "ms / step (p10…p90)", "vs untouched", "vs row above", "peak tensors", "child peak RSS",
            "rel. error", "max abs", "what changed"]
    t = Tab(f"diffusers UNet2DConditionModel ({r['size']}: latent {'x'.join(map(str, r['latent']))}, "
            f"{r['text_tokens']} text tokens, {r['params'] / 1e6:.1f} M params, random weights), "
            f"{r['threads']} threads, {r['runs']} interleaved runs", cols,
            caption="peak tensors: " + r["memory"]["peak_tensor_bytes"] + "; child peak RSS: "
                    + r["memory"]["child_rss_mb"])
    for row in r["rows"]:
        lat = row["latency_ms"]
        rss = row.get("child_rss_mb")
        t.rows.append([row["label"], f"{_ms(lat['p50'])} ({_ms(lat['p10_p90'][0])}…{_ms(lat['p10_p90'][1])})",
                       _pct(row["change_vs_untouched"]), _pct(row["change_vs_previous"]),
                       _bytes(row["peak_tensor_bytes"]),
                       "—" if not rss else f"{rss['peak_mb']:.0f} MB (step +{rss['peak_mb'] - rss['built_mb']:.0f})",
                       _err(row["rel_error"]), f"{row['max_abs_error']:.1e}", row["changes"] or row["what"]])
    return [t]


def render(report: dict[str, Any]) -> Any:
    """Rich renderable (a Group of tables) of any report this module returns."""
    from rich.console import Group
    from rich.table import Table

    out = []
    for tab in tables(report):
        t = Table(title=tab.title, title_justify="left", caption=tab.caption or None, caption_justify="left")
        for c in tab.columns:
            t.add_column(c, overflow="fold")
        for row in tab.rows:
            t.add_row(*row)
        out.append(t)
    return Group(*out)


def markdown(report: dict[str, Any]) -> str:
    """Markdown tables of any report this module returns."""
    parts = []
    for tab in tables(report):
        lines = [f"**{tab.title}**", "", "| " + " | ".join(tab.columns) + " |",
                 "|" + "|".join("---" for _ in tab.columns) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in tab.rows]
        if tab.caption:
            lines += ["", f"_{tab.caption}_"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def _main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "unet-memory":
        return _unet_memory_child(argv[1])
    print("usage: python -m edgeopt.analyze.kernels unet-memory JSON (internal: the UNet table's memory child)",
          file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
