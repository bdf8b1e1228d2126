"""prune.channels: structured channel/filter pruning in rounds of prune → fine-tune with an accuracy floor;
one step's graph / importance / policy / surgery live in `depgraph`, `importance`, `policy` and `channels`."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import Field

from edgeopt import train as tr
from edgeopt.artifact import Artifact, register_builder
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.passes.compress import policy
from edgeopt.passes.compress._common import FineTune, derived, example_args, layer_macs, module_copy, param_count, task_data
from edgeopt.passes.compress.channels import PruneStep, prune_to
from edgeopt.passes.compress.depgraph import Groups, build_graph, group_modules, out_channels, probe_groups, prune_counts
from edgeopt.passes.compress.losses import DistillLoss, freeze, make_loss


@register("prune.channels")
class PruneChannels(Pass):
    """Remove whole channels (conv filters, linear units) with every tensor slice coupled to them.

    1. torch-pruning builds the dependency graph; each group of coupled channels is probed once on a copy
       (remove one channel, run the model): groups that change the model's output shape (e.g. the
       classifier) are kept whole, groups whose pruning breaks the forward pass (a hard-coded reshape, a
       custom op the graph does not know) are skipped with a warning in ctx.warnings.
    2. In each of `rounds` rounds the model is pruned further, towards `sparsity` of the prunable channels
       (linearly over rounds): channels are scored (`importance`), the policy picks which go (`scope`,
       `round_to`, `latency_aware`), then the model is fine-tuned (`train`) on the training data — on the
       task loss, or (`loss: distill`) distilled from the unpruned input model.
    3. A round whose validation score falls below `floor` × the unpruned model's score stops the rounds;
       the last model above the floor is kept. The score is top-1 accuracy with labelled data, else the
       mean cosine to the unpruned model's outputs; the validation part is held out of fine-tuning.
    ctx.notes["prune.channels"] records groups before/after, skipped groups, every round, and in latency-aware
    mode the measured per-group latency next to its MACs.
    """

    class Config(FineTune):
        sparsity: float = Field(default=0.5, ge=0, lt=1, description="fraction of prunable channels removed, in [0, 1)")
        importance: Literal["l1", "l2", "bn_scale", "taylor", "activation"] = "l1"
        scope: Literal["global", "layer"] = "layer"
        max_layer_sparsity: float = Field(default=0.8, gt=0, lt=1)
        round_to: int | Literal["auto"] = Field(default="auto", description="channel multiple; auto: from the target; 1: none")
        rounds: int = Field(default=1, ge=1, le=20)
        floor: float | None = Field(default=0.98, gt=0, le=1, description="keep rounds scoring at least floor × baseline")
        latency_aware: bool = False
        latency_batch: int = Field(default=16, ge=1)
        latency_runs: int = Field(default=10, ge=1)
        importance_batches: int = Field(default=4, ge=1)
        loss: Literal["task", "distill"] = Field(default="task", description="fine-tune on the task loss, or "
                                                 "distill from the unpruned input (KD with labels, cosine without)")
        temperature: float = Field(default=4.0, gt=0)
        alpha: float = Field(default=0.7, ge=0, le=1)
        exclude: tuple[str, ...] = Field(default=(), description="module names or fnmatch patterns never pruned")

        def step(self, target: Any) -> PruneStep:
            """The per-step part of this config (`round_to: auto` resolved for `target`)."""
            round_to = policy.channel_multiple(target) if self.round_to == "auto" else max(1, int(self.round_to))
            return PruneStep(importance=self.importance, scope=self.scope, max_layer_sparsity=self.max_layer_sparsity,
                             round_to=round_to, importance_batches=self.importance_batches)

    accepts = ("torch",)
    produces = "torch"
    tolerance = None
    tolerance_reason = ("removing channels changes the function: each round is scored on held-out data (accuracy, or "
                        "cosine to the input) and kept only at or above floor × the unpruned model's score")

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        cfg = self.config
        model = module_copy(art, self.name)
        example = example_args(art, ctx, self.name)
        groups = self._groups(model, example, ctx)
        rounds = self._setup(art, ctx, model, example, groups)
        notes = rounds.notes(cfg, model)
        if cfg.latency_aware:
            rounds.cost, notes["latency"] = measure_group_latency(model, example, groups.safe, cfg.latency_batch,
                                                                  cfg.latency_runs)
        kept, kept_counts = self._prune_in_rounds(model, rounds, notes, ctx)
        original = groups.original
        notes["groups"] = {n: {"before": original[n], "after": kept_counts[n]} for n in groups.safe}
        notes["channel_sparsity"] = 1 - sum(kept_counts.values()) / max(1, sum(original.values()))
        notes["params_after"] = param_count(kept)
        notes["score"] = rounds.score(kept)
        ctx.notes[self.name] = notes
        return derived(kept, art, ("prune.channels", {"counts": kept_counts}), channel_sparsity=notes["channel_sparsity"])

    def _groups(self, model: Any, example: tuple[Any, ...], ctx: PassContext) -> Groups:
        """The model's prunable channel groups (graph), skipped ones reported in ctx.warnings."""
        groups = probe_groups(model, example, self.config.exclude)
        for name, why in groups.skipped.items():
            ctx.warnings.append(f"{self.name}: skipped {name}: {why}")
        if not groups.safe:
            raise PassError(f"{self.name}: no prunable channel group (skipped: {', '.join(groups.skipped) or 'none'}; "
                            f"output-coupled: {', '.join(groups.output_coupled) or 'none'})")
        return groups

    def _setup(self, art: Artifact, ctx: PassContext, model: Any, example: tuple[Any, ...], groups: Groups) -> "_Rounds":
        """Everything the rounds share: the data (fine-tune and held-out parts), the step, the loss, the floor."""
        cfg = self.config
        step = cfg.step(ctx.target)
        needs_data = cfg.train.epochs > 0 or cfg.floor is not None or step.needs_data
        data = None
        if needs_data or ctx.calibration or cfg.data or art.meta.get("train_data"):
            data = task_data(art, ctx, cfg, art.module, self.name)
        fit_data, val = data.split(cfg.val_fraction, seed=cfg.train.seed) if data is not None else (None, None)
        loss_fn = None
        if cfg.loss == "distill":
            labelled = data is not None and data.labelled
            loss_fn = make_loss(freeze(copy.deepcopy(model)), DistillLoss.for_outputs(labelled, cfg.temperature, cfg.alpha))
        rounds = _Rounds(example=example, groups=groups, step=step, fit_data=fit_data, val=val, loss_fn=loss_fn,
                         metric=None if data is None else "accuracy" if data.labelled else "cosine_to_input")
        rounds.baseline = rounds.score(model)
        if cfg.floor is not None and rounds.baseline is not None:
            rounds.floor_score = cfg.floor * rounds.baseline
        return rounds

    def _prune_in_rounds(self, model: Any, rounds: "_Rounds", notes: dict[str, Any], ctx: PassContext
                         ) -> tuple[Any, dict[str, int]]:
        """Prune → fine-tune → score, `rounds` times towards the target; the last model at or above the floor."""
        cfg = self.config
        kept, kept_counts = model, dict(rounds.groups.original)
        for r in range(1, cfg.rounds + 1):
            candidate, counts, rec = self._round(r, kept, rounds, ctx)
            notes["rounds"].append(rec)
            if not rec["accepted"]:
                before = notes["rounds"][r - 2]["channel_sparsity"] if r > 1 else 0
                ctx.warnings.append(f"{self.name}: round {r} scored {rec['score']:.4f} < floor {rounds.floor_score:.4f}; "
                                    f"kept round {r - 1} ({before:.0%} channels removed)")
                break
            kept, kept_counts = candidate, counts
        return kept, kept_counts

    def _round(self, r: int, current: Any, rounds: "_Rounds", ctx: PassContext) -> tuple[Any, dict[str, int], dict[str, Any]]:
        """One round on a copy of `current`: (the pruned, fine-tuned candidate, its channel counts, its record)."""
        cfg = self.config
        t0 = time.perf_counter()
        target = cfg.sparsity * r / cfg.rounds
        candidate = copy.deepcopy(current)
        original = rounds.groups.original
        counts, used = prune_to(candidate, rounds.example, original, target, rounds.step, data=rounds.fit_data,
                                cost=rounds.cost)
        fit = None
        if cfg.train.epochs > 0:
            fit = tr.fit(candidate, rounds.fit_data, cfg.train, loss_fn=rounds.loss_fn, val=rounds.val,
                         progress=ctx.progress, description=f"{self.name} round {r}/{cfg.rounds}")
        s = rounds.score(candidate)
        removed = 1 - sum(counts.values()) / max(1, sum(original.values()))
        rec = {"round": r, "target": round(target, 4), "channel_sparsity": round(removed, 4), "score": s,
               "params": param_count(candidate), "importance_used": used, "seconds": round(time.perf_counter() - t0, 2),
               "fine_tune": fit.to_dict() if fit else None,
               "accepted": rounds.floor_score is None or s >= rounds.floor_score}
        return candidate, counts, rec


