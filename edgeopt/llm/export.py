"""Export a re-authored LLM to one multi-signature .tflite (prefill_<N> per length, decode, a scoring signature,
the KV cache as explicit inputs/outputs) and quantize it with the Generative API's recipes.

Signatures (litert-torch's layout, which the LiteRT-LM engine also reads):
- `prefill_<N>`: tokens (1, N) int32, input_pos (N,) int32, kv_cache_{k,v}_<layer> → the updated cache only
  (litert-torch's prefill computes no logits: the runtime prefills prompt[:-1] and decodes the last token);
- `decode`: tokens (1, 1), input_pos (1,), cache → logits (1, 1, vocab) and the updated cache;
- `score_<L>`: a prefill of L tokens that also returns logits (1, L, vocab), so fidelity (top-1 agreement, KL,
  perplexity) is measured teacher-forced in one call per sequence. It shares every weight with the others.

Quantization is applied to the converted fp32 flatbuffer by ai-edge-quantizer with the Generative API's layer
recipes (exactly what litert-torch does inside `convert(quant_config=...)`), so one conversion serves every
variant: `quantize_file(fp32, out, variant)` takes seconds, a conversion minutes.
"""

from __future__ import annotations

import io
import json
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any, Iterator, Sequence

from edgeopt.artifact import write_bytes_atomic
from edgeopt.errors import InputError, first_line
from edgeopt.llm.reauthor import LlmShape, generative_api, hf_shape, kv_layout_of, reauthor, verify

VARIANTS = ("none", "dynamic_int8", "weight_only_int8", "fp16", "dynamic_int4_block32", "dynamic_int4_block64",
            "dynamic_int4_block128")
EMBEDDING = ("same", "dynamic_int8", "weight_only_int8", "none")  # the embedding (and a tied lm_head) may differ
KV_LAYOUTS = ("default", "transposed")  # how the KV cache is laid out and attended (see `convert`)
LLM_JSON = "llm.json"  # beside the .tflite: signatures, shape, tokenizer facts
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "generation_config.json", "chat_template.jinja", "vocab.json", "merges.txt")


def check_variant(variant: str, embedding: str = "same", shape: LlmShape | None = None) -> None:
    """One-line errors for an unknown quantization variant, or an int4 block size the model's widths don't divide."""
    if variant not in VARIANTS:
        raise InputError(f"unknown LLM quantization variant {variant!r} (one of: {', '.join(VARIANTS)})")
    if embedding not in EMBEDDING:
        raise InputError(f"unknown embedding quantization {embedding!r} (one of: {', '.join(EMBEDDING)})")
    if shape is not None and "block" in variant:
        block = int(variant.rsplit("block", 1)[1])
        widths = {"hidden size": shape.hidden_size, "head width": shape.num_heads * shape.head_dim}
        bad = {k: v for k, v in widths.items() if v % block}
        if bad:
            k, v = next(iter(bad.items()))
            raise InputError(f"{variant}: the {k} {v} is not divisible by the block size {block} "
                             f"(use a block that divides it, e.g. dynamic_int4_block32)")


def _layer_recipe(api: Any, variant: str) -> Any:
    qa, ru = api.quant_attrs, api.quant_recipe_utils
    if variant == "dynamic_int8":
        return ru.create_layer_quant_dynamic(qa.Dtype.INT8, qa.Granularity.CHANNELWISE)
    if variant == "weight_only_int8":
        return ru.create_layer_quant_weight_only(qa.Dtype.INT8, qa.Granularity.CHANNELWISE)
    if variant == "fp16":
        return ru.create_layer_quant_fp16()
    if variant.startswith("dynamic_int4_block"):
        block = variant.rsplit("block", 1)[1]
        return ru.create_layer_quant_dynamic(qa.Dtype.INT4, getattr(qa.Granularity, f"BLOCKWISE_{block}"))
    raise InputError(f"unknown LLM quantization variant {variant!r}")


