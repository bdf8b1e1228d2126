"""arch.depthwise: replace eligible dense k×k Conv2d layers by depthwise-separable (or inverted-residual)
blocks, then recover accuracy by fine-tuning or by distillation from the original model."""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from edgeopt import train as tr
from edgeopt.artifact import Artifact, register_builder
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.nn import blocks
from edgeopt.passes.compress._common import (FineTune, derived, example_args, forward_with_hooks, layer_macs,
                                             matches, module_copy, param_count, task_data)
from edgeopt.passes.compress.losses import DistillLoss, freeze, make_loss
from edgeopt.train import TrainConfig


def flops_reduction(in_channels: int, out_channels: int, kernel_size: int | tuple[int, int],
                    spatial_size: int | tuple[int, int]) -> float:
    """Exact MACs ratio dense / depthwise-separable for one k×k conv producing a `spatial_size` output.

    dense: H·W·Cin·Cout·k², separable: H·W·(Cin·k² + Cin·Cout) (depthwise k×k then pointwise 1×1), so the
    ratio is Cout·k² / (k² + Cout) — independent of the spatial size, which is taken for clarity.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    h, w = (spatial_size, spatial_size) if isinstance(spatial_size, int) else spatial_size
    for name, v in (("in_channels", in_channels), ("out_channels", out_channels), ("kernel_size", kh * kw), ("spatial_size", h * w)):
        if v < 1:
            raise ValueError(f"flops_reduction: {name} must be positive, got {v}")
    dense = h * w * in_channels * out_channels * kh * kw
    separable = h * w * (in_channels * kh * kw + in_channels * out_channels)
    return dense / separable


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


@register("arch.depthwise")
class Depthwise(Pass):
    """Swap each eligible Conv2d (groups 1, kernel > 1×1, at least `min_channels` in and out, not excluded)
    for a block with the same input/output channels, stride, padding and dilation:

    - `separable`: depthwise k×k conv → BatchNorm → activation → pointwise 1×1 conv (the original conv's BN
      and activation still follow it);
    - `inverted_residual`: MobileNetV2's 1×1 expansion (× `expand_ratio` × `width`) → depthwise k×k →
      1×1 projection, each with BatchNorm (ReLU6 after the first two), shortcut where shapes allow.

    New blocks start from random weights; `recover: distill` trains the rewritten model to match the original
    (KD on logits / cosine on embeddings, plus the labels when the data has them), `finetune` trains on the
    task loss only. ctx.notes["arch.depthwise"] lists each replaced conv with `flops_reduction`'s predicted
    ratio next to the measured one, the skipped convs with their reason, and model MACs before/after.
    """

    class Config(FineTune):
        block: Literal["separable", "inverted_residual"] = "separable"
        min_channels: int = Field(default=16, ge=1)
        expand_ratio: float = Field(default=2.0, gt=0)
        width: float = Field(default=1.0, gt=0, description="width multiplier of the inverted residual's hidden channels")
        act: Literal["relu", "relu6", "silu", "gelu", "hardswish"] = "relu"
        exclude: tuple[str, ...] = ()
        recover: Literal["distill", "finetune", "none"] = "distill"
        temperature: float = Field(default=4.0, gt=0)
        alpha: float = Field(default=0.7, ge=0, le=1)
        train: TrainConfig = TrainConfig(epochs=5, patience=3, lr=2e-3)

        @model_validator(mode="after")
        def _width_needs_ir(self) -> "Depthwise.Config":
            if self.width != 1.0 and self.block != "inverted_residual":
                raise ValueError("width scales the inverted residual's hidden channels: set block: inverted_residual")
            return self

        def replacement_block(self) -> Block:
            return Block(block=self.block, act=self.act, expand_ratio=self.expand_ratio, width=self.width)

    accepts = ("torch",)
    produces = "torch"
    tolerance = None
    tolerance_reason = ("new blocks start from random weights, so the function changes: recovery is scored on "
                        "held-out data (accuracy, or cosine to the original) and never ends below its starting score "
                        "(score_after_recovery)")

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import torch

        cfg = self.config
        original = module_copy(art, self.name)
        model = copy.deepcopy(original)
        example = example_args(art, ctx, self.name)
        macs_before = layer_macs(model, example)
        shapes = _conv_output_shapes(model, example)
        torch.manual_seed(cfg.train.seed)
        replaced, skipped = {}, {}
        block = cfg.replacement_block()
        for name, conv in list(model.named_modules()):
            if not isinstance(conv, torch.nn.Conv2d):
                continue
            why = _ineligible(name, conv, cfg)
            if why:
                skipped[name] = why
                continue
            model.set_submodule(name, replacement(conv, block))
            hw = shapes.get(name, (1, 1))
            replaced[name] = {"in": conv.in_channels, "out": conv.out_channels, "kernel": list(conv.kernel_size),
                              "output_hw": list(hw),
                              "predicted_ratio": flops_reduction(conv.in_channels, conv.out_channels, conv.kernel_size, hw)}
        macs_after = layer_macs(model, example)
        for name, rec in replaced.items():
            after = sum(v for k, v in macs_after.items() if k.startswith(name + "."))
            rec["measured_ratio"] = macs_before[name] / after if after else None
        notes: dict[str, Any] = {"block": cfg.block, "replaced": replaced, "skipped": skipped,
                                 "macs_before": sum(macs_before.values()), "macs_after": sum(macs_after.values()),
                                 "params_before": param_count(original), "params_after": param_count(model)}
        notes["model_macs_ratio"] = notes["macs_before"] / max(1, notes["macs_after"])
        if not replaced:
            ctx.warnings.append(f"{self.name}: no eligible Conv2d (groups 1, kernel > 1, ≥ {cfg.min_channels} channels)")
        elif cfg.recover != "none" and cfg.train.epochs > 0:
            teacher = freeze(original)
            data = task_data(art, ctx, cfg, teacher, self.name)
            fit_data, val = data.split(cfg.val_fraction, seed=cfg.train.seed)
            loss_fn = None
            if cfg.recover == "distill":
                loss_fn = make_loss(teacher, DistillLoss.for_outputs(data.labelled, cfg.temperature, cfg.alpha))
            notes["score_original"] = tr.evaluate(teacher, val)
            notes["score_before_recovery"] = tr.evaluate(model, val)
            result = tr.fit(model, fit_data, cfg.train, loss_fn=loss_fn, val=val, progress=ctx.progress,
                            description=f"{self.name} recovery ({cfg.recover})")
            notes["score_after_recovery"] = tr.evaluate(model, val)
            notes["metric"] = "accuracy" if data.labelled else "cosine_to_input"
            notes["fit"] = result.to_dict()
        ctx.notes[self.name] = notes
        rebuild = {"replaced": list(replaced), **asdict(block)}
        return derived(model, art, ("arch.depthwise", rebuild), depthwise_replaced=len(replaced))


def _ineligible(name: str, conv: Any, cfg: Depthwise.Config) -> str | None:
    if matches(name, cfg.exclude):
        return "excluded"
    if conv.groups != 1:
        return f"already grouped (groups={conv.groups})"
    if conv.kernel_size[0] * conv.kernel_size[1] == 1:
        return "1×1 kernel"
    if conv.in_channels < cfg.min_channels or conv.out_channels < cfg.min_channels:
        return f"{conv.in_channels}→{conv.out_channels} channels < min_channels {cfg.min_channels}"
    if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
        return f"padding {conv.padding!r} / mode {conv.padding_mode} not handled"
    if cfg.block == "inverted_residual" and (conv.stride[0] != conv.stride[1] or conv.stride[0] not in (1, 2)):
        return f"stride {tuple(conv.stride)} not 1 or 2"
    return None


def replacement(conv: Any, spec: Block) -> Any:
    """The block that takes `conv`'s place (same channels, stride, padding, dilation)."""
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


@register_builder("arch.depthwise")
def rebuild_depthwise(parent: Artifact, args: dict[str, Any], ctx: Any) -> Any:
    """The input model with the convs `args["replaced"]` swapped for `replacement` blocks of the recorded
    block / act / expand_ratio / width (fresh weights: the saved ones are loaded afterwards)."""
    model = module_copy(parent, "arch.depthwise")
    how = Block(block=args["block"], act=args["act"], expand_ratio=args["expand_ratio"], width=args["width"])
    for name in args["replaced"]:
        model.set_submodule(name, replacement(model.get_submodule(name), how))
    return model


def _conv_output_shapes(model: Any, example: tuple[Any, ...]) -> dict[str, tuple[int, int]]:
    import torch

    shapes: dict[str, tuple[int, int]] = {}
    forward_with_hooks(model, example, (torch.nn.Conv2d,),
                       lambda n: lambda mod, i, o: shapes.__setitem__(n, (int(o.shape[-2]), int(o.shape[-1]))))
    return shapes
