"""Multiplications a call actually performs, counted from the ATen ops it runs (shapes seen at run time).

A TorchDispatchMode sees the ATen ops a call runs, below autograd: some composite ops whole, some in pieces,
depending on the op and the torch version (in torch 2.13 `F.conv2d` arrives as `aten.conv2d`, `F.linear`
as `aten.linear`, `@` as `aten.matmul`; elsewhere as `aten.convolution`, `aten.mm`, `aten.bmm`). An op the
mode sees whole runs with the mode off, so its pieces are never counted again. It counts the scalar
multiplications of the ops with a product in them, from the shapes of their operands and results:

- mm, addmm, bmm, baddbmm, matmul, linear: output elements × the reduction length (n×k @ k×p: n·k·p);
- convolution, conv1d/2d/3d: output elements × (C_in / groups) × kernel elements; transposed convolutions:
  input elements × (C_out / groups) × kernel elements;
- mul (element-wise, not by a Python scalar): output elements.

The scalings of addmm / baddbmm by alpha and beta are not counted (they are 1 in every call here). What a
kernel does inside itself (oneDNN's own Winograd, say) is invisible: this counts the operations as called.
Used to check the Winograd module's multiplication counts against theory without the formula the module's
own docs are written from (`benchmarks/kernels.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable

import torch
from torch import nn

from edgeopt.kernels.winograd import WinogradConv2d

CONV_OPS = ("convolution", "_convolution", "conv1d", "conv2d", "conv3d")  # aten.convolution: transposed or not
CONV_TRANSPOSE_OPS = ("conv_transpose1d", "conv_transpose2d", "conv_transpose3d")


@dataclass
class OpCall:
    """One counted ATen op: its name (overload packet, e.g. "bmm"), operand shapes and multiplications."""

    op: str
    shapes: list[list[int]]
    multiplications: int


@dataclass
class MultiplicationCount:
    """Every counted op of one call, in order; `by_op` sums them per op name."""

    calls: list[OpCall] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(c.multiplications for c in self.calls)

    @property
    def by_op(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.calls:
            out[c.op] = out.get(c.op, 0) + c.multiplications
        return out

    def of(self, *ops: str) -> int:
        """Multiplications of the calls of the named ops (e.g. `of("bmm", "baddbmm")`)."""
        return sum(c.multiplications for c in self.calls if c.op in ops)


def _shape(t: Any) -> list[int]:
    return list(t.shape) if isinstance(t, torch.Tensor) else []


def op_multiplications(op: str, args: tuple, kwargs: dict, out: Any) -> int | None:
    """Multiplications of one ATen op (by overload-packet name) from its arguments and result; None if it has
    no product in it."""
    if op in ("mm", "bmm", "matmul", "addmm", "baddbmm", "linear"):
        a = args[1] if op in ("addmm", "baddbmm") else args[0]  # addmm(bias, a, b)
        k = a.shape[-1]  # the reduction length (a 1-D operand's only dim)
        return int(out.numel() * k)
    if op in CONV_OPS or op in CONV_TRANSPOSE_OPS:
        x, w = args[0], args[1]
        transposed = op in CONV_TRANSPOSE_OPS or (op.endswith("convolution") and len(args) > 6 and bool(args[6]))
        kernel = math.prod(w.shape[2:])
        if transposed:  # weight (C_in, C_out / groups, *k): every input element meets C_out / groups · k weights
            return int(x.numel() * w.shape[1] * kernel)
        return int(out.numel() * w.shape[1] * kernel)  # weight (C_out, C_in / groups, *k)
    if op == "mul":
        if all(isinstance(a, torch.Tensor) for a in args[:2]):
            return int(out.numel())
        return None
    return None


def count_multiplications(fn: Callable[[], Any]) -> tuple[Any, MultiplicationCount]:
    """Run `fn()` under inference mode and return (its result, the multiplications of every op it ran)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    count = MultiplicationCount()

    class _Count(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            op = func.overloadpacket.__name__
            n = op_multiplications(op, args, kwargs, out)
            if n is not None:
                count.calls.append(OpCall(op, [_shape(a) for a in args if isinstance(a, torch.Tensor)], n))
            return out

    with torch.inference_mode(), _Count():
        out = fn()
    return out, count


def winograd_multiplications(m: int, c_in: int = 8, c_out: int = 16, size: int = 24) -> dict[str, Any]:
    """Multiplications counted while direct convolution and Winograd F(m×m, 3×3) run on one (1, c_in, size,
    size) input of a 3×3, padding-1 conv: direct (`aten.convolution`), Winograd's element-wise stage (the
    batched matrix products over channels, `aten.bmm`), its input transform (a convolution) and its output
    transform (a matrix product). `ratio` = direct / element-wise stage as an exact fraction: 9m²/(m+2)²
    when `size` is a multiple of m (whole tiles)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(c_in, c_out, 3, padding=1).eval()
    wino = WinogradConv2d(conv, m)
    x = torch.randn(1, c_in, size, size)
    y0, direct = count_multiplications(lambda: conv(x))
    y1, w = count_multiplications(lambda: wino(x))
    elementwise = w.of("bmm", "baddbmm")
    return {"m": m, "c_in": c_in, "c_out": c_out, "size": size, "direct": direct.of(*CONV_OPS),
            "elementwise": elementwise, "input_transform": w.of(*CONV_OPS),
            "output_transform": w.of("mm", "addmm", "matmul"), "winograd_total": w.total,
            "ratio": Fraction(direct.of(*CONV_OPS), elementwise) if elementwise else None,
            "calls": [(c.op, c.shapes, c.multiplications) for c in w.calls],
            "max_abs_diff": float((y0 - y1).abs().max())}


__all__ = ["OpCall", "MultiplicationCount", "op_multiplications", "count_multiplications", "winograd_multiplications"]
