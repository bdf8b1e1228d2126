"""Layer-wise structured pruning with compensation (structured Optimal Brain Surgeon, as in ZipLM): the input
columns of a Linear layer are removed in groups (one FFN neuron, or one attention head's columns), each time the
group whose removal least changes the layer's outputs on calibration data, and the kept columns are updated so
that the layer still reproduces its original outputs as closely as a least-squares fit allows.

Written by hand: torch-pruning cuts the weights (its layer surgery is used for that), but neither it nor another
maintained library ships an OBS update for structured groups. The calibration statistic is the Gram matrix
G = Σ a aᵀ of the layer's inputs over the valid (non-padding) tokens; with H = (G + λ·mean(diag G)·I)⁻¹ the
error of removing group g is tr(W_g (H_gg)⁻¹ W_gᵀ) and the update is W ← W − W_g (H_gg)⁻¹ H_g,: (then
H ← H − H_:,g (H_gg)⁻¹ H_g,:), see Kurtic et al., "ZipLM" (2023) and Frantar & Alistarh, "Optimal Brain
Compression" (2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgeopt.passes.compress.padding import cut_batches, length_order
from edgeopt.train import TensorData


class _Captured(Exception):
    """Raised by a capture hook to stop the forward pass once the input it wants has been seen."""


def _valid_tokens(a: Any, xs: tuple[Any, ...], mask_at: int | None) -> Any:
    """(tokens, features) rows of an activation `a`, only the tokens the attention mask marks valid."""
    if mask_at is not None and a.dim() == 3 and tuple(a.shape[:2]) == tuple(xs[mask_at].shape):
        a = a[xs[mask_at].bool()]
    return a.reshape(-1, a.shape[-1])


@dataclass
class LayerStats:
    """Calibration statistics of one Linear layer's inputs `a` (valid tokens only), from one forward pass:
    `gram` = Σ [a; 1][a; 1]ᵀ (float64, (in + 1)²: the last row/column carry Σ a and the token count) and, for a
    refit, `cross` = Σ [a; 1] yᵀ with y = teacher projection + teacher residual − student residual (what the
    student's projection should add to its residual to match the teacher there), else None."""

    gram: Any
    cross: Any = None

    @property
    def inputs(self) -> int:
        return int(self.gram.shape[0]) - 1

    def input_gram(self) -> Any:
        """Σ a aᵀ, the statistic OBS works with."""
        return self.gram[:-1, :-1]


def layer_stats(student: Any, module: Any, data: TensorData, mask_at: int | None, *, teacher: Any = None,
                parent: str | None = None, name: str | None = None, batch_size: int = 32) -> LayerStats:
    """LayerStats of `module` (a Linear of `student`) on `data`; each forward stops once it has what it needs.

    With `teacher`, `parent` (the module that calls `module` as `parent(hidden, residual)` and adds the
    projection to the residual, as Hugging Face BertOutput does) and `name` (the Linear's module name, the same
    in both models), `cross` is collected too; it stays None when `parent` is not called that way."""
    import torch

    seen: dict[str, Any] = {}

    def grab(key: str, n_args: int):
        def pre(_mod: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            seen[key] = (args + tuple(kwargs.values()))[:n_args]
            raise _Captured
        return pre

    refit = teacher is not None and parent is not None and name is not None
    handles = []
    if refit:
        handles.append(student.get_submodule(parent).register_forward_pre_hook(grab("s", 2), with_kwargs=True))
        handles.append(teacher.get_submodule(parent).register_forward_pre_hook(grab("t", 2), with_kwargs=True))
        t_module = teacher.get_submodule(name)
    else:
        handles.append(module.register_forward_pre_hook(grab("s", 1), with_kwargs=True))
    gram = cross = None
    student.eval()
    try:
        with torch.no_grad():
            for xs, _ in cut_batches(data, batch_size, mask_at, length_order(data, mask_at)):
                for model in ((student, teacher) if refit else (student,)):
                    try:
                        model(*xs)
                    except _Captured:
                        pass
                got = seen.pop("s", None)
                if got is None:
                    raise RuntimeError(f"layer_stats: {type(module).__name__} was not reached by the forward pass")
                a = got[0]
                target = None
                if refit:
                    other = seen.pop("t", None)
                    vals = [*got, *(other or ())]
                    if len(vals) != 4 or not all(isinstance(v, torch.Tensor) for v in vals) \
                            or vals[1].shape[-1] != module.out_features or vals[1].shape[:-1] != a.shape[:-1]:
                        refit, cross = False, None  # not a (hidden, residual) call: OBS statistics only
                    else:
                        hs, rs, ht, rt = (_valid_tokens(v, xs, mask_at).float() for v in vals)
                        target = t_module(ht) + rt - rs
                a = _valid_tokens(a, xs, mask_at).float()
                a1 = torch.cat([a, torch.ones(a.shape[0], 1, dtype=a.dtype)], 1)
                g = (a1.T @ a1).double()
                gram = g if gram is None else gram + g
                if target is not None:
                    c = (a1.T @ target).double()
                    cross = c if cross is None else cross + c
    finally:
        for h in handles:
            h.remove()
    if gram is None:
        raise ValueError("layer_stats: no calibration samples")
    return LayerStats(gram, cross if refit else None)


def refit(module: Any, stats: LayerStats, keep: list[int], damp: float = 0.01) -> None:
    """Set the weight (and bias) of `module`, whose inputs are now the columns `keep` of those `stats` saw, to
    the least-squares fit of `stats.cross` (ridge `damp` × mean diagonal)."""
    import torch

    if stats.cross is None:
        raise ValueError("refit: the statistics hold no refit target")
    d = stats.inputs
    rows = list(keep) + ([d] if module.bias is not None else [])
    g, c = stats.gram[rows][:, rows], stats.cross[rows]
    ridge = torch.zeros(len(rows), dtype=g.dtype)
    ridge[:len(keep)] = damp * float(torch.diag(g)[:len(keep)].mean().clamp(min=1e-12))
    sol = torch.linalg.solve(g + torch.diag(ridge), c)  # (kept [+ 1], out)
    with torch.no_grad():
        module.weight.copy_(sol[:len(keep)].T.to(module.weight.dtype))
        if module.bias is not None:
            module.bias.copy_(sol[len(keep)].to(module.bias.dtype))


def obs_remove(weight: Any, gram: Any, n_remove: int, group: int = 1, damp: float = 0.01, steps: int = 32,
               protect: list[int] | None = None) -> tuple[list[int], Any]:
    """Remove `n_remove` groups of `group` consecutive input columns of `weight` (out × in) by structured OBS.

    Returns (kept group indices, sorted; the compensated weight, same shape, float32, removed columns zero).
    The groups go in at most `steps` rounds (one group a round when n_remove ≤ steps): each round removes the
    ⌈n_remove / steps⌉ groups of least error together, with the joint OBS update (exact for the set; only the
    choice is greedier than one at a time). `protect`: group indices never removed. `damp`: ridge λ relative
    to the mean diagonal of the Gram."""
    import torch

    w = weight.detach().double().clone()
    d = gram.shape[0]
    if d % group or w.shape[1] != d:
        raise ValueError(f"obs_remove: {d} input columns do not split into groups of {group} / match the weight")
    n_groups = d // group
    allowed = torch.ones(n_groups, dtype=torch.bool)
    if protect:
        allowed[list(protect)] = False
    if n_remove > int(allowed.sum()):
        raise ValueError(f"obs_remove: asked to remove {n_remove} of {int(allowed.sum())} removable groups")
    h = torch.linalg.inv(gram + damp * float(torch.diag(gram).mean().clamp(min=1e-12)) * torch.eye(d, dtype=gram.dtype))
    alive = torch.ones(n_groups, dtype=torch.bool)
    per_round = max(1, -(-n_remove // max(1, steps)))
    removed = 0
    while removed < n_remove:
        if group == 1:
            err = (w ** 2).sum(0) / torch.diag(h).clamp(min=1e-30)
        else:
            err = torch.full((n_groups,), float("inf"), dtype=w.dtype)
            for g in (alive & allowed).nonzero().flatten().tolist():
                s = slice(g * group, (g + 1) * group)
                err[g] = torch.trace(w[:, s] @ torch.linalg.solve(h[s, s], w[:, s].T))
        err[~(alive & allowed)] = float("inf")
        k = min(per_round, n_remove - removed)
        chosen = torch.topk(err, k, largest=False).indices
        cols = (chosen[:, None] * group + torch.arange(group)[None, :]).flatten()
        m = torch.linalg.solve(h[cols][:, cols], h[cols, :])  # (k·group, d)
        w -= w[:, cols] @ m
        h -= h[:, cols] @ m
        w[:, cols] = 0
        h[cols, :] = 0
        h[:, cols] = 0
        h[cols, cols] = 1.0  # removed columns: an identity block keeps h invertible; never chosen again
        alive[chosen] = False
        removed += k
    return alive.nonzero().flatten().tolist(), w.float()
