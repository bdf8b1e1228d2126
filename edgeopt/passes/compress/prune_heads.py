"""prune.heads: attention-head pruning for Hugging Face BERT-family encoders (MiniLM) and generic multi-head
attention blocks with separate q/k/v projections; heads are scored by head-mask gradients or activations and
cut out of the weights, so the result is a plain, smaller model that still exports to ONNX."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from edgeopt import train as tr
from edgeopt.artifact import Artifact, register_builder
from edgeopt.errors import PassError
from edgeopt.extras import require
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.passes.compress._common import FineTune, derived, example_args, module_copy, param_count, task_data
from edgeopt.passes.compress.losses import DistillLoss, freeze, make_loss
from edgeopt.passes.compress.obs import layer_stats, obs_remove
from edgeopt.passes.compress.padding import art_mask_index
from edgeopt.train import TrainConfig

Q_NAMES = ("query", "q_proj", "q", "q_lin", "to_q")
K_NAMES = ("key", "k_proj", "k", "k_lin", "to_k")
V_NAMES = ("value", "v_proj", "v", "v_lin", "to_v")
OUT_NAMES = ("out_proj", "o_proj", "out", "proj", "o", "out_lin", "to_out", "dense")
HEAD_ATTRS = ("num_attention_heads", "num_heads", "n_heads", "n_head", "heads")


@dataclass
class AttentionUnit:
    """One attention block: its q/k/v projections (out rows = heads × head_dim) and the output projection
    whose input columns are the concatenated heads."""

    name: str
    module: Any
    q: Any
    k: Any
    v: Any
    out: Any
    heads: int
    head_dim: int

    def set_heads(self, keep: list[int]) -> None:
        """Cut the weights down to the heads in `keep` (sorted) and update the block's head-count attributes.

        The cut is torch-pruning's per-layer surgery (`prune_linear_out_channels` on q/k/v, `..._in_channels`
        on the output projection), the coupling comes from the block's structure. Measured on the tiny
        2-layer BERT (heads [1, 3] / [0, 2] kept): the same weights and outputs, bit for bit, as the slicing
        it replaced and as pruning the dependency-graph group of q's rows (which couples exactly q, k, v and
        the output projection there). The graph itself is not used: it needs a traced example, which neither
        this method nor the resume builder has. Nor is torch-pruning's head pruner (MetaPruner with
        `num_heads` / `prune_num_heads`): it picks heads by its weight-norm importance, while prune.heads
        picks them by head-mask gradients or activations (`head_importance`), and it leaves the head-count
        attributes to the caller too."""
        tp = require("torch_pruning", "prune.heads")  # lazy: an optional extra

        d, drop = self.head_dim, [h for h in range(self.heads) if h not in keep]
        idxs = [c for h in drop for c in range(h * d, (h + 1) * d)]
        if idxs:
            for lin in (self.q, self.k, self.v):
                tp.prune_linear_out_channels(lin, idxs)
            tp.prune_linear_in_channels(self.out, idxs)
        for attr in HEAD_ATTRS:
            if isinstance(getattr(self.module, attr, None), int):
                setattr(self.module, attr, len(keep))
        for attr in ("all_head_size", "inner_dim", "embed_dim_inner"):
            if isinstance(getattr(self.module, attr, None), int):
                setattr(self.module, attr, len(keep) * d)
        self.heads = len(keep)


def find_attention(model: Any) -> tuple[list[AttentionUnit], dict[str, str]]:
    """Every attention block with separate q/k/v Linear projections and a known head count; blocks that look
    like attention but cannot be handled (packed in_proj, unknown head count, no output projection) are
    returned with the reason."""
    from torch import nn

    units, skipped = [], {}
    parents = {n: m for n, m in model.named_modules()}
    for name, m in model.named_modules():
        if isinstance(m, nn.MultiheadAttention):
            skipped[name] = "nn.MultiheadAttention packs q/k/v in one in_proj (not handled)"
            continue
        children = dict(m.named_children())
        q = next((children[n] for n in Q_NAMES if isinstance(children.get(n), nn.Linear)), None)
        k = next((children[n] for n in K_NAMES if isinstance(children.get(n), nn.Linear)), None)
        v = next((children[n] for n in V_NAMES if isinstance(children.get(n), nn.Linear)), None)
        if q is None or k is None or v is None:
            continue
        heads = next((getattr(m, a) for a in HEAD_ATTRS if isinstance(getattr(m, a, None), int)), None)
        if not heads:
            skipped[name] = "no head count attribute (num_attention_heads / num_heads / n_head)"
            continue
        out = next((children[n] for n in OUT_NAMES if isinstance(children.get(n), nn.Linear)), None)
        if out is None:  # Hugging Face BERT: the output projection is the sibling `output.dense`
            parent = parents.get(name.rsplit(".", 1)[0] if "." in name else "")
            cand = getattr(getattr(parent, "output", None), "dense", None)
            out = cand if isinstance(cand, nn.Linear) else None
        if out is None:
            skipped[name] = "no output projection found"
            continue
        d = q.out_features // heads
        if d * heads != q.out_features or k.out_features != q.out_features or v.out_features != q.out_features \
                or out.in_features != q.out_features:
            skipped[name] = "q/k/v/out widths do not split into heads"
            continue
        units.append(AttentionUnit(name, m, q, k, v, out, heads, d))
    return units, skipped


def _mask_hooks(units: list[AttentionUnit], mask: Any) -> list[Any]:
    """Pre-hooks on each output projection multiplying its input (the concatenated heads) by mask[layer]."""
    handles = []
    for i, u in enumerate(units):
        def pre(_mod, args, i=i, d=u.head_dim):
            x = args[0]
            return (x * mask[i].repeat_interleave(d).to(x.dtype), *args[1:])
        handles.append(u.out.register_forward_pre_hook(pre))
    return handles


def head_importance(model: Any, units: list[AttentionUnit], data: Any, kind: str, batches: int, seed: int = 0) -> Any:
    """(layers, heads) importance. `gradient`: |∂L/∂mask| of a head mask (Michel et al., 2019), L the task loss
    with labels; without labels the first-order output change is estimated with random projections of the
    output, E[(rᵀ ∂y/∂mask)²]^½. `activation`: mean norm of each head's output."""
    import torch
    import torch.nn.functional as F

    h = max(u.heads for u in units)
    mask = torch.ones(len(units), h, requires_grad=(kind == "gradient"))
    score = torch.zeros(len(units), h, dtype=torch.float64)
    bs = min(32, len(data))
    gen = torch.Generator().manual_seed(seed)
    model.eval()
    if kind == "activation":
        handles = []
        for i, u in enumerate(units):
            def pre(_mod, args, i=i, u=u):
                x = args[0].detach()
                per = x.reshape(-1, u.heads, u.head_dim).norm(dim=-1).mean(0)  # (heads,)
                score[i, :u.heads] += per.double()
            handles.append(u.out.register_forward_pre_hook(pre))
        try:
            with torch.no_grad():
                for b, (x, _) in enumerate(data.batches(bs)):
                    if b >= batches:
                        break
                    model(*x)
        finally:
            for hd in handles:
                hd.remove()
        return score
    handles = _mask_hooks(units, mask)
    try:
        for b, (x, y) in enumerate(data.batches(bs)):
            if b >= batches:
                break
            out = model(*x)
            if y is not None and not y.is_floating_point():
                g, = torch.autograd.grad(F.cross_entropy(out, y), mask)
                score += g.abs().double()
            else:
                for _ in range(4):
                    r = torch.randn(out.shape, generator=gen)
                    g, = torch.autograd.grad((out * r).sum() / out.shape[0], mask, retain_graph=True)
                    score += g.double() ** 2
    finally:
        for hd in handles:
            hd.remove()
    return score.sqrt() if (data.targets is None or data.targets.is_floating_point()) else score