@dataclass
class _Rounds:
    """What every round of one prune.channels run shares."""

    example: tuple[Any, ...]
    groups: Groups
    step: PruneStep
    fit_data: Any
    val: Any
    loss_fn: Callable[..., Any] | None
    metric: str | None
    cost: dict[str, float] | None = None
    baseline: float | None = None
    floor_score: float | None = None

    def score(self, model: Any) -> float | None:
        """The held-out score (accuracy, or cosine to the input); None without data."""
        return tr.evaluate(model, self.val) if self.val is not None else None

    def notes(self, cfg: PruneChannels.Config, model: Any) -> dict[str, Any]:
        """The run's notes before any round: settings, baseline, groups skipped or kept whole."""
        return {"importance": cfg.importance, "scope": cfg.scope, "round_to": self.step.round_to, "target": cfg.sparsity,
                "metric": self.metric, "baseline_score": self.baseline, "floor_score": self.floor_score,
                "skipped": self.groups.skipped, "output_coupled": self.groups.output_coupled, "rounds": [],
                "params_before": param_count(model)}


@register_builder("prune.channels")
def rebuild_pruned(parent: Artifact, args: dict[str, Any], ctx: PassContext | None) -> Any:
    """The input model with each group root's output channels cut to `args["counts"][root]` (the architecture
    prune.channels produced; which channels go does not matter, the weights are loaded afterwards)."""
    model = module_copy(parent, "prune.channels")
    prune_counts(model, example_args(parent, ctx, "prune.channels"), args["counts"])
    return model


