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

import numpy as np

from edgeopt.artifact import write_bytes_atomic
from edgeopt.errors import InputError, first_line
from edgeopt.llm.reauthor import LlmShape, generative_api, hf_shape, kv_layout_of, reauthor, reauthored_logits, verify

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


def signature_names(prefill_lens: Sequence[int], decode_windows: Sequence[int], score_len: int | None) -> list[str]:
    """The export's signatures, in file order: prefill_<N>..., decode, decode_<W>..., score_<L>."""
    return ([f"prefill_{int(n)}" for n in sorted(set(prefill_lens))] + ["decode"]
            + [f"decode_{int(w)}" for w in sorted(set(decode_windows))] + ([f"score_{int(score_len)}"] if score_len else []))


def convert_signatures(model: Any, api: Any, kv_cache_max_len: int, kv_layout: str, names: Sequence[str]) -> bytes:
    """The re-authored `model` converted to one flatbuffer with the signatures `names` (see `signature_names`)."""
    import torch  # lazy: heavy
    from litert_torch._convert import interface as converter_utils  # lazy: optional extra

    import litert_torch  # lazy: optional extra

    litert_torch.config.show_progress = False
    ExportConfig, Exportable = api.export_config.ExportConfig, api.converter.ExportableModule
    layout = kv_layout_of(api, kv_layout)
    plain = ExportConfig(kvcache_layout=layout)
    scoring = ExportConfig(output_logits_on_prefill=True, kvcache_layout=layout)
    kv = api.kv_cache.KVCache.from_model_config(kv_cache_max_len, model.config, kv_layout=plain.kvcache_layout)
    from edgeopt.measure.litert import quiet_native_stderr

    def tokens(n: int) -> dict[str, Any]:
        return {"tokens": torch.zeros((1, n), dtype=torch.int32), "input_pos": torch.arange(n, dtype=torch.int32),
                "kv_cache": kv}

    torch._dynamo.config.cache_size_limit = max(64, torch._dynamo.config.cache_size_limit)
    try:  # tracing loads the converter's native libraries, which print absl / oneDNN lines: held back
        with torch.no_grad(), redirect_stderr(io.StringIO()), quiet_native_stderr(), warnings.catch_warnings(), \
                _windowed_attention():
            warnings.simplefilter("ignore")
            conv = converter_utils.Converter()
            mod = Exportable(model, export_config=plain).eval()
            for name in names:
                kind, _, n = name.partition("_")
                if kind == "prefill":
                    conv.add_signature(name, mod, sample_kwargs=tokens(int(n)))
                elif kind == "decode" and not n:
                    conv.add_signature(name, mod, sample_kwargs=tokens(1))
                elif kind == "decode":
                    conv.add_signature(name, _windowed(Exportable(model, export_config=plain).eval(), int(n)),
                                       sample_kwargs=tokens(1))
                elif kind == "score":
                    conv.add_signature(name, Exportable(model, export_config=scoring).eval(), sample_kwargs=tokens(int(n)))
                else:
                    raise InputError(f"unknown signature {name!r}")
            return bytes(conv.convert().model_content())
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"litert-torch cannot convert the re-authored LLM: {type(e).__name__}: {first_line(e, 200)}") from None


MERGE_LIMIT = 1_500_000_000  # fp32 weight bytes above which the parts are not merged (a flatbuffer holds < 2 GB)


