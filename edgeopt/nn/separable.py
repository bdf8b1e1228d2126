"""Depthwise-separable convolutions for your own models: the layer, width multipliers, the in-place rewrite of a
model's dense convolutions (the one `arch.depthwise` runs) and the exact MAC / FLOP / parameter saving.

    from edgeopt.nn import DepthwiseSeparableConv2d, replace_conv_with_depthwise_separable, compute_flops_reduction

    layer = DepthwiseSeparableConv2d(64, 128, kernel_size=3, stride=1, activation="relu6")
    n = replace_conv_with_depthwise_separable(model, min_channels=32)   # dense k×k convs swapped in place
    compute_flops_reduction(64, 128, 3, 56)["reduction_ratio"]         # 8.41
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Sequence

from edgeopt.nn import blocks

# torch is imported on first use (arch.depthwise imports this module and the pass registry stays torch-free):
# the class below resolves through the module-level __getattr__.
__all__ = ["DepthwiseSeparableConv2d", "Block", "apply_width_multiplier", "compute_flops_reduction",
           "flops_reduction", "ineligible", "replacement", "replace_conv_with_depthwise_separable"]
_BUILT: dict[str, Any] = {}


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def compute_flops_reduction(in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                            spatial_size: int | Sequence[int]) -> dict[str, float]:
    """What a depthwise-separable replacement saves on one k×k conv producing a `spatial_size` output.

    dense: H·W·Cin·Cout·k² MACs; separable: H·W·(Cin·k² + Cin·Cout) (depthwise k×k, then pointwise 1×1). FLOPs are
    2 × MACs (a multiply and an add each; no bias). `reduction_ratio` = dense / separable MACs = Cout·k² / (k² +
    Cout), independent of the spatial size. Parameters: Cin·Cout·k² against Cin·k² + Cin·Cout (no bias, no BN).
    A non-positive size raises ValueError naming it."""
    kh, kw = _pair(kernel_size)
    h, w = _pair(spatial_size)
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kh * kw),
                    ("spatial_size", h * w)):
        if v < 1:
            raise ValueError(f"compute_flops_reduction: {name} must be positive, got {v}")
    k2 = kh * kw
    dense = h * w * in_channels * out_channels * k2
    separable = h * w * (in_channels * k2 + in_channels * out_channels)
    dense_p, sep_p = in_channels * out_channels * k2, in_channels * k2 + in_channels * out_channels
    return {"dense_macs": dense, "separable_macs": separable, "dense_flops": 2 * dense,
            "separable_flops": 2 * separable, "dense_params": dense_p, "separable_params": sep_p,
            "reduction_ratio": dense / separable, "params_ratio": dense_p / sep_p}


def flops_reduction(in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                    spatial_size: int | Sequence[int]) -> float:
    """The MACs ratio dense / depthwise-separable (`compute_flops_reduction(...)["reduction_ratio"]`)."""
    return compute_flops_reduction(in_channels, out_channels, kernel_size, spatial_size)["reduction_ratio"]


def apply_width_multiplier(channels: int | Sequence[int], multiplier: float, divisor: int = 8
                           ) -> int | list[int]:
    """MobileNet's width multiplier: each channel count × `multiplier`, rounded to a multiple of `divisor` and never
    below 90 % of the scaled count (`blocks.make_divisible`). A list in, a list out."""
    if not multiplier > 0:
        raise ValueError(f"apply_width_multiplier: multiplier must be > 0, got {multiplier}")
    if isinstance(channels, int):
        return blocks.make_divisible(channels * multiplier, divisor)
    return [blocks.make_divisible(c * multiplier, divisor) for c in channels]


@dataclass(frozen=True)
class Block:
    """The block that replaces a conv: `separable` (depthwise k×k → BN → `act` → pointwise 1×1) or
    `inverted_residual` (MobileNetV2's, hidden channels = in × `expand_ratio` × `width`, ReLU6)."""

    block: Literal["separable", "inverted_residual"] = "separable"
    act: Literal["relu", "relu6", "silu", "gelu", "hardswish"] = "relu"
    expand_ratio: float = 2.0
    width: float = 1.0

    def __post_init__(self) -> None:
        if self.block not in ("separable", "inverted_residual"):
            raise ValueError(f"Block: field 'block': expected separable or inverted_residual, got {self.block!r}")
        if self.expand_ratio <= 0 or self.width <= 0:
            raise ValueError(f"Block: fields 'expand_ratio' and 'width' must be > 0, got {self.expand_ratio}, {self.width}")


def ineligible(conv: Any, min_channels: int, block: str = "separable") -> str | None:
    """Why `conv` cannot be replaced (None: it can): grouped, 1×1, too few channels, string padding or a
    non-zero padding mode, or (inverted residual) a stride other than 1 or 2."""
    if conv.groups != 1:
        return f"already grouped (groups={conv.groups})"
    if conv.kernel_size[0] * conv.kernel_size[1] == 1:
        return "1×1 kernel"
    if conv.in_channels < min_channels or conv.out_channels < min_channels:
        return f"{conv.in_channels}→{conv.out_channels} channels < min_channels {min_channels}"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"padding {conv.padding!r} / mode {conv.padding_mode} not handled"
    if block == "inverted_residual" and (conv.stride[0] != conv.stride[1] or conv.stride[0] not in (1, 2)):
        return f"stride {tuple(conv.stride)} not 1 or 2"
    return None


def replacement(conv: Any, spec: Block) -> Any:
    """The block that takes `conv`'s place (same channels, stride, padding, dilation; fresh weights)."""
    from torch import nn

    if spec.block == "inverted_residual":
        hidden = blocks.make_divisible(conv.in_channels * spec.expand_ratio * spec.width, 8)
        return blocks.InvertedResidual(conv.in_channels, conv.out_channels, conv.stride[0],
                                       expand_ratio=hidden / conv.in_channels, kernel_size=conv.kernel_size[0],
                                       act="relu6", padding=conv.padding, dilation=conv.dilation)
    return nn.Sequential(
        nn.Conv2d(conv.in_channels, conv.in_channels, conv.kernel_size, conv.stride, conv.padding,
                  dilation=conv.dilation, groups=conv.in_channels, bias=False),
        nn.BatchNorm2d(conv.in_channels),
        blocks.make_act(spec.act),
        nn.Conv2d(conv.in_channels, conv.out_channels, 1, bias=conv.bias is not None),
    )


def replace_conv_with_depthwise_separable(model: Any, min_channels: int = 32, block: Block | None = None,
                                          exclude: Any = None, report: dict[str, Any] | None = None) -> int:
    """Swap every eligible dense k×k `nn.Conv2d` of `model` (in place) for `replacement(conv, block)`; returns how
    many were replaced. `exclude(name) -> bool` skips modules by name; `report`, when given, is filled with
    {"replaced": {name: the original conv}, "skipped": {name: why}}. The new blocks start from random weights:
    train or distill afterwards (`arch.depthwise` does both)."""
    from torch import nn

    if min_channels < 1:
        raise ValueError(f"replace_conv_with_depthwise_separable: min_channels must be >= 1, got {min_channels}")
    spec = block or Block()
    replaced: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for name, conv in list(model.named_modules()):
        if not isinstance(conv, nn.Conv2d):
            continue
        why = "excluded" if exclude is not None and exclude(name) else ineligible(conv, min_channels, spec.block)
        if why:
            skipped[name] = why
            continue
        model.set_submodule(name, replacement(conv, spec))
        replaced[name] = conv
    if report is not None:
        report.update({"replaced": replaced, "skipped": skipped})
    return len(replaced)


def __getattr__(name: str) -> Any:
    if name == "DepthwiseSeparableConv2d":
        if not _BUILT:
            _BUILT.update(_build())
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build() -> dict[str, Any]:
    class DepthwiseSeparableConv2d(blocks.DepthwiseSeparable):
        """A k×k depthwise Conv2d (BN, `activation`) then a 1×1 pointwise Conv2d (BN, `activation`): the drop-in
        for a dense `nn.Conv2d(in_channels, out_channels, kernel_size, stride)` at about 1/`reduction_ratio` of
        its MACs (`compute_flops_reduction`). Padding defaults to 'same' for odd kernels."""

        def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                     activation: str = "relu6", padding: int | None = None, dilation: int = 1):
            for field_name, v in (("in_channels", in_channels), ("out_channels", out_channels),
                                  ("kernel_size", kernel_size), ("stride", stride)):
                if int(v) < 1:
                    raise ValueError(f"DepthwiseSeparableConv2d: {field_name} must be >= 1, got {v}")
            super().__init__(in_channels, out_channels, kernel_size, stride, padding=padding, dilation=dilation,
                             act=activation)

    return {"DepthwiseSeparableConv2d": DepthwiseSeparableConv2d}
