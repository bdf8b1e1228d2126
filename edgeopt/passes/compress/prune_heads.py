"""prune.heads: attention-head pruning for Hugging Face BERT-family encoders (MiniLM) and generic multi-head
attention blocks with separate q/k/v projections; heads are scored by head-mask gradients or activations and
cut out of the weights, so the result is a plain, smaller model that still exports to ONNX."""

from __future__ import annotations

import copy
from typing import Any, Literal

from pydantic import Field

from edgeopt import train as tr
from edgeopt.artifact import Artifact, register_builder
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.passes.compress._common import FineTune, derived, example_args, module_copy, param_count, task_data
from edgeopt.passes.compress.losses import DistillLoss, freeze, make_loss
from edgeopt.passes.compress.obs import layer_stats, obs_remove
from edgeopt.nn.attention import (AttentionUnit, choose_heads, convert_multihead_attention, find_attention,
                                  head_importance)
from edgeopt.passes.compress.padding import art_mask_index
from edgeopt.train import TrainConfig


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
    (Hugging Face BERT/MiniLM's BertSelfAttention, or your own) and in `nn.MultiheadAttention` (converted to
    `edgeopt.nn.PrunedMultiHeadAttention` first: the same outputs); a head goes by slicing its rows out of
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
        convert_multihead_attention(model)  # nn.MultiheadAttention -> separate q/k/v/out, the same outputs
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
    convert_multihead_attention(model)
    units = {u.name: u for u in find_attention(model)[0]}
    for name, n in args["heads"].items():
        if name not in units or not 0 < int(n) <= units[name].heads:
            raise ValueError(f"prune.heads: no attention block {name!r} with at least {n} heads to rebuild")
        if int(n) < units[name].heads:
            units[name].set_heads(list(range(int(n))))
    return model.eval()