def default_workers(n_signatures: int, num_layers: int, weight_bytes: int = 0) -> int:
    """Conversion processes for `n_signatures` of a `num_layers`-block model with `weight_bytes` of fp32 weights:
    one per CPU this process may use, at most one per 2 signatures, while memory for another conversion is
    available (8 x the weights, at least 5 GiB: a SmolLM2 conversion peaks at ~4 GiB), and 1 for small jobs
    (under 48 block-signatures: a child's start, ~5 s, would cost more than it saves) and for models whose
    merged file would pass `MERGE_LIMIT` (the merge writes one in-memory flatbuffer)."""
    import os

    import psutil  # lazy

    if n_signatures * num_layers < 48 or weight_bytes > MERGE_LIMIT:
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    spare = int(psutil.virtual_memory().available // max(5 << 30, 8 * weight_bytes))
    return max(1, min(cpus, n_signatures // 2, 1 + spare))


def _split(names: list[str], workers: int | None, num_layers: int, weight_bytes: int) -> list[list[str]]:
    """`names` dealt round-robin into `workers` groups (the first stays in this process)."""
    n = (default_workers(len(names), num_layers, weight_bytes) if workers is None
         else max(1, min(int(workers), len(names))))
    return [names[i::n] for i in range(n)] if n > 1 else [names]


class _ParallelFailed(InputError):
    """The parallel path failed (a child, the merge or the merged file's check): convert in one process instead."""


def _convert_in_parallel(hf_model: Any, model: Any, api: Any, kv_cache_max_len: int, kv_layout: str,
                         split: list[list[str]]) -> bytes:
    """`split[0]` converted here while a child process per other group (`python -m edgeopt.llm.export --worker`)
    converts its own from the same weights (a safetensors file and the HF config, never a pickle); the parts merged
    and checked. Raises _ParallelFailed when a child, the merge or the check fails; a failure of this process's own
    conversion propagates as it is (converting again in one process would only repeat it)."""
    import subprocess
    import sys
    import tempfile

    from safetensors.torch import save_file

    from edgeopt.llm.merge import merge

    with tempfile.TemporaryDirectory(prefix="edgeopt-convert-") as tmp:
        state, aliases = {}, {}
        seen: dict[int, str] = {}
        for k, v in hf_model.state_dict().items():  # tied tensors are saved once (safetensors refuses shared ones)
            ptr = v.data_ptr()
            if ptr in seen:
                aliases[k] = seen[ptr]
            else:
                seen[ptr] = k
                state[k] = v.detach().float().contiguous()
        try:
            save_file(state, f"{tmp}/weights.safetensors")
        except OSError as e:  # e.g. a full temporary folder
            raise _ParallelFailed(f"cannot hand the weights to a conversion process: {first_line(e, 200)}") from None
        procs = []
        for i, group in enumerate(split[1:], 1):
            spec = {"weights": f"{tmp}/weights.safetensors", "aliases": aliases, "config": hf_model.config.to_dict(),
                    "kv_cache_max_len": kv_cache_max_len, "kv_layout": kv_layout, "signatures": group,
                    "out": f"{tmp}/part{i}.tflite"}
            (Path(tmp) / f"part{i}.json").write_text(json.dumps(spec))
            err = open(Path(tmp) / f"part{i}.err", "wb")
            procs.append((subprocess.Popen([sys.executable, "-m", "edgeopt.llm.export", "--worker",
                                            f"{tmp}/part{i}.json"], stdout=subprocess.DEVNULL, stderr=err), err, spec))
        try:
            parts = [convert_signatures(model, api, kv_cache_max_len, kv_layout, split[0])]
            for proc, err, spec in procs:
                if proc.wait() != 0:
                    err.close()
                    lines = [ln for ln in Path(err.name).read_text(errors="replace").splitlines() if ln.strip()]
                    raise _ParallelFailed(f"the conversion process for {', '.join(spec['signatures'])} failed: "
                                          f"{lines[-1][:200] if lines else proc.returncode}")
                parts.append(Path(spec["out"]).read_bytes())
        finally:
            for proc, err, _ in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                err.close()
    try:
        content = merge(parts)
        _check_merged(content, model, kv_cache_max_len, kv_layout, api)
    except Exception as e:  # noqa: BLE001  any failure of the merge or its check: convert in one process instead
        raise _ParallelFailed(f"merging the parts failed: {first_line(e, 200)}") from None
    return content


def _check_merged(content: bytes, model: Any, kv_cache_max_len: int, kv_layout: str, api: Any,
                  rtol: float = 1e-4) -> None:
    """Every decode signature of the merged file against the re-authored model (`decode_check`)."""
    res = decode_check(content, model, kv_cache_max_len, kv_layout, api)
    if res["rel_error"] > rtol:
        raise InputError(f"the merged export's decode signatures miss the re-authored model's logits "
                         f"(relative error {res['rel_error']:.1e})")


def decode_check(content: bytes, model: Any, kv_cache_max_len: int, kv_layout: str, api: Any,
                 tokens: Sequence[int] = (13,), signatures: Sequence[str] | None = None) -> dict[str, Any]:
    """The logits of the decode signatures of the flatbuffer `content` (every `decode*` one, or `signatures`) for
    single `tokens` at position 0 (an empty cache: every weight of every block takes part, and no prefill is
    needed) against the re-authored `model`'s. On LiteRT's built-in kernels, not XNNPACK: the signature runner
    allocates tensors on every call, and XNNPACK would pack every weight again each time (2.5 s a call on SmolLM2
    against 0.2 s); the check is of the weights. Returns {"max_abs", "rel_error", "tokens", "signatures"};
    InputError when LiteRT cannot load `content`."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType  # lazy: optional extra

    from edgeopt.measure.litert import quiet_native_stderr

    vocab = int(model.config.vocab_size)
    toks = [int(t) % vocab for t in tokens]
    refs = {t: reauthored_logits(model, [t], kv_cache_max_len, api, kv_layout)[0].numpy() for t in toks}
    scale = max(float(np.abs(r).max()) for r in refs.values())
    errs: list[float] = []
    with quiet_native_stderr():
        try:
            interp = Interpreter(model_content=content, num_threads=2,
                                 experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
            names = (list(signatures) if signatures is not None
                     else [n for n in interp.get_signature_list() if n.startswith("decode")])
            runners = {n: interp.get_signature_runner(n) for n in names}
        except Exception as e:
            raise InputError(f"LiteRT cannot load the export ({first_line(e, 200)})") from None
        for runner in runners.values():
            details = runner.get_input_details()
            for t in toks:
                feed = {n: np.zeros(d["shape"], dtype=d["dtype"]) for n, d in details.items()}
                feed["tokens"] = np.array([[t]], dtype=np.int32)
                got = np.asarray(runner(**feed)["logits"], dtype=np.float32).reshape(-1)
                errs.append(float(np.abs(got - refs[t]).max()))
    max_abs = max(errs, default=0.0)
    return {"max_abs": max_abs, "rel_error": max_abs / max(scale, 1e-12), "tokens": len(toks), "signatures": names}


def _worker(spec_path: str) -> int:
    """A conversion child (see `_convert_in_parallel`): re-author the model from the spec's weights and config,
    convert the spec's signatures, write the flatbuffer atomically."""
    from types import SimpleNamespace

    import torch  # lazy: heavy
    from safetensors.torch import load_file
    from transformers import AutoConfig

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)
    state = load_file(spec["weights"])
    for k, src in spec["aliases"].items():
        state[k] = state[src]
    cfg = dict(spec["config"])
    config = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    hf = SimpleNamespace(config=config, state_dict=lambda: state)
    api = generative_api()
    model = reauthor(hf, int(spec["kv_cache_max_len"]), api)
    content = convert_signatures(model, api, int(spec["kv_cache_max_len"]), spec["kv_layout"], spec["signatures"])
    write_bytes_atomic(Path(spec["out"]), content)
    return 0


def convert(hf_model: Any, out: Path, *, prefill_lens: Sequence[int] = (32, 128), kv_cache_max_len: int = 1024,
            score_len: int | None = 128, verify_ids: Any = None, kv_layout: str = "default",
            decode_windows: Sequence[int] = (), workers: int | None = None) -> dict[str, Any]:
    """Re-author `hf_model`, check it against the HF logits on `verify_ids`, and write the fp32 multi-signature
    .tflite to `out` (atomically). Returns the facts llm.json records (signatures, shape, verification).

    `kv_layout`: "default" caches K and V as (1, len, kv heads, dim) and attends through repeated K/V heads
    (grouped-query attention materializes every K/V head once per query head, every token); "transposed" caches
    K as (1, kv heads, len, dim) and V as (1, kv heads, dim, len) and attends with one batched matmul per KV
    group, so nothing is repeated (litert-torch's `KV_LAYOUT_TRANSPOSED`).

    `decode_windows` (transposed layout only): extra `decode_<W>` signatures that attend over the first W cache
    positions only, so a decode step costs what the tokens in the cache need rather than what the whole cache
    holds; they read and write the same cache as `decode`, and a runtime picks the smallest W above the position
    (`LiteRtLlm` does).

    `workers`: processes converting signatures side by side (None: up to the CPUs and memory this machine has,
    see `default_workers`). litert-torch exports one signature at a time in single-threaded Python (~30 s each
    for SmolLM2), so a second process converting half of them in parallel, with the parts merged after
    (`edgeopt.llm.merge`: each weight stored once) and the merged file's logits checked, takes about 40 % off a
    six-signature conversion on 2 cores. Any failure there falls back to converting all in this process."""
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
    model = reauthor(hf_model, kv_cache_max_len, api)
    ids = verify_ids if verify_ids is not None else (torch.arange(min(32, lens[-1])) * 7919 + 13) % shape.vocab_size
    checked = verify(hf_model, model, ids, kv_cache_max_len, api, kv_layout=kv_layout)
    names = signature_names(lens, windows, score_len)
    weight_bytes = 4 * sum(p.numel() for p in hf_model.parameters())
    split = _split(names, workers, shape.num_layers, weight_bytes)
    content, how = None, {"processes": 1}
    if len(split) > 1:
        try:
            content = _convert_in_parallel(hf_model, model, api, kv_cache_max_len, kv_layout, split)
            how = {"processes": len(split), "signatures": split}
        except _ParallelFailed as e:
            how["parallel_failed"] = first_line(e, 200)
    if content is None:
        content = convert_signatures(model, api, kv_cache_max_len, kv_layout, names)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, content)
    return {"format": 1, "prefill_lens": lens, "kv_cache_max_len": int(kv_cache_max_len), "kv_layout": kv_layout,
            "decode_windows": windows,
            "score_len": int(score_len) if score_len else None, "shape": shape.to_dict(), "quantize": "none",
            "embedding": "same", "verification": checked, "conversion": how,
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


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        try:
            sys.exit(_worker(sys.argv[2]))
        except InputError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    print("usage: python -m edgeopt.llm.export --worker SPEC.json (a conversion child of export.convert)", file=sys.stderr)
    sys.exit(2)