# Where each part's weights are, by the output tensor names litert-torch 0.10 gives the ops (regexes searched in
# them). litert-torch's own translation (`translate_recipe`) looks for "transformer_block/...feed_forward" and
# "StatefulPartitionedCall", names its converter no longer produces: its attention / feed-forward overrides never
# match, and its tied-embedding rule misses the output layer ("<signature>_logits_output"), so the shared table
# gets one quantization for the lookup and another for the output layer and is stored several times over
# (measured: int4 block 32 with an int8 embedding came out 215 MB, larger than all-int8's 153 MB).
PART_REGEX = {"embedding": "Embedding_tok_embedding", "output": "_logits_output;",  # the quantizer matches "<output names>;"
              "attention": "CausalSelfAttention", "feedforward": "GatedFeedForward"}
ROTATION_REGEX = "BlockHadamard_rotation"  # the online rotation's op (edgeopt.llm.rotate.BlockHadamard, `rotation`)


def ai_edge_recipe(variant: str, embedding: str = "same", attention: str = "same", feedforward: str = "same",
                   tied: bool = True) -> Any:
    """The ai-edge-quantizer recipe: `variant` everywhere, then the embedding table (with the output layer when it
    is tied to it), the attention blocks and the feed-forward blocks as their overrides say. Layer configs come
    from the Generative API's recipe helpers and are set by litert-torch's own `_set_quant_config`."""
    api = generative_api()
    from ai_edge_quantizer import qtyping, recipe_manager  # lazy: optional extra
    from litert_torch.quantize import translate_recipe  # lazy: optional extra

    rm = recipe_manager.RecipeManager()
    translate_recipe._set_quant_config(rm, _layer_recipe(api, variant), ".*")
    for part, setting, op in (("attention", attention, None), ("feedforward", feedforward, None),
                              ("embedding", embedding, None),
                              ("output", embedding if tied else "same", qtyping.TFLOperationName.FULLY_CONNECTED)):
        if setting in ("same", "none"):
            continue
        kw = {"operation_name": op} if op is not None else {}
        translate_recipe._set_quant_config(rm, _layer_recipe(api, setting), PART_REGEX[part], **kw)
    # a rotated model's online Hadamard (edgeopt.llm.rotate) stays float: quantizing its input per token would
    # bring back the outliers it is there to spread
    from ai_edge_quantizer.algorithm_manager import AlgorithmName  # lazy: optional extra

    rm.add_quantization_config(regex=ROTATION_REGEX, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                               algorithm_key=AlgorithmName.NO_QUANTIZE)
    return rm.get_quantization_recipe()


_WINDOW: list[int] = []  # the attention window of the decode signature being traced (see `_windowed_attention`)


@contextmanager
def _windowed_attention() -> Iterator[None]:
    """While converting, litert-torch's transposed-layout attention attends over the first `_WINDOW[-1]` cache
    positions only (K, V and the mask sliced before the matmuls) when a `decode_<W>` signature is traced; the cache
    update before it is unchanged. Written here because the Generative API sizes attention by the whole cache."""
    from litert_torch.generative.layers import scaled_dot_product_attention as sdpa  # lazy: optional extra

    original = sdpa.scaled_dot_product_attention_transposed

    def attend(query: Any, key: Any, value: Any, head_size: int, mask: Any = None, **kw: Any) -> Any:
        if _WINDOW and mask is not None:
            w = _WINDOW[-1]
            key, value, mask = key[:, :, :w, :], value[:, :, :, :w], mask[..., :w]
        return original(query, key, value, head_size, mask=mask, **kw)

    sdpa.scaled_dot_product_attention_transposed = attend
    try:
        yield
    finally:
        sdpa.scaled_dot_product_attention_transposed = original


def _windowed(exportable: Any, window: int) -> Any:
    """`exportable` (a litert-torch ExportableModule) traced with a `window`-position attention window."""

    class Windowed(type(exportable)):  # type: ignore[misc]
        def forward(self, *args: Any, **kwargs: Any) -> Any:
            _WINDOW.append(window)
            try:
                return super().forward(*args, **kwargs)
            finally:
                _WINDOW.pop()

    exportable.__class__ = Windowed
    return exportable


