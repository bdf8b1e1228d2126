"""Fused normalization + activation: GroupNorm + SiLU/GELU and LayerNorm + GELU as single modules.

Written by hand: PyTorch has no fused GroupNorm+activation or LayerNorm+activation module to swap in (its
Inductor compiler can generate one, which the "compile" backend here uses).

Backends:
- "eager": PyTorch's native normalization kernel (one statistics pass, then normalize and affine in one
  pass writing y) followed by the activation applied in place on y: one output tensor instead of two, and
  no separate read-write pass into a fresh allocation. (A hand-vectorized variant, statistics by sum and sum
  of squares, normalize+affine folded into one per-channel `addcmul`, then the in-place activation, was
  measured slower than the native kernel on this CPU: 2.0 ms against 1.2 ms at (1, 320, 64, 64), fp32,
  1 thread; `torch.var_mean` alone took 11 ms there. So eager mode uses the native kernel.)
- "compile": the same function through `torch.compile`: Inductor generates one C++ kernel with the
  reduction and the element-wise tail (needs a C++ compiler, gcc here). It compiles on first call, about
  25 s cold and 3 s with a warm Inductor cache, and again for each new input shape.
- "native": edgeopt's C++ kernel (`edgeopt.kernels.native`, AVX2+FMA or scalar, chosen at run time): per
  (sample, group) or row one statistics pass and one pass that normalizes, applies the affine and the
  activation and writes y; nothing else is allocated. Compiled once per machine and torch version (about
  a minute) and cached. It runs for float32 CPU inputs when autograd is not recording (forward only);
  anything else, or a machine where the kernels cannot be built (warned once, with the reason), takes the
  "eager" path, which gives the same numbers.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.kernels import native

ACTS: tuple[str, ...] = ("silu", "gelu", "gelu_tanh")
BACKENDS: tuple[str, ...] = ("eager", "compile", "native")


def act_name(module: Any) -> str | None:
    """The fused-activation name of an activation module (nn.SiLU, nn.GELU with either approximation), else None."""
    if isinstance(module, nn.SiLU):
        return "silu"
    if isinstance(module, nn.GELU):
        return "gelu_tanh" if module.approximate == "tanh" else "gelu"
    return None


def _act_(y: torch.Tensor, act: str) -> torch.Tensor:
    """Apply `act` to y in place (y is a fresh tensor the caller owns; out of place when autograd records)."""
    if y.requires_grad:
        return F.silu(y) if act == "silu" else F.gelu(y, approximate="tanh" if act == "gelu_tanh" else "none")
    if act == "silu":
        return F.silu(y, inplace=True)
    if act == "gelu":
        return torch.ops.aten.gelu_(y)
    return torch.ops.aten.gelu_(y, approximate="tanh")


def _check_act(act: str) -> str:
    if act not in ACTS:
        raise ValueError(f"act: unknown activation {act!r}; known: {', '.join(ACTS)}")
    return act


def _check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; known: {', '.join(BACKENDS)}")
    return backend


def group_norm_act(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                   eps: float = 1e-5, act: str = "silu") -> torch.Tensor:
    """act(group_norm(x)) for x (N, C, *): PyTorch's native kernel, then the activation in place on its output."""
    y = F.group_norm(x, num_groups, weight, bias, eps)  # (N, C, *) statistics and normalize+affine in one kernel
    return _act_(y, act)  # (N, C, *) in place


def layer_norm_act(x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None,
                   bias: torch.Tensor | None, eps: float = 1e-5, act: str = "gelu") -> torch.Tensor:
    """act(layer_norm(x)) over the trailing `normalized_shape` dims, the activation applied in place."""
    y = F.layer_norm(x, normalized_shape, weight, bias, eps)  # (..., *normalized_shape) one native kernel
    return _act_(y, act)  # (..., *normalized_shape) in place


def _native_ops(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> Any | None:
    """The native operators when they apply to these tensors (float32, CPU, autograd not recording), else None."""
    tensors = [t for t in (x, weight, bias) if t is not None]
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in tensors):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None
    return native.ops_or_warn()


def group_norm_act_native(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None, bias: torch.Tensor | None,
                          eps: float = 1e-5, act: str = "silu") -> torch.Tensor:
    """act(group_norm(x)) by the native one-pass kernel where it applies, else by `group_norm_act`."""
    ops = _native_ops(x, weight, bias)
    if ops is None:
        return group_norm_act(x, num_groups, weight, bias, eps, act)
    return ops.group_norm_act(x.contiguous(), num_groups, weight, bias, float(eps), act,
                              native.use_scalar())  # (N, C, *)


