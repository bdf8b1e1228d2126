"""Winograd convolution F(m×m, 3×3): exact transform matrices, a swappable Conv2d module and a per-layer tile tuner.

Written by hand: no library offers Winograd convolution as a module that replaces an `nn.Conv2d`
(oneDNN and XNNPACK use it internally, out of reach). The transforms come from the Cook-Toom / Lavin & Gray
construction, computed in exact rational arithmetic from interpolation points (0, ±1, ±1/2, ±2, ±1/4, ... and
infinity), never pasted in:

    Y = A^T [ (G g G^T) ⊙ (B^T d B) ] A          (one α×α input tile d, α = m + r - 1)

With finite points a_0 .. a_{α-2} and f_j = Π_{l≠j} (a_j - a_l):
    A^T[i, j] = a_j^i                   A^T[m-1, ∞] = 1      (evaluate the output polynomial, transposed)
    G[j, k]   = a_j^k / |f_j|           G[∞, r-1]   = 1      (evaluate the filter polynomial)
    B^T[j, :] = sign(f_j) · coefficients of Π_{l≠j} (x - a_l)     B^T[∞, :] = coefficients of Π_l (x - a_l)
(B^T is the transposed Lagrange interpolation matrix with the 1/f_j moved into G.)

The module transforms its weights once (U = G g G^T, kept as (α², C_out, C_in)); cuts the padded input into
overlapping α×α tiles (stride m) and transforms them in one op, a stride-m convolution whose α² filters are
the rows of B^T ⊗ B^T (no `unfold`, so a swapped model exports to ONNX as Conv/MatMul/Reshape/Transpose);
does the element-wise stage as α² batched matrix products over channels; transforms back with one matrix
product by A^T ⊗ A^T and crops.

Backends of the module: "torch" (the PyTorch ops above; exports to ONNX, any dtype, autograd) and "native"
(`edgeopt.kernels.native.winograd_conv2d`, F2 and F4 only: one C++ pass writes the transformed input tiles
straight into the (α², C_in, tiles) layout, ATen's batched GEMM does the products, one pass transforms the
output tiles back with the bias and the crop; AVX2+FMA or scalar, fp32, inference). The native backend runs
for float32 CPU inputs when autograd is not recording and no export or compile is tracing the module; anything
else takes the "torch" path, which computes the same convolution.
"""

from __future__ import annotations

import copy
import math
from fractions import Fraction
from functools import lru_cache
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.kernels import native
from edgeopt.kernels.checks import error_budget as check_error_budget
from edgeopt.kernels.checks import one_of, pos_int
from edgeopt.kernels.layer_stats import capture_inputs, relative_error, time_interleaved

TILES: tuple[int, ...] = (2, 4, 6, 8)
BACKENDS: tuple[str, ...] = ("torch", "native")
R = 3  # filter size the module supports (the transforms work for any r)

Matrix = tuple[tuple[Fraction, ...], ...]


# ------------------------------------------------------------------ exact transforms
def interpolation_points(n: int) -> list[Fraction]:
    """The first `n` finite interpolation points: 0, 1, -1, 1/2, -1/2, 2, -2, 1/4, -1/4, 4, -4, ..."""
    pts = [Fraction(0)]
    k = 0
    while len(pts) < n:
        mags = [Fraction(1)] if k == 0 else [Fraction(1, 2**k), Fraction(2**k)]
        for mag in mags:
            pts += [mag, -mag]
        k += 1
    return pts[:n]


def _poly_from_roots(roots: Sequence[Fraction], length: int) -> list[Fraction]:
    """Coefficients (lowest degree first, padded to `length`) of Π (x - root)."""
    coeffs = [Fraction(1)]
    for a in roots:
        nxt = [Fraction(0)] * (len(coeffs) + 1)
        for i, c in enumerate(coeffs):
            nxt[i] -= a * c  # the -a·x^i term
            nxt[i + 1] += c  # the x^(i+1) term
        coeffs = nxt
    return coeffs + [Fraction(0)] * (length - len(coeffs))


