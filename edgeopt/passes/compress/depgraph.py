"""Structured-pruning graph and surgery on torch-pruning's dependency graph: which channel groups a model has,
which of them can be pruned safely, and cutting channels (with every tensor slice coupled to them) out."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from edgeopt.extras import require
from edgeopt.passes.compress._common import matches


def build_graph(model: Any, example: tuple[Any, ...]) -> Any:
    """torch-pruning's dependency graph of `model` traced on `example` (positional inputs)."""
    import warnings

    tp = require("torch_pruning", "channel pruning")  # lazy: an optional extra

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example, forward_fn=lambda m, x: m(*x))


def out_channels(dg: Any, module: Any) -> int:
    """How many output channels `module` has, as the dependency graph counts them."""
    return int(dg.get_pruner_of_module(module).get_out_channels(module))


def root_group(dg: Any, module: Any, idxs: list[int] | None = None) -> tuple[Any, int]:
    """(the group of every slice coupled to output channels `idxs` of `module` (all of them when None), the
    module's channel count)."""
    pruner = dg.get_pruner_of_module(module)
    n = pruner.get_out_channels(module)
    return dg.get_pruning_group(module, pruner.prune_out_channels, list(range(n)) if idxs is None else idxs), n


def prune_channels_of(dg: Any, module: Any, idxs: list[int]) -> None:
    """Cut output channels `idxs` of `module` out of the model, with every slice coupled to them."""
    if idxs:
        group, _ = root_group(dg, module, idxs)
        group.prune()


def group_modules(dg: Any, module: Any) -> list[Any]:
    """The distinct modules of `module`'s group (its own layer, BatchNorms, the next layers' inputs, ...)."""
    group, _ = root_group(dg, module)
    mods: list[Any] = []
    for item in group.items:
        m = item.dep.target.module
        if m not in mods:
            mods.append(m)
    return mods


@dataclass
class Groups:
    """The channel groups (by root module name) of a model: `safe` can be pruned, `skipped` cannot (with the
    reason), `output_coupled` change the model's output shape (e.g. the classifier) and stay whole;
    `original`: each safe group's channel count when probed."""

    safe: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    output_coupled: list[str] = field(default_factory=list)
    original: dict[str, int] = field(default_factory=dict)


def _shapes(out: Any) -> Any:
    import torch

    if isinstance(out, torch.Tensor):
        return tuple(out.shape)
    if isinstance(out, (tuple, list)):
        return tuple(_shapes(o) for o in out)
    if isinstance(out, dict):
        return tuple((k, _shapes(v)) for k, v in out.items())
    return type(out).__name__


def _group_roots(model: Any, example: tuple[Any, ...], exclude: tuple[str, ...]) -> list[str]:
    tp = require("torch_pruning", "channel pruning")  # lazy: an optional extra

    names = {m: n for n, m in model.named_modules()}
    dg = build_graph(model, example)
    excluded = [m for n, m in model.named_modules() if exclude and n and matches(n, exclude)]
    roots = []
    for group in dg.get_all_groups(ignored_layers=excluded, root_module_types=(tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR)):
        root = group[0].dep.target.module
        if root in names:
            roots.append(names[root])
    return roots


def probe_groups(model: Any, example: tuple[Any, ...], exclude: tuple[str, ...] = ()) -> Groups:
    """The model's channel groups, sorted by removing one channel of each group on a copy of the model and
    running it (`model` itself is not changed)."""
    import torch

    groups = Groups()
    trial = copy.deepcopy(model)
    tdg = build_graph(trial, example)
    with torch.no_grad():
        shape = _shapes(trial(*example))
    for name in _group_roots(model, example, exclude):
        try:
            module = trial.get_submodule(name)
            group, n = root_group(tdg, module, [0])
            if n is None or n < 2:
                groups.skipped[name] = "fewer than 2 channels"
                continue
            if not tdg.check_pruning_group(group):
                groups.skipped[name] = "the graph refuses to prune this group"
                continue
            group.prune()
            with torch.no_grad():
                new_shape = _shapes(trial(*example))
        except Exception as e:  # a reshape / op the graph does not model: this group cannot be pruned safely
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:160]
            groups.skipped[name] = f"pruning it breaks the forward pass ({e.__class__.__name__}: {first})"
            trial = copy.deepcopy(model)
            tdg = build_graph(trial, example)
            with torch.no_grad():
                shape = _shapes(trial(*example))
            continue
        if new_shape != shape:
            groups.output_coupled.append(name)
            shape = new_shape
        else:
            groups.safe.append(name)
    groups.original = channel_counts(model, example, groups.safe) if groups.safe else {}
    return groups


def channel_counts(model: Any, example: tuple[Any, ...], roots: list[str]) -> dict[str, int]:
    """The channel count of each named group root."""
    dg = build_graph(model, example)
    return {n: out_channels(dg, model.get_submodule(n)) for n in roots}


def prune_counts(model: Any, example: tuple[Any, ...], counts: dict[str, int]) -> None:
    """Prune `model` in place so the group rooted at each named module keeps `counts[name]` channels (its last
    channels go, with every tensor slice coupled to them)."""
    dg = build_graph(model, example)
    for name, keep in counts.items():
        module = model.get_submodule(name)
        n = out_channels(dg, module)
        if not 0 < keep <= n:
            raise ValueError(f"{name}: cannot keep {keep} of {n} channels")
        prune_channels_of(dg, module, list(range(keep, n)))
    model.eval()
