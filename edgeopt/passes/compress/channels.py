"""One channel-pruning step, in Torch-Pruning's layers: score every group (`importance`), decide what each
keeps (`policy`), cut it out (`depgraph`); configured by one typed `PruneStep`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgeopt import train as tr
from edgeopt.passes.compress import importance as imp
from edgeopt.passes.compress import policy
from edgeopt.passes.compress.depgraph import build_graph, prune_channels_of, root_group

Scope = Literal["global", "layer"]


@dataclass(frozen=True)
class PruneStep:
    """How one step scores and picks channels: `importance` (see edgeopt.passes.compress.importance), `scope`
    (`layer`: every group keeps the same fraction; `global`: the lowest-scored channels anywhere go, never more
    than `max_layer_sparsity` of a group), `round_to` (channel multiple; 1: none) and how many data batches
    the data-driven importances (`taylor`, `activation`) look at."""

    importance: imp.Importance = "l1"
    scope: Scope = "layer"
    max_layer_sparsity: float = 0.8
    round_to: int = 1
    importance_batches: int = 4

    def __post_init__(self) -> None:
        if self.importance not in imp.IMPORTANCES:
            raise ValueError(f"PruneStep: field 'importance': unknown {self.importance!r}; known: {', '.join(imp.IMPORTANCES)}")
        if self.scope not in ("global", "layer"):
            raise ValueError(f"PruneStep: field 'scope': expected global or layer, got {self.scope!r}")
        if not 0 < self.max_layer_sparsity < 1:
            raise ValueError(f"PruneStep: field 'max_layer_sparsity': must be in (0, 1), got {self.max_layer_sparsity}")
        if self.round_to < 1:
            raise ValueError(f"PruneStep: field 'round_to': must be >= 1, got {self.round_to}")
        if self.importance_batches < 1:
            raise ValueError(f"PruneStep: field 'importance_batches': must be >= 1, got {self.importance_batches}")

    @property
    def needs_data(self) -> bool:
        return self.importance in ("taylor", "activation")


def prune_to(model: Any, example: tuple[Any, ...], original: dict[str, int], target: float, step: PruneStep, *,
             data: Any = None, cost: dict[str, float] | None = None) -> tuple[dict[str, int], str]:
    """Prune `model` in place so the groups named in `original` (root module -> channel count before any
    pruning) keep about (1 - target) of those channels; `data` (TensorData) feeds the data-driven
    importances, `cost` (ms per channel by group) makes the policy latency-aware. Returns the new channel
    counts and the importance(s) actually used."""
    if step.needs_data and data is None:
        raise ValueError(f"prune_to: importance {step.importance!r} needs data")
    dg = build_graph(model, example)
    plans, used = score_groups(model, dg, original, step, data, cost or {})
    if step.scope == "global":
        policy.plan_global(plans, target, step.round_to, step.max_layer_sparsity)
    else:
        policy.plan_layer(plans, target, step.round_to, step.max_layer_sparsity)
    for p in plans:
        prune_channels_of(dg, model.get_submodule(p.name), p.drop)
    model.eval()
    return {p.name: p.keep for p in plans}, used


def score_groups(model: Any, dg: Any, original: dict[str, int], step: PruneStep, data: Any,
                 cost: dict[str, float]) -> tuple[list[policy.GroupPlan], str]:
    """A policy.GroupPlan per group with its channel scores; the importance(s) used, joined by '+'."""
    batches = _score_batches(data, step.importance_batches) if step.needs_data else []
    act = imp.activation_stats(model, batches) if step.importance == "activation" else None
    if step.importance == "taylor":
        imp.accumulate_gradients(model, batches, tr.task_loss if data.labelled else _projected_output)
    plans, used = [], set()
    for name, n_original in original.items():
        group, n = root_group(dg, model.get_submodule(name))
        scores, u = imp.group_scores(step.importance, group, n, act)
        used.add(u)
        plans.append(policy.GroupPlan(name=name, original=n_original, current=n, scores=scores,
                                      cost=cost.get(name, 1.0)))
    if step.importance == "taylor":
        model.zero_grad(set_to_none=True)
    return plans, "+".join(sorted(used))


def _score_batches(data: Any, limit: int) -> list[tuple[tuple[Any, ...], Any]]:
    out = []
    for i, b in enumerate(data.batches(min(64, len(data)))):
        if i >= limit:
            break
        out.append(b)
    return out


def _projected_output(model: Any, inputs: tuple[Any, ...], _targets: Any) -> Any:
    """Without labels the loss against the model's own outputs has zero gradient; a fixed random projection
    of the output gives Taylor scores the first-order output change instead."""
    import torch

    out = model(*inputs)
    r = torch.randn(out.shape[1:], generator=torch.Generator().manual_seed(0))
    return (out * r).sum() / out.shape[0]
