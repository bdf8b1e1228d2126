"""prune.channels: structured channel/filter pruning on torch-pruning's dependency graph, in rounds of
prune → fine-tune with an accuracy floor; importance in `importance`, the choice of channels in `policy`."""

from __future__ import annotations

import copy
import time
from typing import Any, Literal

from pydantic import Field

from edgeopt.artifact import Artifact, register_builder
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.passes.compress import importance as imp
from edgeopt.passes.compress import policy
from edgeopt.passes.compress._common import FineTune, derived, example_args, matches, module_copy, param_count, task_data


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

    accepts = ("torch",)
    produces = "torch"
    tolerance = None
    tolerance_reason = ("removing channels changes the function: each round is scored on held-out data (accuracy, or "
                        "cosine to the input) and kept only at or above floor × the unpruned model's score")

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        from edgeopt import train as tr

        cfg = self.config
        model = module_copy(art, self.name)
        example = example_args(art, ctx, self.name)
        round_to = policy.channel_multiple(ctx.target) if cfg.round_to == "auto" else int(cfg.round_to)
        needs_data = cfg.train.epochs > 0 or cfg.floor is not None or cfg.importance in ("taylor", "activation")
        data = task_data(art, ctx, cfg, art.module, self.name) if needs_data or ctx.calibration or cfg.data \
            or art.meta.get("train_data") else None
        fit_data, val = data.split(cfg.val_fraction, seed=cfg.train.seed) if data is not None else (None, None)
        safe, skipped, frozen = probe_groups(model, example, cfg.exclude)
        for name, why in skipped.items():
            ctx.warnings.append(f"{self.name}: skipped {name}: {why}")
        if not safe:
            raise PassError(f"{self.name}: no prunable channel group (skipped: {', '.join(skipped) or 'none'}; "
                            f"output-coupled: {', '.join(frozen) or 'none'})")
        original = channel_counts(model, example, safe)
        score = (lambda m: tr.evaluate(m, val)) if val is not None else (lambda m: None)
        base_score = score(model)
        floor_score = None if cfg.floor is None or base_score is None else cfg.floor * base_score
        notes: dict[str, Any] = {
            "importance": cfg.importance, "scope": cfg.scope, "round_to": round_to, "target": cfg.sparsity,
            "metric": None if data is None else "accuracy" if data.labelled else "cosine_to_input", "baseline_score": base_score,
            "floor_score": floor_score, "skipped": skipped, "output_coupled": frozen, "rounds": [],
            "params_before": param_count(model),
        }
        cost = None
        if cfg.latency_aware:
            cost, lat_notes = measure_group_latency(model, example, safe, cfg.latency_batch, cfg.latency_runs)
            notes["latency"] = lat_notes
        loss_fn = None
        if cfg.loss == "distill":
            from edgeopt.passes.compress.distill import freeze, make_loss

            teacher = freeze(copy.deepcopy(model))
            loss_fn = make_loss(teacher, "kd" if data is not None and data.labelled else "cosine", cfg.temperature,
                                cfg.alpha, None, 0.0)
        kept, kept_counts = model, dict(original)
        current = model
        for r in range(1, cfg.rounds + 1):
            t0 = time.perf_counter()
            target = cfg.sparsity * r / cfg.rounds
            candidate = copy.deepcopy(current)
            counts, used = prune_to(candidate, example, safe, original, target, cfg, round_to, fit_data, cost)
            fit = None
            if cfg.train.epochs > 0:
                fit = tr.fit(candidate, fit_data, cfg.train, loss_fn=loss_fn, val=val, progress=ctx.progress,
                             description=f"{self.name} round {r}/{cfg.rounds}")
            s = score(candidate)
            removed = 1 - sum(counts.values()) / max(1, sum(original.values()))
            rec = {"round": r, "target": round(target, 4), "channel_sparsity": round(removed, 4), "score": s,
                   "params": param_count(candidate), "importance_used": used, "seconds": round(time.perf_counter() - t0, 2),
                   "fine_tune": fit.to_dict() if fit else None}
            accepted = floor_score is None or s >= floor_score
            rec["accepted"] = accepted
            notes["rounds"].append(rec)
            if not accepted:
                ctx.warnings.append(f"{self.name}: round {r} scored {s:.4f} < floor {floor_score:.4f}; "
                                    f"kept round {r - 1} ({notes['rounds'][r - 2]['channel_sparsity'] if r > 1 else 0:.0%} channels removed)")
                break
            kept, kept_counts, current = candidate, counts, candidate
        notes["groups"] = {n: {"before": original[n], "after": kept_counts[n]} for n in safe}
        notes["channel_sparsity"] = 1 - sum(kept_counts.values()) / max(1, sum(original.values()))
        notes["params_after"] = param_count(kept)
        notes["score"] = score(kept)
        ctx.notes[self.name] = notes
        return derived(kept, art, ("prune.channels", {"counts": kept_counts}), channel_sparsity=notes["channel_sparsity"])