def choose_heads(score: Any, heads: list[int], sparsity: float, scope: str, min_heads: int) -> list[list[int]]:
    """Heads kept per layer (sorted): `layer` scope keeps the top (1 - sparsity) of each layer, `global` ranks
    scores normalized per layer across the model; every layer keeps at least `min_heads`."""
    if scope == "layer":
        keep = []
        for i, n in enumerate(heads):
            k = max(min_heads, n - int(round(sparsity * n)))
            order = sorted(range(n), key=lambda j: -float(score[i, j]))
            keep.append(sorted(order[:k]))
        return keep
    total = sum(heads)
    n_drop = int(round(sparsity * total))
    entries = []
    for i, n in enumerate(heads):
        s = score[i, :n]
        s = s / s.sum().clamp(min=1e-12)
        entries += [(float(s[j]), i, j) for j in range(n)]
    entries.sort()
    left = list(heads)
    dropped: set[tuple[int, int]] = set()
    for _, i, j in entries:
        if len(dropped) >= n_drop:
            break
        if left[i] - 1 < max(1, min_heads):
            continue
        dropped.add((i, j))
        left[i] -= 1
    return [sorted(j for j in range(n) if (i, j) not in dropped) for i, n in enumerate(heads)]


def obs_heads(model: Any, units: list[AttentionUnit], calib: Any, mask_at: int | None, cfg: Any
              ) -> tuple[Any, list[list[int]]]:
    """Per layer, in forward order on the model as pruned so far: remove round(sparsity × heads) heads (at least
    `min_heads` stay) by structured OBS on the output projection's input columns (one group per head),
    compensating the kept columns (edgeopt.passes.compress.obs). Returns ((layers, heads) scores: the
    removal error of each head in its layer's first round, for the notes; kept heads per layer)."""
    import torch

    h = max(u.heads for u in units)
    score = torch.zeros(len(units), h, dtype=torch.float64)
    keep_all = []
    for i, u in enumerate(units):
        n = u.heads
        n_drop = min(int(round(cfg.sparsity * n)), max(0, n - cfg.min_heads))
        gram = layer_stats(model, u.out, calib, mask_at).input_gram()
        score[i, :n] = torch.as_tensor(head_errors(u.out.weight, gram, u.head_dim, cfg.damp))
        keep = list(range(n))
        if n_drop:
            keep, weight = obs_remove(u.out.weight, gram, n_drop, group=u.head_dim, damp=cfg.damp)
            with torch.no_grad():
                u.out.weight.copy_(weight)
            u.set_heads(keep)
        keep_all.append(keep)
    return score, keep_all