# ---------------------------------------------------------------------------------------------- latency
def _batched(example: tuple[Any, ...], batch: int) -> tuple[Any, ...]:
    import torch

    return tuple(torch.cat([t] * max(1, batch // max(1, t.shape[0])))[:batch] if t.dim() else t for t in example)


def measure_group_latency(model: Any, example: tuple[Any, ...], roots: list[str], batch: int, runs: int
                          ) -> tuple[dict[str, float], dict[str, Any]]:
    """Measured PyTorch time per channel of each group (sum over its conv/linear/BN members, from forward
    hooks, median of `runs`) and the group's MACs, with the rank correlation between the two."""
    import statistics

    import torch
    from torch import nn

    x = _batched(example, batch)
    dg = build_graph(model, example)
    kinds = (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)
    members = {name: [m for m in group_modules(dg, model.get_submodule(name)) if isinstance(m, kinds)] for name in roots}
    counts = {name: out_channels(dg, model.get_submodule(name)) for name in roots}
    names = {m: n for n, m in model.named_modules()}
    macs = layer_macs(model, x)  # by module name; BatchNorm counts 0
    times: dict[int, list[float]] = {}
    starts: dict[int, float] = {}

    def pre(mod, _inp):
        starts[id(mod)] = time.perf_counter()

    def post(mod, _inp, _out):
        times.setdefault(id(mod), []).append((time.perf_counter() - starts[id(mod)]) * 1e3)

    all_mods = {id(m): m for ms in members.values() for m in ms}
    handles = [m.register_forward_pre_hook(pre) for m in all_mods.values()]
    handles += [m.register_forward_hook(post) for m in all_mods.values()]
    try:
        with torch.no_grad():
            for _ in range(2):
                model(*x)
            times.clear()
            for _ in range(runs):
                model(*x)
    finally:
        for h in handles:
            h.remove()
    group_ms = {n: sum(statistics.median(times.get(id(m), [0.0])) for m in ms) for n, ms in members.items()}
    group_macs = {n: sum(macs.get(names.get(m, ""), 0) for m in ms) for n, ms in members.items()}
    per_channel = {n: group_ms[n] / max(1, counts[n]) for n in roots}
    notes = {"batch": batch, "runtime": "torch eager", "group_ms": {n: round(v, 4) for n, v in group_ms.items()},
             "group_macs": group_macs, "rank_correlation_ms_vs_macs": _spearman([group_ms[n] for n in roots],
                                                                                [group_macs[n] for n in roots])}
    return per_channel, notes


def _spearman(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None

    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        for pos, i in enumerate(order):
            r[i] = float(pos)
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    va = sum((x - ma) ** 2 for x in ra) ** 0.5
    vb = sum((y - mb) ** 2 for y in rb) ** 0.5
    return round(cov / (va * vb), 4) if va and vb else None