def convert(hf_model: Any, out: Path, *, prefill_lens: Sequence[int] = (32, 128), kv_cache_max_len: int = 1024,
            score_len: int | None = 128, verify_ids: Any = None, kv_layout: str = "default",
            decode_windows: Sequence[int] = ()) -> dict[str, Any]:
    """Re-author `hf_model`, check it against the HF logits on `verify_ids`, and write the fp32 multi-signature
    .tflite to `out` (atomically). Returns the facts llm.json records (signatures, shape, verification).

    `kv_layout`: "default" caches K and V as (1, len, kv heads, dim) and attends through repeated K/V heads
    (grouped-query attention materializes every K/V head once per query head, every token); "transposed" caches
    K as (1, kv heads, len, dim) and V as (1, kv heads, dim, len) and attends with one batched matmul per KV
    group, so nothing is repeated (litert-torch's `KV_LAYOUT_TRANSPOSED`).

    `decode_windows` (transposed layout only): extra `decode_<W>` signatures that attend over the first W cache
    positions only, so a decode step costs what the tokens in the cache need rather than what the whole cache
    holds; they read and write the same cache as `decode`, and a runtime picks the smallest W above the position
    (`LiteRtLlm` does)."""
    import torch  # lazy: heavy

    shape = hf_shape(hf_model.config)
    lens = sorted({int(n) for n in prefill_lens})
    if not lens or lens[0] < 1:
        raise InputError(f"prefill lengths must be positive integers, got {list(prefill_lens)}")
    if lens[-1] >= kv_cache_max_len:
        raise InputError(f"the longest prefill ({lens[-1]}) must be shorter than the KV cache ({kv_cache_max_len})")
    if score_len is not None and score_len > kv_cache_max_len:
        raise InputError(f"score_len {score_len} is longer than the KV cache ({kv_cache_max_len})")
    if kv_layout not in KV_LAYOUTS:
        raise InputError(f"unknown KV cache layout {kv_layout!r} (one of: {', '.join(KV_LAYOUTS)})")
    windows = sorted({int(w) for w in decode_windows})
    if windows and kv_layout != "transposed":
        raise InputError("decode windows need the transposed KV cache layout (kv_layout: transposed)")
    if windows and (windows[0] < 1 or windows[-1] >= kv_cache_max_len):
        raise InputError(f"decode windows must be between 1 and the KV cache length ({kv_cache_max_len}) "
                         f"exclusive, got {windows}")
    api = generative_api()
    from litert_torch._convert import interface as converter_utils  # lazy: optional extra

    import litert_torch  # lazy: optional extra

    litert_torch.config.show_progress = False
    model = reauthor(hf_model, kv_cache_max_len, api)
    ids = verify_ids if verify_ids is not None else (torch.arange(min(32, lens[-1])) * 7919 + 13) % shape.vocab_size
    checked = verify(hf_model, model, ids, kv_cache_max_len, api, kv_layout=kv_layout)
    ExportConfig, Exportable = api.export_config.ExportConfig, api.converter.ExportableModule
    layout = kv_layout_of(api, kv_layout)
    plain = ExportConfig(kvcache_layout=layout)
    scoring = ExportConfig(output_logits_on_prefill=True, kvcache_layout=layout)
    kv = api.kv_cache.KVCache.from_model_config(kv_cache_max_len, model.config, kv_layout=plain.kvcache_layout)
    from edgeopt.measure.litert import quiet_native_stderr

    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    try:  # tracing loads the converter's native libraries, which print absl / oneDNN lines: held back
        with torch.no_grad(), redirect_stderr(io.StringIO()), quiet_native_stderr(), warnings.catch_warnings(), \
                _windowed_attention():
            warnings.simplefilter("ignore")
            conv = converter_utils.Converter()
            mod = Exportable(model, export_config=plain).eval()
            for n in lens:
                conv.add_signature(f"prefill_{n}", mod, sample_kwargs={
                    "tokens": torch.zeros((1, n), dtype=torch.int32), "input_pos": torch.arange(n, dtype=torch.int32),
                    "kv_cache": kv})
            one_token = {"tokens": torch.zeros((1, 1), dtype=torch.int32),
                         "input_pos": torch.zeros((1,), dtype=torch.int32), "kv_cache": kv}
            conv.add_signature("decode", mod, sample_kwargs=one_token)
            for w in windows:
                conv.add_signature(f"decode_{w}", _windowed(Exportable(model, export_config=plain).eval(), w),
                                   sample_kwargs=one_token)
            if score_len:
                conv.add_signature(f"score_{score_len}", Exportable(model, export_config=scoring).eval(),
                                   sample_kwargs={"tokens": torch.zeros((1, score_len), dtype=torch.int32),
                                                  "input_pos": torch.arange(score_len, dtype=torch.int32),
                                                  "kv_cache": kv})
            content = conv.convert().model_content()
    except Exception as e:
        raise InputError(f"litert-torch cannot convert the re-authored LLM: {type(e).__name__}: {first_line(e, 200)}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, bytes(content))
    return {"format": 1, "prefill_lens": lens, "kv_cache_max_len": int(kv_cache_max_len), "kv_layout": kv_layout,
            "decode_windows": windows,
            "score_len": int(score_len) if score_len else None, "shape": shape.to_dict(), "quantize": "none",
            "embedding": "same", "verification": checked,
            "rope_base": float(model.config.block_config(0).attn_config.rotary_base)}


def quantize_file(src: Path, out: Path, variant: str, hf_config: Any, embedding: str = "same",
                  attention: str = "same", feedforward: str = "same") -> None:
    """Quantize the fp32 LLM flatbuffer `src` into `out` with the Generative API recipe of `variant` (and the
    per-part overrides of `generative_recipe`)."""
    shape = hf_shape(hf_config)
    check_variant(variant, embedding, shape)
    for part in (attention, feedforward):
        if part != "same":
            check_variant(part, "same", shape)
    if variant == "none":
        write_bytes_atomic(out, Path(src).read_bytes())
        return
    from litert_torch.quantize import translate_recipe  # lazy: optional extra

    from edgeopt.measure.litert import quiet_native_stderr

    recipe = ai_edge_recipe(variant, embedding, attention, feedforward, tied=shape.tied_embeddings)
    try:  # the quantizer prints its size summary to stdout and progress to stderr
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), quiet_native_stderr(), \
                warnings.catch_warnings(), _fast_array_compare():
            warnings.simplefilter("ignore")
            content = translate_recipe.quantize_model(Path(src).read_bytes(), recipe)
    except Exception as e:
        raise InputError(f"the LiteRT quantizer failed on {variant}: {first_line(e, 200)}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, bytes(content))


@contextmanager
def _fast_array_compare() -> Iterator[None]:
    """ai-edge-quantizer 0.10 compares quantized tensors (`qtyping._compare_array_or_none`, while grouping equal
    transformations) with `a.data == b.data`: a memoryview comparison, which for fp16 data unpacks every element
    in Python (89 of the fp16 variant's 106 s on SmolLM2). `np.array_equal` gives the same answer (values equal,
    NaN unequal) in C; patched for the quantizer's call only."""
    import numpy as np
    from ai_edge_quantizer import qtyping  # lazy: optional extra

    original = qtyping._compare_array_or_none

    def compare(a: Any, b: Any) -> bool:
        if a is None or b is None:
            return a is None and b is None
        return a is b or bool(np.array_equal(a, b))

    qtyping._compare_array_or_none = compare
    try:
        yield
    finally:
        qtyping._compare_array_or_none = original


def write_sidecar(folder: Path, facts: dict[str, Any], tokenizer_dir: Path | None) -> None:
    """llm.json (facts) and the tokenizer's files beside the .tflite, so `edgeopt generate <folder>` needs nothing else."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    if tokenizer_dir is not None:
        for name in TOKENIZER_FILES:
            src = Path(tokenizer_dir) / name
            if src.is_file():
                tmp = folder / f".{name}.tmp"
                shutil.copyfile(src, tmp)
                tmp.replace(folder / name)
    write_bytes_atomic(folder / LLM_JSON, json.dumps(facts, indent=1, sort_keys=True).encode())


def read_sidecar(path: Path) -> dict[str, Any]:
    """The llm.json beside an exported LLM .tflite (or in its folder); one-line error when it is missing or broken."""
    path = Path(path)
    side = (path if path.is_dir() else path.parent) / LLM_JSON
    if not side.is_file():
        raise InputError(f"{path}: no {LLM_JSON} beside the model (export it with convert.litert_llm)")
    try:
        facts = json.loads(side.read_text())
        facts["prefill_lens"] = [int(n) for n in facts["prefill_lens"]]
        facts["kv_cache_max_len"] = int(facts["kv_cache_max_len"])
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{side}: not a valid {LLM_JSON} ({first_line(e, 120)})") from None
    return facts
