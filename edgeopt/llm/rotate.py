"""Rotate a Llama-family causal LM's residual stream (QuaRot-style) so per-token int8 activations lose less, with
the fp32 function unchanged.

Dynamic int8 (LiteRT's / XNNPACK's: one scale per token for a whole activation row) loses most where a few
channels carry activations far larger than the rest. An orthogonal Q applied to the residual stream spreads every
outlier over all channels, and because RMSNorm only divides by the row's norm, which Q keeps, the whole network
can run in the rotated basis (Ashkboos et al., 2024, "QuaRot"; Liu et al., 2024, "SpinQuant"):

- each RMSNorm gain is folded into the Linears that read the norm's output (gains become 1);
- the embedding table becomes E·Q, every Linear reading the residual W·Q, every Linear writing to it Qᵀ·W;
- the output layer gets the final norm's gain and Q, so it no longer equals the embedding table (untied: the file
  stores one more int8 table; a token reads the same bytes as before, because the lookup reads one row);
- each value head is rotated by a Hadamard matrix that the output projection undoes (attention is linear in V);
- the down projection's input (SwiGLU's output, where the largest outliers live) has no norm in front of it, so it
  gets an *online* block-diagonal Hadamard rotation: one (n/b, b) x (b, b) float matmul per layer, and the
  weight is rotated to match (`HadamardLinear`). The re-authored LiteRT model carries it (`reauthor.reauthor`) and
  the quantizer leaves it in float (`export.ai_edge_recipe`).

Written by hand: ai-edge-quantizer's Hadamard algorithms rotate the input of every fully-connected op online
(seven extra ops a layer here, one of them a 512 x 512 float matmul), and no maintained library rotates a Hugging
Face model offline for litert-torch to export (QuaRot's and SpinQuant's reference code targets their own CUDA
kernels). On SmolLM2-135M, in a torch simulation of XNNPACK's dynamic int8, top-1 agreement went 0.898 -> 0.944
with the rotation and 0.964 with GPTQ weights on top (edgeopt.llm.gptq).
"""

from __future__ import annotations

import math
from typing import Any

from edgeopt.errors import InputError

ATTR = "edgeopt_rotation"  # the HF config attribute recording a rotation (also read by reauthor and in llm.json)
MAX_BLOCK = 128  # online Hadamard block: the largest power of two dividing the FFN width, at most this


