"""Re-author a Hugging Face Llama-family causal LM with litert-torch's Generative API (its building blocks and
its DecoderOnlyModel), load the HF weights into it and check it against the HF model's logits.

The Generative API's own examples hard-code each model's config (and `examples/smollm/convert_to_tflite.py`
builds SmolLM *v1*, RoPE base 1e4, which is silently wrong on SmolLM2 weights); here the config is read from
the model's own `config.json` (`model_config_from_hf`), so SmolLM2, TinyLlama and a user's Llama-family folder
go through one path. The weights are remapped by the Generative API's `ModelLoader` with its HF tensor names. A
model rotated by edgeopt.llm.rotate keeps its online Hadamard before each down projection here too.

The Generative API imports `tensorflow` in one place (`layers/lora.py`, for LoRA flatbuffer surgery, which
edgeopt never uses); TensorFlow (1.5 GB) is not installed. `generative_api()` imports it with a module alias that
points `tensorflow.lite.python.schema_py_generated` at the identical schema module `ai_edge_litert` ships, and
removes the alias again right after, so nothing else (transformers probes for TensorFlow) ever sees it.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass
from typing import Any

from edgeopt.errors import InputError
from edgeopt.extras import require
from edgeopt.llm.rotate import rotation_of, wrap_down_projections

SUPPORTED = ("llama",)  # model_type values whose blocks map 1:1 onto the Generative API's (Llama, SmolLM2, TinyLlama)


def generative_api() -> types.SimpleNamespace:
    """The litert-torch Generative API modules edgeopt uses, imported without TensorFlow (see the module docstring)."""
    require("litert_torch", "re-authoring an LLM for LiteRT")
    tf_names = ("tensorflow", "tensorflow.lite", "tensorflow.lite.python", "tensorflow.lite.python.schema_py_generated")
    shimmed = [n for n in tf_names if n not in sys.modules]
    from edgeopt.measure.litert import quiet_native_stderr

    if "tensorflow" in shimmed:
        with quiet_native_stderr():  # ai_edge_litert's first import prints absl / oneDNN lines
            from ai_edge_litert import schema_py_generated  # lazy: part of the optional LiteRT runtime

        pkg = {n: types.ModuleType(n) for n in tf_names[:3]}
        pkg["tensorflow"].lite = pkg["tensorflow.lite"]
        pkg["tensorflow.lite"].python = pkg["tensorflow.lite.python"]
        pkg["tensorflow.lite.python"].schema_py_generated = schema_py_generated
        sys.modules.update(pkg)
        sys.modules["tensorflow.lite.python.schema_py_generated"] = schema_py_generated

    try:
        # lazy: litert-torch is an optional extra and slow to import; its first import prints absl/oneDNN lines
        with quiet_native_stderr():  # the converter's native modules print absl / oneDNN lines on import
            from litert_torch.generative.layers import kv_cache
            from litert_torch.generative.layers import model_config as cfg
            from litert_torch.generative.quantize import quant_attrs, quant_recipe, quant_recipe_utils
            from litert_torch.generative.utilities import converter, export_config, loader, model_builder
    finally:
        for n in shimmed:
            sys.modules.pop(n, None)
    return types.SimpleNamespace(cfg=cfg, kv_cache=kv_cache, converter=converter, export_config=export_config,
                                 loader=loader, model_builder=model_builder, quant_attrs=quant_attrs,
                                 quant_recipe=quant_recipe, quant_recipe_utils=quant_recipe_utils)


@dataclass(frozen=True)
class LlmShape:
    """What the runtime side needs to know about a re-authored LLM (kept in the exported model's llm.json)."""

    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_seq_len: int
    tied_embeddings: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def rope(hf_config: Any) -> tuple[float, str | None]:
    """(RoPE base, RoPE type) of an HF config: transformers 5 keeps them in `rope_parameters`, older configs in
    `rope_theta` / `rope_scaling`. Reading only `rope_theta` would silently fall back to 1e4 on a transformers-5
    config (SmolLM2 uses 1e5: the same silent error as building SmolLM v1 for SmolLM2 weights)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    base = params.get("rope_theta") or getattr(hf_config, "rope_theta", None) or 10000.0
    kind = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type")
    return float(base), kind


def hf_shape(hf_config: Any) -> LlmShape:
    """The shape of a Llama-family HF config; a one-line error for a config that is not a decoder-only Llama LM."""
    model_type = getattr(hf_config, "model_type", None)
    if getattr(hf_config, "is_encoder_decoder", False) or model_type not in SUPPORTED:
        raise InputError(f"model type {model_type!r} is not a decoder-only Llama-family LM; the LiteRT LLM export "
                         f"re-authors {', '.join(SUPPORTED)} (SmolLM, SmolLM2, TinyLlama, Llama-2/3 layouts)")
    rope_type = rope(hf_config)[1]
    if rope_type not in (None, "default"):
        raise InputError(f"RoPE type {rope_type!r} is not supported by the LiteRT LLM export (plain RoPE only)")
    heads = int(hf_config.num_attention_heads)
    head_dim = int(getattr(hf_config, "head_dim", None) or hf_config.hidden_size // heads)
    return LlmShape(num_layers=int(hf_config.num_hidden_layers), num_heads=heads,
                    num_kv_heads=int(getattr(hf_config, "num_key_value_heads", None) or heads), head_dim=head_dim,
                    hidden_size=int(hf_config.hidden_size),
                    intermediate_size=int(getattr(hf_config, "intermediate_size", 0) or 0), vocab_size=int(hf_config.vocab_size),
                    max_seq_len=int(getattr(hf_config, "max_position_embeddings", 2048)),
                    tied_embeddings=bool(getattr(hf_config, "tie_word_embeddings", False)))


def model_config_from_hf(hf_config: Any, api: types.SimpleNamespace | None = None) -> Any:
    """The Generative API `ModelConfig` of a Llama-family HF config (RMSNorm, RoPE, grouped-query attention,
    SwiGLU), with RoPE base, norm epsilon and biases read from the config rather than assumed."""
    api = api or generative_api()
    cfg = api.cfg
    shape = hf_shape(hf_config)
    attn = cfg.AttentionConfig(num_heads=shape.num_heads, head_dim=shape.head_dim,
                               num_query_groups=shape.num_kv_heads,
                               rotary_base=rope(hf_config)[0],
                               rotary_percentage=1.0, qkv_use_bias=bool(getattr(hf_config, "attention_bias", False)),
                               output_proj_use_bias=bool(getattr(hf_config, "attention_bias", False)))
    ff = cfg.FeedForwardConfig(type=cfg.FeedForwardType.GATED, activation=cfg.ActivationConfig(cfg.ActivationType.SILU),
                               intermediate_size=int(hf_config.intermediate_size),
                               use_bias=bool(getattr(hf_config, "mlp_bias", False)))
    act = getattr(hf_config, "hidden_act", "silu")
    if act != "silu":
        raise InputError(f"activation {act!r} is not supported by the LiteRT LLM export (Llama uses silu)")
    norm = cfg.NormalizationConfig(type=cfg.NormalizationType.RMS_NORM,
                                   epsilon=float(getattr(hf_config, "rms_norm_eps", 1e-5)))
    block = cfg.TransformerBlockConfig(attn_config=attn, ff_config=ff, pre_attention_norm_config=norm,
                                       post_attention_norm_config=norm)
    return cfg.ModelConfig(vocab_size=shape.vocab_size, num_layers=shape.num_layers, max_seq_len=shape.max_seq_len,
                           embedding_dim=shape.hidden_size, block_configs=block, final_norm_config=norm,
                           lm_head_share_weight_with_embedding=shape.tied_embeddings)


def reauthor(hf_model: Any, kv_cache_max_len: int, api: types.SimpleNamespace | None = None) -> Any:
    """The HF causal LM `hf_model` rebuilt as a Generative API DecoderOnlyModel with its weights (eval mode).

    `kv_cache_max_len` sizes the causal-mask cache the exported signatures index into."""
    import torch  # lazy: heavy

    api = api or generative_api()
    config = model_config_from_hf(hf_model.config, api)
    if kv_cache_max_len > config.max_seq_len:
        raise InputError(f"kv_cache_max_len {kv_cache_max_len} is longer than the model's context "
                         f"({config.max_seq_len} positions)")
    names = (api.model_builder.TENSOR_NAMES if config.lm_head_share_weight_with_embedding
             else api.model_builder.TENSOR_NAMES_WITH_SEPARATE_LM_HEAD)
    state = {k: v.detach().to(torch.float32) for k, v in hf_model.state_dict().items()}
    model = api.model_builder.DecoderOnlyModel(config, mask_cache_size=kv_cache_max_len)
    loader = api.loader.ModelLoader("hf-state-dict", names, custom_loader=lambda _path: dict(state))
    try:
        loader.load(model, strict=not config.lm_head_share_weight_with_embedding)
    except (KeyError, RuntimeError, ValueError) as e:
        raise InputError(f"the checkpoint's weights do not fit the re-authored model: {str(e).splitlines()[0][:200]}") from None
    rotation = rotation_of(hf_model.config)
    if rotation:  # a rotated model (edgeopt.llm.rotate) rotates each down projection's input online
        blocks = list(model.transformer_blocks)
        for blk, wrapped in zip(blocks, wrap_down_projections([b.ff.w2 for b in blocks], int(rotation["down_block"]))):
            blk.ff.w2 = wrapped
    return model.eval()


def kv_layout_of(api: types.SimpleNamespace, kv_layout: str) -> Any:
    """litert-torch's KV cache layout for edgeopt's name of it ("default" or "transposed", see `export.convert`)."""
    return api.kv_cache.KV_LAYOUT_TRANSPOSED if kv_layout == "transposed" else api.kv_cache.KV_LAYOUT_DEFAULT


def reauthored_logits(model: Any, ids: Any, kv_cache_max_len: int, api: types.SimpleNamespace | None = None,
                      kv_layout: str = "default") -> Any:
    """Logits (T, vocab) of the re-authored `model` on token ids (1, T), through its KV-cache forward (prefill) with
    the cache in `kv_layout` ("default" or "transposed", see `export.convert`)."""
    import torch  # lazy: heavy

    api = api or generative_api()
    kv = api.kv_cache.KVCache.from_model_config(kv_cache_max_len, model.config, kv_layout=kv_layout_of(api, kv_layout))
    ids = torch.as_tensor(ids, dtype=torch.int32).reshape(1, -1)
    pos = torch.arange(ids.shape[1], dtype=torch.int32)
    with torch.inference_mode():
        out = model(ids, pos, kv)
    return out["logits"][0].float()


def verify(hf_model: Any, model: Any, ids: Any, kv_cache_max_len: int, api: types.SimpleNamespace | None = None,
           rtol: float = 1e-4, kv_layout: str = "default") -> dict[str, float]:
    """The re-authored model's logits against the HF model's on `ids`: max abs error, the error relative to the
    logits' scale, and top-1 agreement. Raises InputError when the relative error exceeds `rtol` (a wrong config,
    e.g. SmolLM v1's RoPE base on SmolLM2 weights, shows up here)."""
    import torch  # lazy: heavy

    ids_t = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
    with torch.inference_mode():
        ref = hf_model(input_ids=ids_t, use_cache=False).logits[0].float()
    got = reauthored_logits(model, ids_t, kv_cache_max_len, api, kv_layout)
    max_abs = float((ref - got).abs().max())
    rel = max_abs / max(float(ref.abs().max()), 1e-12)
    top1 = float((ref.argmax(-1) == got.argmax(-1)).float().mean())
    res = {"max_abs": max_abs, "rel_error": rel, "top1_agreement": top1, "tokens": int(ids_t.shape[1])}
    if rel > rtol:
        raise InputError(f"the re-authored model does not match the Hugging Face model (relative logit error "
                         f"{rel:.2e} > {rtol:.0e}, top-1 agreement {top1:.3f}): the config was not mapped faithfully")
    return res
