"""Building blocks shared by the CNN zoo and the compression passes: Conv+BN+activation, the depthwise-separable
block, MobileNetV2's InvertedResidual and the ResNet BasicBlock."""

from __future__ import annotations

from typing import Any

# torch is imported on first use (the pass registry imports this module; `import edgeopt` and the registry
# stay torch-free): the names below resolve through the module-level __getattr__.
__all__ = ["ACTIVATIONS", "make_act", "make_divisible", "ConvBNAct", "DepthwiseSeparable", "InvertedResidual",
           "BasicBlock"]
_BUILT: dict[str, Any] = {}


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never below 90% of `v` (MobileNet's rule)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def __getattr__(name: str) -> Any:
    if name in __all__:
        if not _BUILT:
            _BUILT.update(_build())
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build() -> dict[str, Any]:
    import torch
    from torch import nn

    ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "relu6": nn.ReLU6, "silu": nn.SiLU, "gelu": nn.GELU,
                                               "hardswish": nn.Hardswish, "identity": nn.Identity}

    def make_act(name: str) -> nn.Module:
        """An activation module by name (see ACTIVATIONS); unknown names raise ValueError listing the known ones."""
        if name not in ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
        cls = ACTIVATIONS[name]
        return cls(inplace=True) if cls in (nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish) else cls()

    class ConvBNAct(nn.Sequential):
        """Conv2d (no bias) → BatchNorm2d → activation; `padding` defaults to 'same' for odd kernels."""

        def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 1,
                     act: str = "relu6", padding: int | None = None, dilation: int = 1):
            if padding is None:
                padding = (kernel_size - 1) // 2 * dilation
            super().__init__(
                nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, dilation=dilation, groups=groups, bias=False),
                nn.BatchNorm2d(out_ch),
                make_act(act),
            )

    class DepthwiseSeparable(nn.Sequential):
        """A k×k depthwise conv (BN, activation) then a 1×1 pointwise conv (BN, activation): the drop-in for a
        dense k×k Conv2d with the same in/out channels, stride, padding and dilation."""

        def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, padding: Any = None,
                     dilation: int = 1, act: str = "relu", pointwise_act: bool = True):
            super().__init__()
            self.depthwise = ConvBNAct(in_ch, in_ch, kernel_size, stride, groups=in_ch, act=act,
                                       padding=padding, dilation=dilation)
            self.pointwise = ConvBNAct(in_ch, out_ch, 1, act=act if pointwise_act else "identity")

    class InvertedResidual(nn.Module):
        """MobileNetV2's block: 1×1 expansion (BN, ReLU6) → 3×3 depthwise (BN, ReLU6) → 1×1 linear projection (BN),
        with the identity shortcut when stride is 1 and the channel counts match."""

        def __init__(self, in_ch: int, out_ch: int, stride: int = 1, expand_ratio: float = 6, kernel_size: int = 3,
                     act: str = "relu6", padding: Any = None, dilation: int = 1):
            super().__init__()
            if stride not in (1, 2):
                raise ValueError(f"InvertedResidual: stride must be 1 or 2, got {stride}")
            hidden = int(round(in_ch * expand_ratio))
            self.use_res = stride == 1 and in_ch == out_ch
            layers: list[nn.Module] = []
            if expand_ratio != 1:
                layers.append(ConvBNAct(in_ch, hidden, 1, act=act))
            layers += [ConvBNAct(hidden, hidden, kernel_size, stride, groups=hidden, act=act, padding=padding,
                                 dilation=dilation),
                       nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch)]
            self.conv = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.conv(x) if self.use_res else self.conv(x)  # (B, out_ch, H/stride, W/stride)

    class BasicBlock(nn.Module):
        """ResNet's basic block: two 3×3 convs with BN (ReLU between and after), 1×1 projection shortcut when the
        shape changes."""

        def __init__(self, in_ch: int, out_ch: int, stride: int = 1):
            super().__init__()
            self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(out_ch)
            self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(out_ch)
            self.relu = nn.ReLU(inplace=True)
            self.shortcut = nn.Identity()
            if stride != 1 or in_ch != out_ch:
                self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.bn1(self.conv1(x)))  # (B, out_ch, H/s, W/s)
            out = self.bn2(self.conv2(out))
            return self.relu(out + self.shortcut(x))

    return {"ACTIVATIONS": ACTIVATIONS, "make_act": make_act, "ConvBNAct": ConvBNAct,
            "DepthwiseSeparable": DepthwiseSeparable, "InvertedResidual": InvertedResidual, "BasicBlock": BasicBlock}