def layer_norm_act_native(x: torch.Tensor, normalized_shape: tuple[int, ...], weight: torch.Tensor | None,
                          bias: torch.Tensor | None, eps: float = 1e-5, act: str = "gelu") -> torch.Tensor:
    """act(layer_norm(x)) by the native one-pass kernel where it applies, else by `layer_norm_act`."""
    ops = _native_ops(x, weight, bias)
    if ops is None:
        return layer_norm_act(x, normalized_shape, weight, bias, eps, act)
    return ops.layer_norm_act(x.contiguous(), list(normalized_shape), weight, bias, float(eps), act,
                              native.use_scalar())  # (..., *normalized_shape)


_COMPILED: dict[str, Callable[..., torch.Tensor]] = {}


def compiled(name: str) -> Callable[..., torch.Tensor]:
    """`group_norm_act` or `layer_norm_act` through torch.compile (created once per process, compiled per shape)."""
    if name not in _COMPILED:
        fn = {"group_norm_act": group_norm_act, "layer_norm_act": layer_norm_act}[name]
        _COMPILED[name] = torch.compile(fn, dynamic=False)
    return _COMPILED[name]


def backend_fn(backend: str, name: str) -> Callable[..., torch.Tensor]:
    """The function that computes `name` ("group_norm_act" or "layer_norm_act") with `backend`."""
    if backend == "compile":
        return compiled(name)
    if backend == "native":
        return {"group_norm_act": group_norm_act_native, "layer_norm_act": layer_norm_act_native}[name]
    return {"group_norm_act": group_norm_act, "layer_norm_act": layer_norm_act}[name]


def _pair_act(norm: nn.Module, act: nn.Module, norm_cls: type) -> str:
    """The activation name of a (norm, act) pair to fuse, or ValueError naming both types."""
    name = act_name(act)
    if not isinstance(norm, norm_cls) or name is None:
        raise ValueError(f"norm, act: expected nn.{norm_cls.__name__} and nn.SiLU/nn.GELU, got "
                         f"{type(norm).__name__} and {type(act).__name__}")
    return name


def _copy_affine(norm: nn.Module, new: nn.Module) -> nn.Module:
    """`new` with copies of `norm`'s affine weight and bias (where it has them) and its train/eval mode."""
    for attr in ("weight", "bias"):
        p = getattr(norm, attr, None)
        if p is not None:
            setattr(new, attr, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
    return new.train(norm.training)


class GroupNormAct(nn.Module):
    """GroupNorm followed by SiLU or GELU as one module (same `weight`/`bias` parameters as nn.GroupNorm)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 act: str = "silu", backend: str = "eager"):
        super().__init__()
        if num_channels % num_groups:
            raise ValueError(f"num_groups: {num_groups} does not divide num_channels {num_channels}")
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, affine
        self.act = _check_act(act)
        self.backend = _check_backend(backend)
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine else None

    @classmethod
    def from_modules(cls, norm: nn.GroupNorm, act: nn.Module, backend: str = "eager") -> GroupNormAct:
        """The fused module of an nn.GroupNorm and the activation module that follows it (weights copied)."""
        name = _pair_act(norm, act, nn.GroupNorm)
        return _copy_affine(norm, cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine, name, backend))

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, act={self.act!r}, backend={self.backend!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = backend_fn(self.backend, "group_norm_act")
        return fn(x, self.num_groups, self.weight, self.bias, self.eps, self.act)  # (N, C, *)


class LayerNormAct(nn.Module):
    """LayerNorm followed by GELU (or SiLU) as one module (same `weight`/`bias` parameters as nn.LayerNorm)."""

    def __init__(self, normalized_shape: int | tuple[int, ...], eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, act: str = "gelu", backend: str = "eager"):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.act = _check_act(act)
        self.backend = _check_backend(backend)
        self.weight = nn.Parameter(torch.ones(shape)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(shape)) if elementwise_affine and bias else None

    @classmethod
    def from_modules(cls, norm: nn.LayerNorm, act: nn.Module, backend: str = "eager") -> LayerNormAct:
        """The fused module of an nn.LayerNorm and the activation module that follows it (weights copied)."""
        name = _pair_act(norm, act, nn.LayerNorm)
        new = cls(norm.normalized_shape, norm.eps, norm.elementwise_affine, norm.bias is not None, name, backend)
        return _copy_affine(norm, new)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, act={self.act!r}, backend={self.backend!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fn = backend_fn(self.backend, "layer_norm_act")
        return fn(x, self.normalized_shape, self.weight, self.bias, self.eps, self.act)  # (..., *normalized_shape)


def fuse_pair(norm: nn.Module, act: nn.Module, backend: str = "eager") -> nn.Module | None:
    """The fused module for (norm, act), or None when the pair is not one this module fuses."""
    if act_name(act) is None:
        return None
    if isinstance(norm, nn.GroupNorm):
        return GroupNormAct.from_modules(norm, act, backend)
    if isinstance(norm, nn.LayerNorm):
        return LayerNormAct.from_modules(norm, act, backend)
    return None
