"""Pruning policy: given each group's channel scores, decide how many channels each group keeps and which.

Pure bookkeeping over numbers (no model in sight), so each rule is easy to test on its own:
- `layer` scope: every group keeps (1 - sparsity) of its original channels;
- `global` scope: the lowest-scored channels across all groups go (scores normalized by their group's
  mean so that layers compare), never more than `max_layer_sparsity` of one group;
- latency-aware: a channel's score is divided by the group's measured latency per channel (relative to
  the mean), so channels in slow layers go first for the same importance;
- channel counts are rounded to a multiple the target's kernels like (`round_to`), never to zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class GroupPlan:
    """One prunable group: its name (root module), original and current channel counts, scores (current
    channels), measured cost per channel (ms; 1.0 when not measured), and the outcome `keep` / `drop`."""

    name: str
    original: int
    current: int
    scores: Any  # torch tensor (current,)
    cost: float = 1.0
    keep: int = 0
    drop: list[int] = field(default_factory=list)


def channel_multiple(target: Any) -> int:
    """Channel multiple the target's fp32 kernels like: 16 with AVX-512, 8 with AVX/AVX2 (8 floats per
    register), 4 on ARM NEON, 8 otherwise."""
    isa = set(getattr(target, "isa", ()) or ())
    if any(f.startswith("avx512") for f in isa):
        return 16
    if "avx2" in isa or "avx" in isa:
        return 8
    if getattr(target, "arch", "") in ("arm64", "aarch64") or "neon" in isa:
        return 4
    return 8


def round_keep(keep: float, current: int, original: int, round_to: int) -> int:
    """`keep` rounded to the nearest multiple of `round_to`, at least one multiple (or 1 channel), at most the
    current count (a group already below one multiple keeps what it has)."""
    if round_to <= 1:
        return int(min(current, max(1, round(keep))))
    if current <= round_to:
        return current
    k = int(round(keep / round_to)) * round_to
    k = max(round_to, k)
    if k > current:
        k = current if current % round_to == 0 else (current // round_to) * round_to
    return max(1, min(k, current))


def plan_layer(groups: list[GroupPlan], sparsity: float, round_to: int, max_layer_sparsity: float) -> None:
    """Per-layer scope: each group keeps (1 - sparsity) of its original channels (relative to the cost mean
    when costs were measured: slow groups lose more, fast ones less, same channel total)."""
    costs = [g.cost for g in groups]
    mean_cost = sum(costs) / max(1, len(costs))
    ratios = {g.name: sparsity for g in groups}
    if mean_cost > 0 and any(abs(c - mean_cost) > 1e-12 for c in costs):
        # scale ratios by relative cost, then fix the channel-weighted mean back to `sparsity` (a few passes of clip+rescale)
        raw = {g.name: sparsity * g.cost / mean_cost for g in groups}
        total = sum(g.original for g in groups)
        for _ in range(10):
            clipped = {k: min(max_layer_sparsity, max(0.0, v)) for k, v in raw.items()}
            got = sum(clipped[g.name] * g.original for g in groups) / max(1, total)
            if got <= 0 or abs(got - sparsity) < 1e-4:
                break
            raw = {k: v * sparsity / got for k, v in raw.items()}
        ratios = {k: min(max_layer_sparsity, max(0.0, v)) for k, v in raw.items()}
    for g in groups:
        keep = round_keep(g.original * (1 - ratios[g.name]), g.current, g.original, round_to)
        _select(g, keep)


def plan_global(groups: list[GroupPlan], sparsity: float, round_to: int, max_layer_sparsity: float) -> None:
    """Global scope: rank every current channel by its group-normalized score (÷ relative cost per channel
    when measured) and drop the lowest until (1 - sparsity) of all original channels remain."""
    total_original = sum(g.original for g in groups)
    to_drop = sum(g.current for g in groups) - int(round((1 - sparsity) * total_original))
    if to_drop <= 0:
        for g in groups:
            _select(g, g.current)
        return
    mean_cost = sum(g.cost for g in groups) / max(1, len(groups))
    entries = []  # (priority, group index, channel)
    for gi, g in enumerate(groups):
        s = g.scores.double()
        s = s / s.mean().clamp(min=1e-12)
        rel_cost = (g.cost / mean_cost) if mean_cost > 0 else 1.0
        pr = s / max(rel_cost, 1e-6)
        entries += [(float(pr[c]), gi, c) for c in range(g.current)]
    entries.sort()
    dropped = [0] * len(groups)
    floor = [max(1, math.ceil(g.original * (1 - max_layer_sparsity))) for g in groups]
    n = 0
    for _, gi, _c in entries:
        if n >= to_drop:
            break
        if groups[gi].current - dropped[gi] - 1 < floor[gi]:
            continue
        dropped[gi] += 1
        n += 1
    for gi, g in enumerate(groups):
        _select(g, round_keep(g.current - dropped[gi], g.current, g.original, round_to))


def _select(g: GroupPlan, keep: int) -> None:
    """Keep the `keep` highest-scored channels of `g`; the rest go (sorted indices)."""
    import torch

    g.keep = keep
    n_drop = g.current - keep
    if n_drop <= 0:
        g.drop = []
        return
    order = torch.argsort(g.scores.double(), stable=True)  # lowest first
    g.drop = sorted(int(i) for i in order[:n_drop])
