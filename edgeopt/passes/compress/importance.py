"""Channel importance for structured pruning: one score per channel of a torch-pruning dependency group.

A group couples every tensor slice that must go together when one channel goes (a conv's output filters,
its BatchNorm, the next conv's input slices, residual partners, ...). Scores here are computed over the
whole group, each member's per-channel score mapped back to the group's root channels and averaged:

- `l1` / `l2`: magnitude of the weights each channel owns in every member (Li et al., 2017);
- `bn_scale`: |γ| of the group's BatchNorm layers (network slimming, Liu et al., 2017), l1 where none;
- `taylor`: |Σ weight × gradient| of the task loss, first-order Taylor estimate of the loss change when
  the channel goes (Molchanov et al., 2019), accumulated over a few batches;
- `activation`: mean |output| of the channel over a few batches of real inputs.
This module only scores; which channels go is decided in `policy`.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from edgeopt.extras import require

Importance = Literal["l1", "l2", "bn_scale", "taylor", "activation"]
IMPORTANCES: tuple[str, ...] = ("l1", "l2", "bn_scale", "taylor", "activation")


def _fns():
    tp = require("torch_pruning", "pruning importance")  # lazy: an optional extra

    f = tp.pruner.function
    out_fns = (f.prune_conv_out_channels, f.prune_linear_out_channels, f.prune_depthwise_conv_out_channels)
    in_fns = (f.prune_conv_in_channels, f.prune_linear_in_channels, f.prune_depthwise_conv_in_channels)
    bn_fns = (f.prune_batchnorm_out_channels,)
    return out_fns, in_fns, bn_fns


def _members(group: Any):
    """(module, handler, idxs, root_idxs) of each group item."""
    for item in group.items:
        dep, idxs = item.dep, item.idxs
        yield dep.target.module, dep.handler, list(idxs), list(getattr(item, "root_idxs", idxs))


def _weight_rows(module: Any, handler: Any, tensor: Any, idxs: list[int], out_fns, in_fns) -> Any | None:
    """Per-channel slices (C, -1) of `tensor` (a weight or its gradient) that channel indices `idxs` own."""
    from torch import nn

    if not isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) or tensor is None:
        return None
    transposed = getattr(module, "transposed", False)
    if handler in out_fns:
        w = tensor.transpose(0, 1) if transposed else tensor
        return w[idxs].flatten(1)
    if handler in in_fns:
        w = tensor if transposed else tensor.transpose(0, 1)
        w = w.flatten(1)
        groups = getattr(module, "groups", 1)
        if isinstance(module, nn.modules.conv._ConvNd) and groups not in (1, module.in_channels):
            w = w.repeat(groups, 1)  # grouped conv: each group's input slice repeats
        if w.shape[0] <= max(idxs, default=0):
            return None
        return w[idxs]
    return None


def _accumulate(n: int, parts: list[tuple[Any, list[int]]]) -> Any | None:
    """Average per-member scores onto the group's n root channels (members that skip a channel don't count)."""
    import torch

    if not parts:
        return None
    total = torch.zeros(n, dtype=torch.float64)
    count = torch.zeros(n, dtype=torch.float64)
    for s, root in parts:
        if any(r is None for r in root) or len(root) != s.numel():
            continue
        r = torch.tensor(root, dtype=torch.long)
        total.scatter_add_(0, r, s.double())
        count.scatter_add_(0, r, torch.ones_like(s, dtype=torch.float64))
    if not (count > 0).any():
        return None
    return total / count.clamp(min=1)


def magnitude_scores(group: Any, n: int, p: int = 1) -> Any | None:
    """L1 (p=1) or L2 (p=2) group magnitude per root channel."""
    out_fns, in_fns, bn_fns = _fns()
    parts = []
    for module, handler, idxs, root in _members(group):
        w = getattr(module, "weight", None)
        if handler in bn_fns and w is not None:
            parts.append((w.detach()[idxs].abs().pow(p), root))
            continue
        rows = _weight_rows(module, handler, w.detach() if w is not None else None, idxs, out_fns, in_fns)
        if rows is not None:
            parts.append((rows.abs().pow(p).sum(1), root))
    return _accumulate(n, parts)


def bn_scale_scores(group: Any, n: int) -> Any | None:
    """|γ| of the group's BatchNorm layers per root channel; None when the group has no affine BatchNorm."""
    _, _, bn_fns = _fns()
    parts = [(m.weight.detach()[idxs].abs(), root) for m, h, idxs, root in _members(group)
             if h in bn_fns and getattr(m, "weight", None) is not None]
    return _accumulate(n, parts)