def hadamard(n: int) -> Any:
    """The normalized Sylvester Hadamard matrix of size `n` (a power of two): symmetric and orthogonal."""
    import torch  # lazy: heavy

    if n < 1 or n & (n - 1):
        raise InputError(f"a Hadamard block must be a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def block_size(width: int, cap: int = MAX_BLOCK) -> int:
    """The largest power of two that divides `width`, at most `cap`."""
    return min(width & -width, cap)


def _module_classes() -> tuple[type, type]:
    import torch  # lazy: heavy

    class BlockHadamard(torch.nn.Module):
        """x -> x · blockdiag(H_b, ..., H_b) on the last axis: a reshape and one small float matmul."""

        def __init__(self, width: int, block: int) -> None:
            super().__init__()
            self.width, self.block = width, block
            self.register_buffer("matrix", hadamard(block).float(), persistent=False)

        def forward(self, x: Any) -> Any:
            y = x.reshape(*x.shape[:-1], self.width // self.block, self.block)
            return torch.matmul(y, self.matrix).reshape(x.shape)

    class HadamardLinear(torch.nn.Linear):
        """A Linear whose input is rotated online by a block Hadamard (its weight was rotated to match); its state
        dict keys are a plain Linear's, so weight loaders see no difference."""

        def forward(self, x: Any) -> Any:
            return torch.nn.functional.linear(self.rotation(x), self.weight, self.bias)

        @classmethod
        def wrap(cls, lin: Any, block: int) -> Any:
            out = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
            out.weight, out.bias = lin.weight, lin.bias
            out.rotation = BlockHadamard(lin.in_features, block)
            return out

    return BlockHadamard, HadamardLinear


_CLASSES: tuple[type, type] | None = None


def classes() -> tuple[type, type]:
    """(BlockHadamard, HadamardLinear): torch modules, built on first use so importing this module stays light."""
    global _CLASSES
    if _CLASSES is None:
        _CLASSES = _module_classes()
    return _CLASSES


def wrap_down_projections(linears: list[Any], block: int) -> list[Any]:
    """The down projections wrapped so their input is rotated online (their weights must already be rotated)."""
    return [classes()[1].wrap(lin, block) for lin in linears]


def orthogonal(n: int, seed: int = 0) -> Any:
    """A random orthogonal matrix (float64, Haar-distributed: QR of a Gaussian with the signs fixed), seeded."""
    import torch  # lazy: heavy

    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def rotation_of(config: Any) -> dict[str, Any] | None:
    """The rotation recorded on an HF config (or its dict), None for an unrotated model."""
    value = config.get(ATTR) if isinstance(config, dict) else getattr(config, ATTR, None)
    return dict(value) if value else None


def rotate(model: Any, seed: int = 0) -> dict[str, Any]:
    """Rotate the Llama-family HF causal LM `model` in place (see the module docstring) and record it on its
    config; the fp32 logits stay the same up to float rounding. Returns what was done."""
    import torch  # lazy: heavy

    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(model, "lm_head") or not hasattr(inner, "norm"):
        raise InputError("rotate: the model is not a Llama-family causal LM (model.layers, model.norm, lm_head)")
    if rotation_of(model.config):
        raise InputError("rotate: the model is already rotated")
    cfg = model.config
    heads = int(cfg.num_attention_heads)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    width = int(cfg.intermediate_size)
    block = block_size(width)
    if block < 16:
        raise InputError(f"rotate: the FFN width {width} has no power-of-two block >= 16 for the online rotation")
    q = orthogonal(int(cfg.hidden_size), seed)
    h_down = torch.block_diag(*[hadamard(block)] * (width // block))
    h_head = hadamard(head_dim) if head_dim & (head_dim - 1) == 0 else None

    def w(lin: Any) -> Any:
        return lin.weight.data.double()

    def fold(norm: Any, lins: list[Any]) -> None:
        gain = norm.weight.data.double()
        for lin in lins:
            lin.weight.data = (w(lin) * gain[None, :]).float()
        norm.weight.data.fill_(1.0)

    with torch.no_grad():
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.data.clone(), requires_grad=False)
        downs = []
        for layer in layers:
            at, mlp = layer.self_attn, layer.mlp
            fold(layer.input_layernorm, [at.q_proj, at.k_proj, at.v_proj])
            fold(layer.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj])
            for lin in (at.q_proj, at.k_proj, at.v_proj, mlp.gate_proj, mlp.up_proj):
                lin.weight.data = (w(lin) @ q).float()
            for lin in (at.o_proj, mlp.down_proj):
                lin.weight.data = (q.T @ w(lin)).float()
                if lin.bias is not None:
                    lin.bias.data = (lin.bias.data.double() @ q).float()
            if h_head is not None:  # V rows per head by H, O columns per query head by H (H is its own inverse)
                wv = w(at.v_proj).reshape(kv_heads, head_dim, -1)
                at.v_proj.weight.data = torch.einsum("dk,hdi->hki", h_head, wv).reshape(kv_heads * head_dim, -1).float()
                if at.v_proj.bias is not None:
                    bv = at.v_proj.bias.data.double().reshape(kv_heads, head_dim)
                    at.v_proj.bias.data = (bv @ h_head).reshape(-1).float()
                wo = w(at.o_proj).reshape(-1, heads, head_dim)
                at.o_proj.weight.data = torch.einsum("ohd,dk->ohk", wo, h_head).reshape(-1, heads * head_dim).float()
            mlp.down_proj.weight.data = (w(mlp.down_proj) @ h_down).float()
            downs.append(mlp.down_proj)
        for layer, wrapped in zip(layers, wrap_down_projections(downs, block)):
            layer.mlp.down_proj = wrapped
        fold(inner.norm, [model.lm_head])
        model.lm_head.weight.data = (w(model.lm_head) @ q).float()
        inner.embed_tokens.weight.data = (inner.embed_tokens.weight.data.double() @ q).float()
    cfg.tie_word_embeddings = False
    facts = {"seed": seed, "down_block": block, "value_heads": h_head is not None}
    setattr(cfg, ATTR, facts)
    return facts
