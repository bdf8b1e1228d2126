"""SmoothQuant for Llama-family models: move activation outliers into the weights before dynamic int8 quantization,
folding the scales into RMSNorm weights and the preceding projections, so the fp32 model computes the same.

Dynamic int8 (LiteRT's / XNNPACK's: per-channel int8 weights, per-token int8 activations) loses most where a few
input channels carry activations far larger than the rest (SmolLM2 has such channels): one scale per token
then leaves the other channels a handful of levels. SmoothQuant (Xiao et al., 2023) divides each input channel j
of a Linear by s_j = max|X_j|^α / max|W_:,j|^(1-α) and multiplies the weight column by it; the division is folded
into what produces X — the RMSNorm weight before q/k/v and gate/up, the rows of up_proj before down_proj, and the
rows of v_proj before o_proj (the same scale for every query head sharing a KV head) — so nothing is added at run
time (the scales are `edgeopt.nn.smooth.channel_scales`). Written by hand: the maintained implementations
(llm-compressor, Intel Neural Compressor) rewrite models for their own runtimes and quantizers; here the Hugging
Face model is only re-weighted before litert-torch exports it.
"""

from __future__ import annotations

from typing import Any, Sequence

from edgeopt.errors import InputError
from edgeopt.llm.calibrate import feed
from edgeopt.nn.smooth import channel_scales


def _act_max(model: Any, sequences: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Per-input-channel max |x| of every Linear of the decoder blocks on `sequences` (forward hooks)."""
    import torch  # lazy: heavy

    stats: dict[str, Any] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in name:
            def hook(m: Any, inp: Any, out: Any, key: str = name) -> None:
                x = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0)
                stats[key] = torch.maximum(stats[key], x) if key in stats else x
            hooks.append(mod.register_forward_hook(hook))
    feed(model, sequences, hooks)
    return stats


def smooth(model: Any, sequences: Sequence[Sequence[int]], alpha: float = 0.5) -> dict[str, float]:
    """Re-weight the Llama-family `model` in place (see the module docstring) from activation statistics on
    `sequences` (calibration token ids). Returns the largest and median scale applied."""
    import torch  # lazy: heavy

    if not 0 < alpha < 1:
        raise InputError(f"smoothquant alpha must be in (0, 1), got {alpha}")
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None:
        raise InputError("smoothquant: the model has no model.layers (not a Llama-family causal LM)")
    stats = _act_max(model, sequences)
    cfg = model.config
    heads, kv_heads = int(cfg.num_attention_heads), int(getattr(cfg, "num_key_value_heads", cfg.num_attention_heads))
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // heads)
    applied = []
    with torch.no_grad():
        for i, layer in enumerate(layers):
            p = f"model.layers.{i}."
            at, mlp = layer.self_attn, layer.mlp
            # RMSNorm -> q, k, v
            s = channel_scales(stats[p + "self_attn.q_proj"], [at.q_proj.weight, at.k_proj.weight, at.v_proj.weight], alpha)
            layer.input_layernorm.weight.div_(s)
            for lin in (at.q_proj, at.k_proj, at.v_proj):
                lin.weight.mul_(s)
            applied.append(s)
            # RMSNorm -> gate, up
            s = channel_scales(stats[p + "mlp.gate_proj"], [mlp.gate_proj.weight, mlp.up_proj.weight], alpha)
            layer.post_attention_layernorm.weight.div_(s)
            for lin in (mlp.gate_proj, mlp.up_proj):
                lin.weight.mul_(s)
            applied.append(s)
            # up rows -> down columns (silu(gate) * up is linear in up)
            s = channel_scales(stats[p + "mlp.down_proj"], [mlp.down_proj.weight], alpha)
            mlp.up_proj.weight.div_(s[:, None])
            if mlp.up_proj.bias is not None:
                mlp.up_proj.bias.div_(s)
            mlp.down_proj.weight.mul_(s)
            applied.append(s)
            # v rows -> o columns, one scale per KV head channel (query heads sharing it use the same)
            act = stats[p + "self_attn.o_proj"].reshape(kv_heads, heads // kv_heads, head_dim).amax(1)
            w = at.o_proj.weight.detach().abs().amax(0).reshape(kv_heads, heads // kv_heads, head_dim).amax(1)
            s_kv = (act.clamp(min=1e-5).pow(alpha) / w.clamp(min=1e-5).pow(1 - alpha)).clamp(min=1e-5)
            at.v_proj.weight.div_(s_kv.reshape(-1)[:, None])
            if at.v_proj.bias is not None:
                at.v_proj.bias.div_(s_kv.reshape(-1))
            s_o = s_kv[:, None, :].expand(kv_heads, heads // kv_heads, head_dim).reshape(-1)
            at.o_proj.weight.mul_(s_o)
            applied.append(s_kv.reshape(-1))
    flat = torch.cat([a.flatten() for a in applied])
    return {"alpha": alpha, "max_scale": float(flat.max()), "median_scale": float(flat.median()),
            "sequences": len(sequences)}