# ---------------------------------------------------------------------------------------------- graph
def build_graph(model: Any, example: tuple[Any, ...]) -> Any:
    """torch-pruning's dependency graph of `model` traced on `example` (positional inputs)."""
    import warnings

    import torch_pruning as tp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=lambda m, x: m(*x))


def _root_group(dg: Any, module: Any, idxs: list[int] | None = None) -> tuple[Any, int]:
    pruner = dg.get_pruner_of_module(module)
    n = pruner.get_out_channels(module)
    return dg.get_pruning_group(module, pruner.prune_out_channels, list(range(n)) if idxs is None else idxs), n


def _shapes(out: Any) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(_shapes(o) for o in out)
    if isinstance(out, dict):
        return tuple((k, _shapes(v)) for k, v in out.items())
    return type(out).__name__


def probe_groups(model: Any, example: tuple[Any, ...], exclude: tuple[str, ...]
                 ) -> tuple[list[str], dict[str, str], list[str]]:
    """(safe group roots, {skipped root: reason}, output-coupled roots) found by removing one channel of each
    group on a copy of the model and running it."""
    import torch
    import torch_pruning as tp

    names = {m: n for n, m in model.named_modules()}
    dg = build_graph(model, example)
    roots: list[str] = []
    excluded = [m for n, m in model.named_modules() if exclude and n and matches(n, exclude)]
    for group in dg.get_all_groups(ignored_layers=excluded, root_module_types=(tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)):
        root = group[0].dep.target.module
        if root in names:
            roots.append(names[root])
    safe, skipped, frozen = [], {}, []
    trial = copy.deepcopy(model)
    tdg = build_graph(trial, example)
    with torch.no_grad():
        shape = _shapes(trial(*example))
    for name in roots:
        try:
            module = trial.get_submodule(name)
            group, n = _root_group(tdg, module, [0])
            if n is None or n < 2:
                skipped[name] = "fewer than 2 channels"
                continue
            if not tdg.check_pruning_group(group):
                skipped[name] = "the graph refuses to prune this group"
                continue
            group.prune()
            with torch.no_grad():
                new_shape = _shapes(trial(*example))
        except Exception as e:  # a reshape / op the graph does not model: this group cannot be pruned safely
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:160]
            skipped[name] = f"pruning it breaks the forward pass ({e.__class__.__name__}: {first})"
            trial = copy.deepcopy(model)
            tdg = build_graph(trial, example)
            with torch.no_grad():
                shape = _shapes(trial(*example))
            continue
        if new_shape != shape:
            frozen.append(name)
            shape = new_shape
        else:
            safe.append(name)
    return safe, skipped, frozen


def channel_counts(model: Any, example: tuple[Any, ...], roots: list[str]) -> dict[str, int]:
    dg = build_graph(model, example)
    return {n: int(dg.get_pruner_of_module(model.get_submodule(n)).get_out_channels(model.get_submodule(n)))
            for n in roots}


@register_builder("prune.channels")
def rebuild_pruned(parent: Artifact, args: dict[str, Any], ctx: PassContext | None) -> Any:
    """The input model with each group root's output channels cut to `args["counts"][root]` (the architecture
    prune.channels produced; which channels go does not matter, the weights are loaded afterwards)."""
    model = module_copy(parent, "prune.channels")
    prune_counts(model, example_args(parent, ctx, "prune.channels"), args["counts"])
    return model