@lru_cache(maxsize=None)
def winograd_matrices(m: int, r: int = R) -> tuple[Matrix, Matrix, Matrix]:
    """Exact (A^T, G, B^T) of F(m, r) as Fractions: shapes (m, α), (α, r), (α, α) with α = m + r - 1."""
    if m < 1 or r < 1:
        raise ValueError(f"m and r must be >= 1, got m={m}, r={r}")
    alpha = m + r - 1
    pts = interpolation_points(alpha - 1)
    f = [math.prod((a - b for b in pts if b != a), start=Fraction(1)) for a in pts]
    AT = [[a**i for a in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    G = [[a**k / abs(fj) for k in range(r)] for a, fj in zip(pts, f)] + [[Fraction(int(k == r - 1)) for k in range(r)]]
    BT = [[c * (1 if fj > 0 else -1) for c in _poly_from_roots([b for b in pts if b != a], alpha)]
          for a, fj in zip(pts, f)]
    BT.append(_poly_from_roots(pts, alpha))
    return tuple(map(tuple, AT)), tuple(map(tuple, G)), tuple(map(tuple, BT))


def transform_matrices(m: int, r: int = R, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, ...]:
    """(A^T, G, B^T) of F(m, r) as tensors of `dtype` (rounded once from the exact values)."""
    return tuple(torch.tensor([[float(x) for x in row] for row in mat], dtype=dtype)
                 for mat in winograd_matrices(m, r))


# ------------------------------------------------------------------ counts
def multiplications(m: int, r: int = R) -> dict[str, Any]:
    """Exact multiplications per m×m output tile and input channel: direct m²r² vs Winograd α² (and their ratio)."""
    if m < 1 or r < 1:
        raise ValueError(f"m and r must be >= 1, got m={m}, r={r}")
    direct, wino = m * m * r * r, (m + r - 1) ** 2
    return {"direct": direct, "winograd": wino, "ratio": Fraction(direct, wino)}


def flops_ratio(m: int, r: int = R) -> float:
    """How many times fewer multiplications the element-wise stage of F(m×m, r×r) does than direct convolution."""
    return float(multiplications(m, r)["ratio"])


def layer_multiplications(c_in: int, c_out: int, h_out: int, w_out: int, m: int | None, r: int = R) -> int:
    """Exact multiplications of one image through a layer: direct (m=None) or Winograd's element-wise stage.

    Winograd computes whole tiles, so ragged borders count as full tiles; transforms are not included.
    """
    if m is None:
        return c_in * c_out * h_out * w_out * r * r
    tiles = math.ceil(h_out / m) * math.ceil(w_out / m)
    return c_in * c_out * tiles * (m + r - 1) ** 2


# ------------------------------------------------------------------ the module
def winograd_supported(conv: Any) -> tuple[bool, str]:
    """Whether `conv` can run as Winograd F(m×m, 3×3), and if not, why (a short reason)."""
    if not isinstance(conv, nn.Conv2d):
        return False, f"{type(conv).__name__} is not a Conv2d"
    if tuple(conv.kernel_size) != (3, 3):
        return False, f"kernel {conv.kernel_size[0]}x{conv.kernel_size[1]} (only 3x3)"
    if tuple(conv.stride) != (1, 1):
        return False, f"stride {tuple(conv.stride)} (only stride 1)"
    if tuple(conv.dilation) != (1, 1):
        return False, f"dilation {tuple(conv.dilation)} (only dilation 1)"
    if conv.groups != 1:
        return False, f"groups={conv.groups} (only groups=1)"
    if not conv.weight.dtype.is_floating_point:
        return False, f"weight dtype {conv.weight.dtype} (only floating point)"
    return True, ""


def check_backend(backend: str, m: int) -> str:
    """`backend` when it can compute tile `m` (ValueError naming the field otherwise); "native" also needs the
    C++ kernels to load here (NativeUnavailable with the one-line reason otherwise)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend == "native":
        if m not in native.WINOGRAD_TILES:
            raise ValueError(f"backend: the native kernel computes F{' and F'.join(map(str, native.WINOGRAD_TILES))}"
                             f", not F{m}")
        native.load()
    return backend


class WinogradConv2d(nn.Module):
    """A 3×3, stride-1, groups-1 Conv2d computed as Winograd F(m×m, 3×3) (any padding and padding mode).

    Built from an `nn.Conv2d`; its weights are transformed once here (in float64, then cast), so later changes
    to the source conv are not seen. Buffers: `weight_transformed` (α², C_out, C_in) and `bias` (C_out) or None.
    `backend` "torch" or "native" (module docstring); "native" fails here, with the reason, where the C++
    kernels cannot be built.
    """

    def __init__(self, conv: nn.Conv2d, m: int = 4, backend: str = "torch"):
        super().__init__()
        self.train(conv.training)  # a swap keeps the model's train/eval mode
        ok, why = winograd_supported(conv)
        if not ok:
            raise ValueError(f"conv: cannot run as Winograd: {why}")
        one_of((m,), TILES, "m", "tile")
        self.backend = check_backend(backend, m)
        self.m, self.r, self.alpha = m, R, m + R - 1
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.padding_mode = conv.padding_mode
        self.pad = tuple(int(p) for p in conv._reversed_padding_repeated_twice)  # (left, right, top, bottom)
        dtype = conv.weight.dtype
        AT, G, BT = (t.to(conv.weight.device) for t in transform_matrices(m, R, torch.float64))
        a = self.alpha
        with torch.no_grad():
            g = conv.weight.detach().to(torch.float64)  # (C_out, C_in, 3, 3)
            U = G @ g @ G.T  # (C_out, C_in, α, α)
            U = U.permute(2, 3, 0, 1).reshape(a * a, self.out_channels, self.in_channels)  # (α², C_out, C_in)
        self.register_buffer("weight_transformed", U.to(dtype).contiguous())
        self.register_buffer("bias", None if conv.bias is None else conv.bias.detach().clone())
        # the 2-D transforms as one matrix each: vec(B^T d B) = (B^T ⊗ B^T) vec(d), vec(A^T M A) = (A^T ⊗ A^T) vec(M).
        # The input transform runs as a stride-m convolution whose α² filters are the rows of B^T ⊗ B^T: it cuts
        # the overlapping α×α tiles and transforms them in one op (no unfold, so the module exports to ONNX).
        BT2 = torch.kron(BT, BT)  # (α², α²)
        self.register_buffer("BT_filters", BT2.view(a * a, 1, a, a).to(dtype), persistent=False)  # (α², 1, α, α)
        self.register_buffer("AT2", torch.kron(AT, AT).to(dtype), persistent=False)  # (m², α²)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, tile=F({self.m}x{self.m},3x3), pad={self.pad}, "
                f"padding_mode={self.padding_mode!r}, backend={self.backend!r}")

    def _native_ops(self, x: torch.Tensor) -> Any | None:
        """The native operators when they apply to this call (module docstring), else None."""
        if self.backend != "native" or x.dtype != torch.float32 or x.device.type != "cpu":
            return None
        if self.weight_transformed.dtype != torch.float32 or (torch.is_grad_enabled() and x.requires_grad):
            return None
        if (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()
                or torch.compiler.is_exporting()):
            return None
        return native.ops_or_warn()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m, a = self.m, self.alpha
        left, right, top, bottom = self.pad
        if self.padding_mode != "zeros" and any(self.pad):
            x = F.pad(x, self.pad, mode=self.padding_mode)  # (N, C_in, Hp, Wp)
            left = right = top = bottom = 0
        ops = self._native_ops(x)
        if ops is not None:  # (N, C_out, Ho, Wo) in one native call
            return ops.winograd_conv2d(x.contiguous(), self.weight_transformed, self.bias,
                                       [left, right, top, bottom], m, native.use_scalar())
        C = x.shape[1]
        Ho = x.shape[2] + top + bottom - self.r + 1
        Wo = x.shape[3] + left + right - self.r + 1
        # tiles per column and per row: ceil, written with non-negative operands (ONNX integer Div truncates)
        th, tw = (Ho + m - 1) // m, (Wo + m - 1) // m
        # zero-pad so the tiles cover the output exactly; the extra rows/columns are cropped at the end
        x = F.pad(x, (left, right + tw * m - Wo, top, bottom + th * m - Ho))  # (N, C_in, th*m+2, tw*m+2)
        Hp, Wp = x.shape[2], x.shape[3]
        # each buffer is dropped as soon as the next exists (`extra_bytes` counts exactly these)
        V = F.conv2d(x.reshape(-1, 1, Hp, Wp), self.BT_filters, stride=m)  # (N*C_in, α², th, tw) tiles, transformed
        del x
        V = V.view(-1, C, a * a, th * tw).permute(2, 1, 0, 3).reshape(a * a, C, -1)  # (α², C_in, P), P = N*th*tw
        M = torch.bmm(self.weight_transformed, V)  # (α², C_out, C_in) @ (α², C_in, P) -> (α², C_out, P)
        del V
        Y = self.AT2 @ M.view(a * a, -1)  # (m², C_out*P) output tiles
        del M
        Y = Y.view(m, m, self.out_channels, -1, th, tw).permute(3, 2, 4, 0, 5, 1)  # (N, C_out, th, m, tw, m)
        Y = Y.reshape(-1, self.out_channels, th * m, tw * m)[:, :, :Ho, :Wo]  # (N, C_out, Ho, Wo)
        if self.bias is not None:
            Y = Y + self.bias.view(1, -1, 1, 1)  # (N, C_out, Ho, Wo)
        return Y

    def extra_bytes(self, input_shape: Sequence[int], threads: int | None = None) -> dict[str, int]:
        """Memory beyond direct convolution for one input of `input_shape` (N, C_in, H, W), in bytes.

        `weights`: transformed weights minus the original 3×3 weights. `tiles`, "torch" backend: the peak of
        the buffers the forward holds at once, in its order: padded input X and transformed tiles V; V twice
        (the convolution's output and its (α², C_in, P) copy); V and the products M (α², C_out, P); M and
        the output tiles Y (m², C_out, P); Y and its (N, C_out, th·m, tw·m) copy (plus the reflect/replicate/
        circular padded input, for those modes, while it is padded again). "native" backend: the kernel's
        scratch at its peak (`native.winograd_workspace_bytes` on `threads`, default the current intra-op
        threads; plus the padded input of a non-zero padding mode).
        """
        N, C, H, W = input_shape
        left, right, top, bottom = self.pad
        Ho, Wo = H + top + bottom - 2, W + left + right - 2
        th, tw = math.ceil(Ho / self.m), math.ceil(Wo / self.m)
        P = N * th * tw
        s = self.weight_transformed.element_size()
        a2, m2, Co = self.alpha**2, self.m**2, self.out_channels
        X = N * C * (th * self.m + 2) * (tw * self.m + 2)
        first = N * C * (H + top + bottom) * (W + left + right) if self.padding_mode != "zeros" and any(self.pad) else 0
        V, M, Y = a2 * C * P, a2 * Co * P, m2 * Co * P
        weights = (a2 - 9) * C * Co * s
        if self.backend == "native" and s == 4:
            pad = (0, 0, 0, 0) if first else self.pad
            shape = (N, C, H + top + bottom, W + left + right) if first else (N, C, H, W)
            tiles = first * s + native.winograd_workspace_bytes(shape, Co, self.m, pad,
                                                                threads or torch.get_num_threads())
        else:
            tiles = max(first + X, X + V, 2 * V, V + M, M + Y, 2 * Y) * s
        return {"weights": int(weights), "tiles": int(tiles), "total": int(weights + tiles)}


# ------------------------------------------------------------------ the tuner
def check_tiles(tiles: str | Sequence[Any]) -> tuple[int, ...]:
    """Output tiles m from TILES (a sequence or "2,4"); an unknown one is an ArgumentError listing the known ones."""
    return one_of(tiles, TILES, "tiles", "tile")


def check_tuner_args(tiles: str | Sequence[Any], error_budget: Any, runs: Any) -> tuple[int, ...]:
    """The tuner's arguments, checked once for every entry point (ArgumentError naming the field); the tiles."""
    check_error_budget(error_budget)
    pos_int(runs, "runs")
    return check_tiles(tiles)


def candidate_name(tile: int, backend: str) -> str:
    """The tuner's name of a Winograd candidate: "F4" (PyTorch ops) or "F4-native"."""
    return f"F{tile}" + ("-native" if backend == "native" else "")


def candidate_backend(tile: int, backend: str) -> str:
    """The backend a tile runs on when `backend` is asked for: "native" only for the tiles it computes."""
    return "native" if backend == "native" and tile in native.WINOGRAD_TILES else "torch"


def tune_layer(conv: nn.Conv2d, input_shape: Sequence[int], tiles: Sequence[int] = TILES, error_budget: float = 1e-5,
               runs: int = 5, threads: int | None = None, warmup: int = 1, seed: int = 0,
               backend: str = "torch") -> dict[str, Any]:
    """Measure direct convolution against each Winograd tile on one layer and pick the fastest within budget.

    For each candidate ("direct", "F2", "F4", ...; with `backend` "native" the tiles the C++ kernel computes
    run on it, named "F2-native", "F4-native"): its tile and backend, exact multiplications (one input,
    element-wise stage), their ratio to direct, median latency in ms (interleaved runs with `threads`
    intra-op threads, or the current setting), extra memory in bytes and the norm-wise relative error
    (`relative_error`) against a float64 reference on a seeded random input. Tiles over `error_budget` are
    refused with the reason; the choice is the fastest accepted candidate ("direct" is always accepted).
    """
    tiles = check_tuner_args(tiles, error_budget, runs)
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 4:
        raise ValueError(f"input_shape: expected (N, C_in, H, W), got {shape}")
    out: dict[str, Any] = {"input_shape": list(shape), "error_budget": float(error_budget),
                           "threads": int(threads or torch.get_num_threads()), "runs": runs}
    ok, why = winograd_supported(conv)
    if not ok:
        return {**out, "supported": False, "reason": why, "choice": "direct", "tile": None, "backend": None,
                "candidates": {}, "refused": {}}
    if shape[1] != conv.in_channels:
        raise ValueError(f"input_shape: {shape[1]} channels, the conv takes {conv.in_channels}")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64).to(conv.weight.dtype)  # (N, C_in, H, W)
    with torch.no_grad():
        ref = copy.deepcopy(conv).to(torch.float64)(x.to(torch.float64))  # (N, C_out, Ho, Wo) float64 reference
    _, c_out, h_out, w_out = ref.shape
    direct_mults = layer_multiplications(conv.in_channels, c_out, h_out, w_out, None) * shape[0]
    mods: dict[str, nn.Module] = {"direct": conv}
    for t in tiles:
        b = candidate_backend(t, backend)
        mods[candidate_name(t, b)] = WinogradConv2d(conv, t, b)
    cands: dict[str, dict[str, Any]] = {}
    with torch.no_grad():
        for name, mod in mods.items():
            tile = None if name == "direct" else mod.m
            mults = layer_multiplications(conv.in_channels, c_out, h_out, w_out, tile) * shape[0]
            extra = {"weights": 0, "tiles": 0, "total": 0} if tile is None else mod.extra_bytes(shape, threads)
            cands[name] = {"tile": tile, "backend": None if tile is None else mod.backend, "multiplications": mults,
                           "flops_ratio": direct_mults / mults, "extra_bytes": extra,
                           "rel_error": relative_error(mod(x), ref)}
    lat = time_interleaved({k: (lambda mod=mod: mod(x)) for k, mod in mods.items()}, runs=runs, warmup=warmup,
                           threads=threads)
    refused: dict[str, str] = {}
    for name, c in cands.items():
        c["latency_ms"] = lat[name]
        c["accepted"] = name == "direct" or c["rel_error"] <= error_budget
        if not c["accepted"]:
            refused[name] = f"relative error {c['rel_error']:.2e} > budget {error_budget:.0e}"
    best = min((n for n, c in cands.items() if c["accepted"]), key=lambda n: cands[n]["latency_ms"])
    return {**out, "supported": True, "reason": "", "output_shape": list(ref.shape), "candidates": cands,
            "refused": refused, "choice": best, "tile": cands[best]["tile"], "backend": cands[best]["backend"],
            "speedup": cands["direct"]["latency_ms"] / cands[best]["latency_ms"]}


def tune_model(model: nn.Module, example_input: Any, tiles: Sequence[int] = TILES, error_budget: float = 1e-5,
               runs: int = 5, threads: int | None = None, warmup: int = 1,
               backend: str = "torch") -> dict[str, dict[str, Any]]:
    """`tune_layer` (with `backend`) for every Conv2d of `model`, at the input shape each sees when `model` runs
    `example_input`.

    Returns {module name: tune_layer result}; ineligible convs and convs the example never reaches are
    listed with `supported: False` and the reason.
    """
    tiles = check_tuner_args(tiles, error_budget, runs)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    shapes = {n: tuple(args[0].shape) for n, (args, _) in capture_inputs(model, list(convs), example_input).items()}
    results: dict[str, dict[str, Any]] = {}
    for name, conv in convs.items():
        if name not in shapes:
            results[name] = {"supported": False, "reason": "not reached by the example input", "choice": "direct",
                             "tile": None, "backend": None, "candidates": {}, "refused": {}}
            continue
        results[name] = tune_layer(conv, shapes[name], tiles=tiles, error_budget=error_budget, runs=runs,
                                   threads=threads, warmup=warmup, backend=backend)
    return results
