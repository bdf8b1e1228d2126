"""arch.depthwise: replace eligible dense k×k Conv2d layers by depthwise-separable (or inverted-residual)
blocks, then recover accuracy by fine-tuning or by distillation from the original model."""

from __future__ import annotations

import copy
from dataclasses import asdict
from typing import Any, Literal

from pydantic import Field, model_validator

from edgeopt import train as tr
from edgeopt.artifact import Artifact, register_builder
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.nn.separable import Block, flops_reduction, replace_conv_with_depthwise_separable, replacement
from edgeopt.passes.compress._common import (FineTune, derived, example_args, forward_with_hooks, layer_macs,
                                             matches, module_copy, param_count, task_data)
from edgeopt.passes.compress.losses import DistillLoss, freeze, make_loss
from edgeopt.train import TrainConfig


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
        block = cfg.replacement_block()
        report: dict[str, Any] = {}
        replace_conv_with_depthwise_separable(model, cfg.min_channels, block,
                                              exclude=lambda n: matches(n, cfg.exclude), report=report)
        replaced, skipped = {}, report["skipped"]
        for name, conv in report["replaced"].items():
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
