"""prune.magnitude: unstructured L1 (magnitude) weight pruning to a sparsity target, global or per layer, made
permanent (the zeros are written into the dense weights; no masks or hooks stay behind)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.measure.size import _module_blocks, deflated_size
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.compress._common import derived, matches, module_copy

LAYER_KINDS = ("linear", "conv", "embedding")

DENSE_NOTE = ("unstructured zeros stay in dense tensors: a dense runtime (ONNX Runtime, PyTorch) multiplies them "
              "like any other value, so expect no speed-up; the gain is in compressed size (zipped_bytes)")


@register("prune.magnitude")
class PruneMagnitude(Pass):
    """Zero the smallest-magnitude weights of Linear / Conv (/ Embedding) layers until `sparsity` of them are 0.

    `scope: global` ranks all targeted weights together (layers end up with different sparsities);
    `scope: layer` prunes each layer to `sparsity`. Biases, norms and excluded layers are untouched.
    ctx.notes["prune.magnitude"] records the target, the sparsity actually reached (over the targeted weights
    and over all parameters), the per-layer sparsity and the deflate-compressed size before and after.
    """

    class Config(PassConfig):
        sparsity: float = Field(default=0.5, ge=0, lt=1, description="fraction of targeted weights set to zero, in [0, 1)")
        scope: Literal["global", "layer"] = "global"
        layers: tuple[Literal["linear", "conv", "embedding"], ...] = ("linear", "conv")
        exclude: tuple[str, ...] = Field(default=(), description="module names or fnmatch patterns left dense")

    accepts = ("torch",)
    produces = "torch"
    tolerance = None
    tolerance_reason = ("zeroing weights changes the function: checked instead by the sparsity reached and by every "
                        "surviving weight keeping its value")

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import torch

        cfg = self.config
        model = module_copy(art, self.name)
        targets = targeted_weights(model, cfg.layers, cfg.exclude)
        if not targets:
            raise PassError(f"{self.name}: no {'/'.join(cfg.layers)} layers to prune (after exclude)")
        with torch.no_grad():
            if cfg.scope == "global":
                flat = torch.cat([w.detach().abs().reshape(-1) for _, w in targets])  # (N,)
                k = int(round(cfg.sparsity * flat.numel()))
                if k:
                    mask = torch.ones_like(flat, dtype=torch.bool)
                    mask[torch.topk(flat, k, largest=False, sorted=False).indices] = False
                    offset = 0
                    for _, w in targets:
                        n = w.numel()
                        w.mul_(mask[offset:offset + n].view_as(w))
                        offset += n
            else:
                for _, w in targets:
                    k = int(round(cfg.sparsity * w.numel()))
                    if k:
                        idx = torch.topk(w.detach().abs().reshape(-1), k, largest=False, sorted=False).indices
                        w.view(-1)[idx] = 0.0
        stats = sparsity_stats(model, targets)
        zipped_before = deflated_size(_module_blocks(art.module))
        zipped_after = deflated_size(_module_blocks(model))
        ctx.notes[self.name] = {
            "target": cfg.sparsity, "scope": cfg.scope, **stats,
            "zipped_bytes_before": zipped_before, "zipped_bytes_after": zipped_after,
            "zipped_ratio": zipped_after / max(1, zipped_before), "runtime_note": DENSE_NOTE,
        }
        return derived(model, art, ("copy", {}), sparsity=stats["sparsity"])


def targeted_weights(model: Any, kinds: tuple[str, ...], exclude: tuple[str, ...]) -> list[tuple[str, Any]]:
    """(module name, weight parameter) of every Linear / Conv / Embedding layer of the wanted kinds, not excluded."""
    from torch import nn

    types: tuple[type, ...] = ()
    if "linear" in kinds:
        types += (nn.Linear,)
    if "conv" in kinds:
        types += (nn.modules.conv._ConvNd,)
    if "embedding" in kinds:
        types += (nn.Embedding,)
    seen: set[int] = set()
    out = []
    for name, m in model.named_modules():
        w = getattr(m, "weight", None)
        if isinstance(m, types) and w is not None and not matches(name, exclude) and id(w) not in seen:
            seen.add(id(w))  # tied weights are pruned once
            out.append((name, w))
    return out


def sparsity_stats(model: Any, targets: list[tuple[str, Any]]) -> dict[str, Any]:
    """Zeros among the targeted weights (`sparsity`), among all parameters (`overall_sparsity`), per layer."""
    zeros = sum(int((w == 0).sum()) for _, w in targets)
    total = sum(w.numel() for _, w in targets)
    all_zero = sum(int((p == 0).sum()) for p in model.parameters())
    all_total = sum(p.numel() for p in model.parameters())
    return {"sparsity": zeros / max(1, total), "overall_sparsity": all_zero / max(1, all_total),
            "pruned_weights": zeros, "targeted_weights": total,
            "layers": {n: round(float((w == 0).float().mean()), 4) for n, w in targets}}