def prune_counts(model: Any, example: tuple[Any, ...], counts: dict[str, int]) -> None:
    """Prune `model` in place so the group rooted at each named module keeps `counts[name]` channels (its last
    channels go, with every tensor slice coupled to them)."""
    dg = build_graph(model, example)
    for name, keep in counts.items():
        module = model.get_submodule(name)
        n = int(dg.get_pruner_of_module(module).get_out_channels(module))
        if not 0 < keep <= n:
            raise ValueError(f"{name}: cannot keep {keep} of {n} channels")
        if keep < n:
            group, _ = _root_group(dg, module, list(range(keep, n)))
            group.prune()
    model.eval()


# ---------------------------------------------------------------------------------------------- one prune step
def _score_batches(data: Any, cfg: Any) -> list[tuple[tuple[Any, ...], Any]]:
    bs = min(64, len(data))
    out = []
    for i, b in enumerate(data.batches(bs)):
        if i >= cfg.importance_batches:
            break
        out.append(b)
    return out


def prune_to(model: Any, example: tuple[Any, ...], roots: list[str], original: dict[str, int], target: float,
             cfg: Any, round_to: int, data: Any, cost: dict[str, float] | None) -> tuple[dict[str, int], str]:
    """Prune `model` in place so the groups keep about (1 - target) of their original channels; returns the
    new channel counts and the importance(s) used."""
    from edgeopt.train import task_loss

    dg = build_graph(model, example)
    batches = _score_batches(data, cfg) if cfg.importance in ("taylor", "activation") else []
    act = imp.activation_stats(model, batches) if cfg.importance == "activation" else None
    if cfg.importance == "taylor":
        imp.accumulate_gradients(model, batches, task_loss if data.labelled else _projected_output)
    plans, used = [], set()
    for name in roots:
        group, n = _root_group(dg, model.get_submodule(name))
        scores, u = imp.group_scores(cfg.importance, group, n, act)
        used.add(u)
        plans.append(policy.GroupPlan(name=name, original=original[name], current=n, scores=scores,
                                      cost=(cost or {}).get(name, 1.0)))
    if cfg.importance == "taylor":
        model.zero_grad(set_to_none=True)
    if cfg.scope == "global":
        policy.plan_global(plans, target, round_to, cfg.max_layer_sparsity)
    else:
        policy.plan_layer(plans, target, round_to, cfg.max_layer_sparsity)
    for p in plans:
        if p.drop:
            group, _ = _root_group(dg, model.get_submodule(p.name), p.drop)
            group.prune()
    model.eval()
    return {p.name: p.keep for p in plans}, "+".join(sorted(used))


def _projected_output(model: Any, inputs: tuple[Any, ...], _targets: Any) -> Any:
    """Without labels the loss against the model's own outputs has zero gradient; a fixed random projection
    of the output gives Taylor scores the first-order output change instead."""
    import torch

    out = model(*inputs)
    r = torch.randn(out.shape[1:], generator=torch.Generator().manual_seed(0))
    return (out * r).sum() / out.shape[0]


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
    members: dict[str, list[Any]] = {}
    counts: dict[str, int] = {}
    for name in roots:
        group, n = _root_group(dg, model.get_submodule(name))
        counts[name] = n
        mods = []
        for item in group.items:
            m = item.dep.target.module
            if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear, nn.modules.batchnorm._BatchNorm)) and m not in mods:
                mods.append(m)
        members[name] = mods
    times: dict[int, list[float]] = {}
    macs: dict[int, int] = {}
    starts: dict[int, float] = {}

    def pre(mod, _inp):
        starts[id(mod)] = time.perf_counter()

    def post(mod, inp, out):
        times.setdefault(id(mod), []).append((time.perf_counter() - starts[id(mod)]) * 1e3)
        if id(mod) not in macs and isinstance(out, torch.Tensor):
            if isinstance(mod, nn.modules.conv._ConvNd):
                k = 1
                for d in mod.kernel_size:
                    k *= d
                macs[id(mod)] = out.numel() // out.shape[0] * (mod.in_channels // mod.groups) * k
            elif isinstance(mod, nn.Linear):
                macs[id(mod)] = out.numel() // out.shape[0] * mod.in_features
            else:
                macs[id(mod)] = 0

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
    group_macs = {n: sum(macs.get(id(m), 0) for m in ms) for n, ms in members.items()}
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
