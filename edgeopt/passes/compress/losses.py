"""Distillation losses every compression pass trains with: a frozen teacher, soft KL × T² (+ hard CE),
cosine / MSE to the teacher's outputs, and feature distillation through learned adapters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Literal

from edgeopt.errors import RecipeError
# one KD implementation for the passes and the public API: freeze and kd_loss live in edgeopt.nn.distill
# (torch-free at import) and stay importable from here
from edgeopt.nn.distill import freeze, kd_loss

__all__ = ["DistillLoss", "FeatureDistiller", "LossKind", "freeze", "kd_loss", "make_loss"]

LossKind = Literal["kd", "cosine", "mse"]


@dataclass(frozen=True)
class DistillLoss:
    """What the student is trained to match: `kd` = alpha · KL(softmax(t/T) ‖ softmax(s/T)) · T² + (1 - alpha) ·
    CE(s, labels) (the hard term only with integer labels); `cosine` = 1 - cosine to the teacher's outputs;
    `mse` = MSE to them; plus beta · the feature loss when a FeatureDistiller is given."""

    kind: LossKind = "kd"
    temperature: float = 4.0
    alpha: float = 0.7
    beta: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("kd", "cosine", "mse"):
            raise ValueError(f"DistillLoss: field 'kind': expected kd, cosine or mse, got {self.kind!r}")
        if not self.temperature > 0:
            raise ValueError(f"DistillLoss: field 'temperature': must be > 0, got {self.temperature}")
        if not 0 <= self.alpha <= 1:
            raise ValueError(f"DistillLoss: field 'alpha': must be in [0, 1], got {self.alpha}")
        if self.beta < 0:
            raise ValueError(f"DistillLoss: field 'beta': must be >= 0, got {self.beta}")

    @classmethod
    def for_outputs(cls, labelled: bool, temperature: float = 4.0, alpha: float = 0.7) -> "DistillLoss":
        """The recovery loss a pass uses against its unchanged input model: KD with labels, cosine without."""
        return cls("kd" if labelled else "cosine", temperature, alpha)


class FeatureDistiller:
    """Captures the outputs of (student, teacher) module pairs with forward hooks and turns them into a loss
    through learned adapters (Linear on the last axis, 1×1 Conv2d for feature maps) where widths differ.

    Sequence features (B, T, H) are compared on the first token (`tokens="first"`, as patient KD does: MSE of
    the L2-normalized vectors) or on every valid token (`tokens="all"`: MSE over the tokens `mask` marks valid,
    divided by the teacher's mean square, so each pair weighs about 1 whatever its scale — the signal a
    mean-pooled sentence embedding needs). `mask` is set per batch by the loss (see make_loss)."""

    def __init__(self, student: Any, teacher: Any, pairs: list[tuple[str, str]], example: tuple[Any, ...],
                 tokens: Literal["first", "all"] = "first", mask_at: int | None = None):
        import torch
        from torch import nn

        if tokens not in ("first", "all"):
            raise ValueError(f"FeatureDistiller: field 'tokens': expected first or all, got {tokens!r}")
        self.pairs = pairs
        self.tokens = tokens
        self.mask_at = mask_at
        self.mask: Any = None
        self.store: dict[str, Any] = {}
        self.handles = []
        for i, (sn, tn) in enumerate(pairs):
            for side, model, name in (("s", student, sn), ("t", teacher, tn)):
                try:
                    mod = model.get_submodule(name)
                except AttributeError:
                    who = "student" if side == "s" else "teacher"
                    raise RecipeError(f"distill: field 'features': the {who} has no module {name!r}") from None
                self.handles.append(mod.register_forward_hook(self._hook(f"{side}{i}")))
        with torch.no_grad():
            student(*example)
            teacher(*example)
        adapters = []
        for i, (sn, tn) in enumerate(pairs):
            s, t = self.store[f"s{i}"], self.store[f"t{i}"]
            if s.dim() == 4 and t.dim() == 4:
                adapters.append(nn.Identity() if s.shape[1] == t.shape[1] else nn.Conv2d(s.shape[1], t.shape[1], 1))
            elif s.dim() == t.dim():
                adapters.append(nn.Identity() if s.shape[-1] == t.shape[-1] else nn.Linear(s.shape[-1], t.shape[-1]))
            else:
                raise RecipeError(f"distill: field 'features': {sn} gives {tuple(s.shape)} but {tn} gives {tuple(t.shape)}")
        self.adapters = nn.ModuleList(adapters)
        self.store.clear()

    def _hook(self, key: str):
        def hook(_mod, _inp, out):
            self.store[key] = out[0] if isinstance(out, (tuple, list)) else out
        return hook

    def loss(self) -> Any:
        import torch.nn.functional as F

        total = 0.0
        for i, adapter in enumerate(self.adapters):
            s, t = adapter(self.store[f"s{i}"]), self.store[f"t{i}"].detach()
            if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
                s = F.adaptive_avg_pool2d(s, t.shape[-2:])
            if s.dim() == 3 and self.tokens == "all":
                m = self.mask
                if m is not None and tuple(m.shape) == tuple(s.shape[:2]):
                    s, t = s[m.bool()], t[m.bool()]
                total = total + F.mse_loss(s, t) / t.pow(2).mean().clamp(min=1e-12)
                continue
            if s.dim() == 3:  # (B, T, H): the first token, as patient KD does
                s, t = s[:, 0], t[:, 0]
            s, t = F.normalize(s.flatten(1), dim=1), F.normalize(t.flatten(1), dim=1)
            total = total + F.mse_loss(s, t, reduction="sum") / s.shape[0]
        return total / max(1, len(self.adapters))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def make_loss(teacher: Any, spec: DistillLoss, feat: FeatureDistiller | None = None) -> Callable[[Any, Any, Any], Any]:
    """The training loss `loss_fn(student, inputs, targets)` for edgeopt.train.fit, as `spec` describes."""
    import torch
    import torch.nn.functional as F

    def loss_fn(student, x, y):
        if feat is not None and feat.mask_at is not None:
            feat.mask = x[feat.mask_at]
        with torch.no_grad():
            t_out = teacher(*x)
        s_out = student(*x)
        if spec.kind == "kd":
            loss = kd_loss(s_out, t_out, spec.temperature)
            if y is not None and not y.is_floating_point():
                loss = spec.alpha * loss + (1 - spec.alpha) * F.cross_entropy(s_out, y)
        elif spec.kind == "cosine":
            loss = (1 - F.cosine_similarity(s_out.flatten(1), t_out.flatten(1), dim=1)).mean()
        else:
            loss = F.mse_loss(s_out, t_out)
        if feat is not None:
            loss = loss + spec.beta * feat.loss()
        return loss

    return loss_fn