def taylor_scores(group: Any, n: int) -> Any | None:
    """|Σ w·∂L/∂w| per channel over the group's conv/linear/BN weights (gradients must be accumulated first)."""
    out_fns, in_fns, bn_fns = _fns()
    parts = []
    for module, handler, idxs, root in _members(group):
        w = getattr(module, "weight", None)
        if w is None or w.grad is None:
            continue
        prod = (w.detach() * w.grad.detach())
        if handler in bn_fns:
            parts.append((prod[idxs].abs(), root))
            continue
        rows = _weight_rows(module, handler, prod, idxs, out_fns, in_fns)
        if rows is not None:
            parts.append((rows.sum(1).abs(), root))
    return _accumulate(n, parts)


def activation_scores(group: Any, n: int, stats: dict[int, Any]) -> Any | None:
    """Mean |output| per channel of the group's conv/linear/BN outputs (`stats`: id(module) -> per-channel mean)."""
    out_fns, _, bn_fns = _fns()
    parts = []
    for module, handler, idxs, root in _members(group):
        s = stats.get(id(module))
        if s is not None and (handler in out_fns or handler in bn_fns) and s.numel() > max(idxs, default=0):
            parts.append((s[idxs], root))
    return _accumulate(n, parts)


def accumulate_gradients(model: Any, batches: list[tuple[tuple[Any, ...], Any]], loss_fn: Callable) -> None:
    """Zero the model's gradients, then sum those of `loss_fn(model, inputs, targets)` over `batches` (eval mode)."""
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in batches:
        loss_fn(model, x, y).backward()


def activation_stats(model: Any, batches: list[tuple[tuple[Any, ...], Any]]) -> dict[int, Any]:
    """id(module) -> mean |output| per channel (axis 1 for ≥3-D outputs, last axis for Linear) of every
    Conv / Linear / BatchNorm over `batches`."""
    import torch
    from torch import nn

    sums: dict[int, Any] = {}
    counts: dict[int, int] = {}

    def hook(mod, _inp, out):
        if not isinstance(out, torch.Tensor):
            return
        o = out.detach().abs()
        if isinstance(mod, nn.Linear):
            per = o.reshape(-1, o.shape[-1]).mean(0)
        else:
            per = o.transpose(0, 1).reshape(o.shape[1], -1).mean(1)
        sums[id(mod)] = sums.get(id(mod), 0) + per.double()
        counts[id(mod)] = counts.get(id(mod), 0) + 1

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm))]
    try:
        model.eval()
        with torch.no_grad():
            for x, _ in batches:
                model(*x)
    finally:
        for h in handles:
            h.remove()
    return {k: v / counts[k] for k, v in sums.items()}


def group_scores(kind: str, group: Any, n: int, act_stats: dict[int, Any] | None = None) -> tuple[Any, str]:
    """(scores (n,), the importance actually used): falls back to l1 where a group lacks what `kind` needs
    (no BatchNorm for bn_scale, no gradient or activation recorded)."""
    import torch

    scores = None
    if kind == "l2":
        scores = magnitude_scores(group, n, p=2)
    elif kind == "bn_scale":
        scores = bn_scale_scores(group, n)
    elif kind == "taylor":
        scores = taylor_scores(group, n)
    elif kind == "activation":
        scores = activation_scores(group, n, act_stats or {})
    used = kind
    if scores is None and kind != "l1":
        used = "l1"
    if scores is None:
        scores = magnitude_scores(group, n, p=1)
    if scores is None:
        return torch.zeros(n, dtype=torch.float64), "none"
    return scores, used
