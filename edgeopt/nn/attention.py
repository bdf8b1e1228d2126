"""Attention-head pruning for your own models: find the heads (Hugging Face BERT-family blocks, blocks with q/k/v
projections, `nn.MultiheadAttention` once converted), score them, cut them out of the weights (the one
implementation `prune.heads` runs).

    from edgeopt.nn import AttentionHeadPruner, PruningConfig

    pruner = AttentionHeadPruner(model, PruningConfig(sparsity=0.3, strategy="global", use_gradients=True))
    pruner.prune(data=(inputs, labels))      # importance from head-mask gradients on a few batches
    pruner.get_stats()                       # {"total_heads": 48, "active_heads": 34, "sparsity": 0.29, ...}

The pruned model is ordinary PyTorch (smaller Linear layers, head counts updated) and exports to ONNX.
`nn.MultiheadAttention` packs q/k/v into one `in_proj_weight`, which neither this module nor torch-pruning can
shrink by heads: `convert_multihead_attention` swaps each for `PrunedMultiHeadAttention` (separate q/k/v/out
projections, the same outputs) first. Head importance (Michel et al., 2019 head-mask gradients; activation
norms; weight norms without data) and the global / per-layer choice are hand-written: no maintained library
scores heads this way for both Hugging Face and plain PyTorch modules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgeopt.extras import require

# torch is imported on first use (prune.heads imports this module and the pass registry stays torch-free): the
# class PrunedMultiHeadAttention resolves through the module-level __getattr__.
__all__ = ["AttentionUnit", "find_attention", "head_importance", "choose_heads", "logits_of",
           "PrunedMultiHeadAttention", "convert_multihead_attention", "HeadImportanceScorer", "PruningConfig",
           "AttentionHeadPruner"]
_BUILT: dict[str, Any] = {}

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
        tp = require("torch_pruning", "attention-head pruning")  # lazy: an optional extra

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
            skipped[name] = ("nn.MultiheadAttention packs q/k/v in one in_proj: convert it first "
                             "(convert_multihead_attention)")
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
            out = logits_of(model(*x))
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


def logits_of(out: Any) -> Any:
    """The tensor a model call returned: itself, `.logits` (Hugging Face classifiers), `.last_hidden_state`, or
    the first element of a tuple."""
    if hasattr(out, "logits"):
        return out.logits
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def convert_multihead_attention(model: Any) -> int:
    """Replace every `nn.MultiheadAttention` submodule of `model` (in place) by a `PrunedMultiHeadAttention` with
    the same weights and outputs; returns how many were replaced."""
    from torch import nn

    cls = __getattr__("PrunedMultiHeadAttention")
    n = 0
    for name, m in list(model.named_modules()):
        if name and isinstance(m, nn.MultiheadAttention):
            model.set_submodule(name, cls.from_multihead(m))
            n += 1
    return n


@dataclass(frozen=True)
class PruningConfig:
    """How many heads go and how they are chosen. `sparsity`: the fraction of all heads removed, in [0, 1).
    `strategy`: `global` ranks heads across layers (scores normalized per layer), `layer` removes the same
    fraction from every layer (equal head counts keep ONNX Runtime's attention fusion). `use_gradients`:
    head-mask gradients (with labels: of the cross-entropy; without: of random projections of the output) when
    True, mean activation norms when False; without data the heads' weight norms. `min_heads` stay per layer."""

    sparsity: float = 0.3
    strategy: Literal["global", "layer"] = "global"
    use_gradients: bool = True
    min_heads: int = 1
    batches: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.sparsity < 1:
            raise ValueError(f"PruningConfig: field 'sparsity': must be in [0, 1), got {self.sparsity}")
        if self.strategy not in ("global", "layer"):
            raise ValueError(f"PruningConfig: field 'strategy': expected global or layer, got {self.strategy!r}")
        if self.min_heads < 1:
            raise ValueError(f"PruningConfig: field 'min_heads': must be >= 1, got {self.min_heads}")
        if self.batches < 1:
            raise ValueError(f"PruningConfig: field 'batches': must be >= 1, got {self.batches}")


def _as_data(data: Any) -> Any:
    """`TensorData`, an (inputs, labels) pair, or one input tensor -> TensorData."""
    import torch

    from edgeopt.train import TensorData

    if data is None or isinstance(data, TensorData):
        return data
    if isinstance(data, torch.Tensor):
        return TensorData((data,), None)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
        return TensorData(tuple(x) if isinstance(x, (tuple, list)) else (x,), y)
    raise ValueError("data: expected TensorData, an (inputs, labels) pair or an input tensor")


class HeadImportanceScorer:
    """Scores every head of `model`'s attention blocks: `gradient` (|∂L/∂head mask|, Michel et al., 2019),
    `activation` (mean norm of each head's output) or `magnitude` (norm of each head's q/k/v rows and output
    columns; needs no data). `score(data)` returns a (layers, max heads) tensor, higher = more important."""

    def __init__(self, model: Any, strategy: Literal["gradient", "activation", "magnitude"] = "gradient",
                 batches: int = 4, seed: int = 0, units: list[AttentionUnit] | None = None):
        """`units`: the blocks to score (default: `find_attention(model)` after converting the model's
        `nn.MultiheadAttention` modules in place)."""
        if strategy not in ("gradient", "activation", "magnitude"):
            raise ValueError(f"HeadImportanceScorer: field 'strategy': expected gradient, activation or magnitude, "
                             f"got {strategy!r}")
        self.model, self.strategy, self.batches, self.seed = model, strategy, batches, seed
        if units is None:
            convert_multihead_attention(model)
            units = find_attention(model)[0]
        self.units = units
        if not self.units:
            raise ValueError("no attention block with q/k/v projections and a head count in this model")

    def score(self, data: Any = None) -> Any:
        import torch

        if self.strategy == "magnitude":
            h = max(u.heads for u in self.units)
            score = torch.zeros(len(self.units), h, dtype=torch.float64)
            with torch.no_grad():
                for i, u in enumerate(self.units):
                    d = u.head_dim
                    for j in range(u.heads):
                        rows = slice(j * d, (j + 1) * d)
                        score[i, j] = float(sum(lin.weight[rows].double().norm() ** 2 for lin in (u.q, u.k, u.v))
                                            + u.out.weight[:, rows].double().norm() ** 2) ** 0.5
            return score
        td = _as_data(data)
        if td is None:
            raise ValueError(f"HeadImportanceScorer: strategy {self.strategy!r} needs data (inputs, labels)")
        return head_importance(self.model, self.units, td, self.strategy, self.batches, self.seed)


class AttentionHeadPruner:
    """Removes the least important heads of `model` in place (`prune`), then reports (`get_stats`). Its
    `nn.MultiheadAttention` modules are converted to `PrunedMultiHeadAttention` (same outputs) on construction."""

    def __init__(self, model: Any, config: PruningConfig | None = None):
        self.model, self.config = model, config or PruningConfig()
        self.converted = convert_multihead_attention(model)
        self.units, self.skipped = find_attention(model)
        if not self.units:
            raise ValueError("no attention block with q/k/v projections and a head count in this model"
                             + (f" (skipped: {self.skipped})" if self.skipped else ""))
        self.heads_before = [u.heads for u in self.units]
        self.kept: list[list[int]] | None = None
        self.importance = ""

    def prune(self, data: Any = None) -> Any:
        """Score (gradients or activations on `data`, weight norms without it), choose, cut; returns the model."""
        cfg = self.config
        kind = "magnitude" if data is None else ("gradient" if cfg.use_gradients else "activation")
        score = HeadImportanceScorer(self.model, kind, cfg.batches, cfg.seed, units=self.units).score(data)
        self.kept = choose_heads(score, self.heads_before, cfg.sparsity, cfg.strategy, cfg.min_heads)
        for u, k in zip(self.units, self.kept):
            if len(k) < u.heads:
                u.set_heads(k)
        self.importance = kind
        return self.model

    def get_stats(self) -> dict[str, Any]:
        """{total_heads, active_heads, sparsity (removed / total), per_layer, importance, converted}."""
        total = sum(self.heads_before)
        active = sum(u.heads for u in self.units)
        return {"total_heads": total, "active_heads": active, "sparsity": 1 - active / total,
                "per_layer": {u.name: u.heads for u in self.units}, "importance": self.importance or None,
                "converted_multihead_attention": self.converted}


def __getattr__(name: str) -> Any:
    if name == "PrunedMultiHeadAttention":
        if not _BUILT:
            _BUILT.update(_build())
        return _BUILT[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _build() -> dict[str, Any]:
    import torch
    from torch import nn

    class PrunedMultiHeadAttention(nn.Module):
        """Multi-head attention with separate q/k/v/out projections, so heads can be cut out of its weights; the
        call signature and outputs of `nn.MultiheadAttention` (query, key, value, key_padding_mask, need_weights,
        attn_mask; `batch_first`), computed with `F.scaled_dot_product_attention`. `from_multihead(m)` copies an
        `nn.MultiheadAttention`'s weights (the same outputs); after pruning `num_heads` is the heads left and
        the inner width num_heads × head_dim may be smaller than `embed_dim`."""

        def __init__(self, embed_dim: int, num_heads: int, bias: bool = True, batch_first: bool = False,
                     dropout: float = 0.0):
            super().__init__()
            if embed_dim < 1 or num_heads < 1 or embed_dim % num_heads:
                raise ValueError(f"PrunedMultiHeadAttention: embed_dim {embed_dim} must be a positive multiple of "
                                 f"num_heads {num_heads}")
            self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
            self.batch_first, self.dropout = batch_first, dropout
            self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
            self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
            self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
            self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

        @classmethod
        def from_multihead(cls, m: Any) -> "PrunedMultiHeadAttention":
            if not m._qkv_same_embed_dim:
                raise ValueError("nn.MultiheadAttention with kdim/vdim != embed_dim is not supported")
            if m.bias_k is not None or m.add_zero_attn:
                raise ValueError("nn.MultiheadAttention with add_bias_kv / add_zero_attn is not supported")
            new = cls(m.embed_dim, m.num_heads, bias=m.in_proj_bias is not None, batch_first=m.batch_first,
                      dropout=m.dropout)
            e = m.embed_dim
            with torch.no_grad():
                for i, lin in enumerate((new.q_proj, new.k_proj, new.v_proj)):
                    lin.weight.copy_(m.in_proj_weight[i * e:(i + 1) * e])
                    if m.in_proj_bias is not None:
                        lin.bias.copy_(m.in_proj_bias[i * e:(i + 1) * e])
                new.out_proj.weight.copy_(m.out_proj.weight)
                if m.out_proj.bias is not None:
                    new.out_proj.bias.copy_(m.out_proj.bias)
            return new.train(m.training)

        def forward(self, query, key, value, key_padding_mask=None, need_weights=False, attn_mask=None,
                    average_attn_weights=True, is_causal=False):
            if need_weights:
                raise ValueError("PrunedMultiHeadAttention computes no attention weights (need_weights=False)")
            if not self.batch_first:  # (L, B, E) -> (B, L, E)
                query, key, value = (t.transpose(0, 1) for t in (query, key, value))
            b, lq, _ = query.shape
            lk = key.shape[1]
            h, d = self.num_heads, self.head_dim
            q = self.q_proj(query).view(b, lq, h, d).transpose(1, 2)  # (B, heads, Lq, d)
            k = self.k_proj(key).view(b, lk, h, d).transpose(1, 2)
            v = self.v_proj(value).view(b, lk, h, d).transpose(1, 2)
            mask = None
            if attn_mask is not None:
                mask = attn_mask if attn_mask.dtype != torch.bool else ~attn_mask  # nn.MHA: True = masked out
                if mask.dim() == 3:  # (B·heads, Lq, Lk)
                    mask = mask.view(b, -1, lq, lk)
            if key_padding_mask is not None:
                kpm = key_padding_mask[:, None, None, :]
                kpm = ~kpm if kpm.dtype == torch.bool else kpm
                if mask is None:
                    mask = kpm
                elif mask.dtype == torch.bool and kpm.dtype == torch.bool:
                    mask = mask & kpm
                else:
                    to_f = (lambda m: m if m.dtype != torch.bool else
                            torch.zeros(m.shape, dtype=q.dtype).masked_fill(~m, float("-inf")))
                    mask = to_f(mask) + to_f(kpm)
            p = self.dropout if self.training else 0.0
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                                                 is_causal=is_causal and mask is None)
            o = self.out_proj(o.transpose(1, 2).reshape(b, lq, h * d))
            if not self.batch_first:
                o = o.transpose(0, 1)
            return o, None

    return {"PrunedMultiHeadAttention": PrunedMultiHeadAttention}