def head_errors(weight: Any, gram: Any, head_dim: int, damp: float) -> list[float]:
    """OBS error of removing each head alone: tr(W_g (H_gg)⁻¹ W_gᵀ), H = (G + λ I)⁻¹."""
    import torch

    d = gram.shape[0]
    h = torch.linalg.inv(gram + damp * float(torch.diag(gram).mean().clamp(min=1e-12)) * torch.eye(d, dtype=gram.dtype))
    w = weight.detach().double()
    out = []
    for g in range(d // head_dim):
        s = slice(g * head_dim, (g + 1) * head_dim)
        out.append(float(torch.trace(w[:, s] @ torch.linalg.solve(h[s, s], w[:, s].T))))
    return out


@register("prune.heads")
class PruneHeads(Pass):
    """Remove the least important attention heads (`sparsity` of all heads; at least `min_heads` per layer).

    Heads are found in every block with separate q/k/v Linear projections and a head-count attribute
    (Hugging Face BERT/MiniLM's BertSelfAttention, or your own); a head goes by slicing its rows out of
    q/k/v and its columns out of the output projection (torch-pruning's layer surgery, see
    AttentionUnit.set_heads), so the pruned model is ordinary PyTorch and exports to ONNX. Then, with `recover` and train.epochs > 0, a short distillation from the unpruned model.
    `importance: obs` picks the heads layer by layer (each layer loses round(sparsity × heads), `scope` is not
    used) by structured OBS on the output projection over `samples` calibration samples and updates the kept
    columns to make up for the removed heads (edgeopt.passes.compress.obs), which needs less recovery.
    Equal head counts in every layer (scope: layer, or obs) keep ONNX Runtime's attention fusion: the output's
    meta num_heads / hidden_size say the new count and width, which graph.fuse passes on.
    ctx.notes["prune.heads"]: {total_heads, active_heads, sparsity, per_layer, importance, skipped, ...}.
    """

    class Config(FineTune):
        sparsity: float = Field(default=0.5, ge=0, lt=1, description="fraction of heads removed, in [0, 1)")
        importance: Literal["gradient", "activation", "obs"] = "gradient"
        samples: int = Field(default=256, ge=2, description="obs: calibration samples for the Gram matrices")
        damp: float = Field(default=0.01, gt=0, description="obs: ridge of the compensation, × mean diagonal")
        scope: Literal["global", "layer"] = "global"
        min_heads: int = Field(default=1, ge=1)
        importance_batches: int = Field(default=4, ge=1)
        recover: Literal["distill", "finetune", "none"] = "distill"
        train: TrainConfig = TrainConfig(epochs=2, patience=2, lr=5e-5, batch_size=16)

    accepts = ("torch",)
    produces = "torch"
    tolerance = None
    tolerance_reason = ("removing heads changes the function: the pruned model is scored on held-out data (accuracy, "
                        "or cosine to the input), and recovery never ends below the score it started from")

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        cfg = self.config
        original = module_copy(art, self.name)
        model = copy.deepcopy(original)
        units, skipped = find_attention(model)
        for name, why in skipped.items():
            ctx.warnings.append(f"{self.name}: skipped {name}: {why}")
        if not units:
            raise PassError(f"{self.name}: no attention block with separate q/k/v projections and a head count")
        example_args(art, ctx, self.name)  # fails early with a clear message when there is nothing to run
        data = task_data(art, ctx, cfg, original, self.name)
        fit_data, val = data.split(cfg.val_fraction, seed=cfg.train.seed)
        heads_before = [u.heads for u in units]
        if cfg.importance == "obs":
            score, keep = obs_heads(model, units, fit_data.subset(slice(0, cfg.samples)), art_mask_index(art), cfg)
        else:
            score = head_importance(model, units, fit_data, cfg.importance, cfg.importance_batches, cfg.train.seed)
            keep = choose_heads(score, heads_before, cfg.sparsity, cfg.scope, cfg.min_heads)
            for u, k in zip(units, keep):
                if len(k) < u.heads:
                    u.set_heads(k)
        total, active = sum(heads_before), sum(len(k) for k in keep)
        notes: dict[str, Any] = {
            "total_heads": total, "active_heads": active, "sparsity": 1 - active / total,
            "per_layer": {u.name: len(k) for u, k in zip(units, keep)},
            "kept": {u.name: k for u, k in zip(units, keep)}, "importance": cfg.importance,
            "scores": [[round(float(s), 6) for s in row[:n]] for row, n in zip(score, heads_before)],
            "skipped": skipped, "params_before": param_count(original), "params_after": param_count(model),
            "metric": "accuracy" if data.labelled else "cosine_to_input",
        }
        teacher = freeze(original)
        notes["score_before_recovery"] = tr.evaluate(model, val)
        if cfg.recover != "none" and cfg.train.epochs > 0:
            loss_fn = None
            if cfg.recover == "distill":
                loss_fn = make_loss(teacher, DistillLoss.for_outputs(data.labelled))
            fit = tr.fit(model, fit_data, cfg.train, loss_fn=loss_fn, val=val, progress=ctx.progress,
                         description=f"{self.name} recovery")
            notes["fit"] = fit.to_dict()
        notes["score"] = tr.evaluate(model, val)
        ctx.notes[self.name] = notes
        meta: dict[str, Any] = {"heads": {"total_heads": total, "active_heads": active, "sparsity": notes["sparsity"]}}
        counts = {len(k) for k in keep}
        if "num_heads" in art.meta or "hidden_size" in art.meta:
            # what graph.fuse hands ONNX Runtime's attention fusion: its num_heads × head size must be the width of
            # q/k/v, else the fused Attention fails to load; with counts that differ per layer it cannot be fused
            if len(counts) == 1 and len({u.head_dim for u in units}) == 1:
                meta["num_heads"], meta["hidden_size"] = active // len(units), active // len(units) * units[0].head_dim
            else:
                meta["num_heads"], meta["hidden_size"] = 0, 0
                ctx.warnings.append(f"{self.name}: layers keep different head counts, so ONNX Runtime's attention "
                                    "fusion (graph.fuse) will not apply; scope: layer keeps them equal")
        return derived(model, art, ("prune.heads", {"heads": notes["per_layer"]}), **meta)


@register_builder("prune.heads")
def rebuild_heads(parent: Artifact, args: dict[str, Any], ctx: Any) -> Any:
    """The input model with each attention block cut to `args["heads"][block]` heads (its first ones: the
    weights are loaded afterwards)."""
    model = module_copy(parent, "prune.heads")
    units = {u.name: u for u in find_attention(model)[0]}
    for name, n in args["heads"].items():
        if name not in units or not 0 < int(n) <= units[name].heads:
            raise ValueError(f"prune.heads: no attention block {name!r} with at least {n} heads to rebuild")
        if int(n) < units[name].heads:
            units[name].set_heads(list(range(int(n))))
    return model.eval()
