"""kernels.attention: choose per layer how a PyTorch model computes attention (naive, partial softmax, flash, SDPA)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from edgeopt.artifact import Artifact, register_builder
from edgeopt.kernels import native
from edgeopt.kernels.checks import ErrorBudget, PositiveInt
from edgeopt.passes.base import Pass, PassContext, register, torch_module_copy
from edgeopt.passes.kernels._common import LayerSwapConfig, code_names, example_inputs, optional_example_inputs

Impl = Literal["naive", "partial_softmax", "flash", "sdpa", "partial_softmax_native", "flash_native"]


@register("kernels.attention")
class AttentionPass(Pass):
    """Swap the attention computation of each supported layer for the chosen implementation.

    Supported layers, found in a deep copy of the model:
    - `edgeopt.kernels.attention.MultiHeadSelfAttention` (the generic q/k/v-projection module): its `impl`
      and `blocks` are set.
    - Hugging Face attention modules that dispatch through transformers' attention-function registry
      (AttentionInterface; BertSelfAttention and the like; the model's attention implementation must be
      eager or sdpa): the kernels are registered under the name "edgeopt" (with eager-style additive masks),
      the model switched to it with `set_attn_implementation`, and each layer gets its own choice in the
      attribute `edgeopt_attention`. Layers are found by their forward's code (through decorators) and, when
      example inputs exist, settled by the example run: exactly the modules the registry's function was
      called with.
    - diffusers `Attention` modules with a stock processor (AttnProcessor2_0 or AttnProcessor): the
      processor is replaced by an `EdgeoptAttnProcessor` with the chosen implementation.
    Other attention modules (torch.nn.MultiheadAttention, grouped key/value heads, custom diffusers
    processors, ...) are left alone with the reason in ctx.notes["attention"]["skipped"].

    Implementations (edgeopt.kernels.attention): naive, partial_softmax, flash, sdpa, and the C++ kernels
    partial_softmax_native and flash_native (refused at configuration, with the reason, where they cannot be
    built; not among the default `candidates`, so "auto" only tries them when asked).

    `impl` "auto" measures, per layer, on the inputs the example run gives it: the layer's latency with each
    candidate (median of interleaved runs), its relative error against the untouched layer, and the
    analytic peak bytes of the attention intermediates; it keeps the fastest candidate within
    `max_rel_error`. Choices and measurements go to ctx.notes["attention"]["layers"]. With `measure` on
    (and example inputs present) every swapped layer is also measured before vs after (latency,
    throughput, peak intermediate bytes, error) into ctx.notes["attention"]["per_layer"].
    """

    class Config(LayerSwapConfig):
        impl: Literal["naive", "partial_softmax", "flash", "sdpa", "partial_softmax_native", "flash_native",
                      "auto"] = "auto"
        q_block: PositiveInt = 256  # the kernels' DEFAULT_BLOCKS
        k_block: PositiveInt = 512
        candidates: tuple[Impl, ...] = Field(default=("naive", "partial_softmax", "flash", "sdpa"), min_length=1)
        max_rel_error: ErrorBudget = 1e-4

        @field_validator("impl", "candidates")
        @classmethod
        def _native_available(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
            names = (value,) if isinstance(value, str) else value
            reason = native.unavailable_reason() if any(n in native.ATTENTION_IMPLS for n in names) else None
            if reason is not None:
                raise ValueError(f"the native kernels cannot be used here: {reason}")
            return value

    accepts = ("torch",)
    produces = "torch"

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        # torch-backed: imported when the pass runs (pass modules load with the registry)
        from edgeopt.kernels.attention import record_hf_dispatch, restore_hf_attention, use_hf_attention  # lazy: imports torch

        cfg = self.config
        blocks = {"q_block": cfg.q_block, "k_block": cfg.k_block}
        module = torch_module_copy(art, self.name, share_weights=True)
        layers, skipped = find_attention_layers(module)
        for name in [n for n in layers if n in cfg.exclude]:
            skipped[name] = "excluded by config"
            del layers[name]
        hf_switched = None  # [(config, previous implementation)] once switched to the "edgeopt" attention
        if any(k == "hf" for k in layers.values()) or _has_hf_model(module):
            # layers without a choice fall back to the model's eager attention
            hf_switched = use_hf_attention(module, [module.get_submodule(n).config for n, k in layers.items()
                                                    if k == "hf"])
        untouched = {n: _original(module.get_submodule(n), k) for n, k in layers.items()}
        example = None
        if layers and cfg.impl == "auto":
            example = example_inputs(art, ctx, self.name)
        elif (layers and cfg.measure) or hf_switched is not None:  # Hugging Face layers: settled by the example run
            example = optional_example_inputs(art, ctx)
        captured: dict[str, tuple[tuple, dict]] = {}
        if example is not None:
            # torch-backed: imported when the pass runs (pass modules load with the registry)
            from edgeopt.kernels.layer_stats import capture_inputs  # lazy: imports torch

            with record_hf_dispatch() as dispatched:
                captured = capture_inputs(module, list(layers), example)
            if hf_switched is not None:  # the layers that called the registry are the Hugging Face layers
                found = _reconcile_hf(module, layers, skipped, captured, dispatched, cfg.exclude)
                if found:
                    captured.update(capture_inputs(module, found, example))
                    untouched.update({n: None for n in found})
        if cfg.impl == "auto" and layers:
            records = _choose(module, layers, captured, untouched, cfg, blocks)
        else:
            records = {n: {"kind": k, "impl": cfg.impl, "reason": "fixed by config"} for n, k in layers.items()}
        for name, rec in records.items():
            if rec["impl"] is None:
                skipped[name] = rec["reason"]
            else:
                _set_impl(module.get_submodule(name), rec["kind"], rec["impl"], blocks, final=True)
                rec["blocks"] = dict(blocks)
        if hf_switched is not None and not any(r["impl"] is not None and r["kind"] == "hf" for r in records.values()):
            restore_hf_attention(hf_switched)
        chosen = {n: r for n, r in records.items() if r["impl"] is not None}
        per_layer: dict[str, Any] = {}
        if cfg.measure:
            per_layer = _per_layer(module, chosen, captured, untouched, cfg, blocks)
        ctx.notes["attention"] = {"layers": chosen, "skipped": skipped, "per_layer": per_layer}
        if cfg.measure and chosen and example is None:
            ctx.warnings.append("kernels.attention: per-layer measurement skipped: no example inputs")
        if skipped:
            ctx.warnings.append("kernels.attention: left unchanged: "
                                + "; ".join(f"{n} ({r})" for n, r in skipped.items()))
        meta = {**art.meta, "attention": {n: r["impl"] for n, r in chosen.items()}}
        rebuild = {"layers": {n: {"kind": r["kind"], "impl": r["impl"], "blocks": r["blocks"]} for n, r in chosen.items()}}
        return Artifact.from_module(module, art.input_spec, meta=meta, rebuild=("kernels.attention", rebuild))


@register_builder("kernels.attention")
def rebuild_attention(parent: Artifact, args: dict[str, Any], ctx: Any) -> Any:
    """The input model with each layer of `args["layers"]` set to its recorded implementation and blocks, as
    `AttentionPass.run` leaves them (Hugging Face layers: the model switched to the "edgeopt" attention)."""
    from edgeopt.kernels.attention import use_hf_attention  # lazy: imports torch

    module = torch_module_copy(parent, "kernels.attention", share_weights=True)
    layers = args["layers"]
    hf = [module.get_submodule(n).config for n, r in layers.items() if r["kind"] == "hf"]
    if hf:
        use_hf_attention(module, hf)
    for name, r in layers.items():
        _set_impl(module.get_submodule(name), r["kind"], r["impl"], dict(r["blocks"]), final=True)
    return module


def _has_hf_model(module: Any) -> bool:
    """Whether `module` holds a transformers PreTrainedModel (transformers is then already imported)."""
    import sys

    pretrained = getattr(sys.modules.get("transformers"), "PreTrainedModel", None)
    return pretrained is not None and any(isinstance(m, pretrained) for m in module.modules())


def _hf_unsupported(m: Any) -> str | None:
    """Why a layer that dispatches through transformers' registry cannot be swapped, or None."""
    if getattr(m, "num_key_value_groups", 1) != 1:
        return "grouped key/value heads are not supported by the kernels"
    return None


def _reconcile_hf(module: Any, layers: dict[str, str], skipped: dict[str, str], captured: dict[str, Any],
                  dispatched: dict[int, Any], exclude: tuple[str, ...]) -> list[str]:
    """Make the "hf" layers exactly those that called the attention-function registry in the example run.

    A layer found by its code but reached without calling the registry is skipped with the reason; a module
    that called it but was not found by its code (a forward behind a decorator or a helper function) is added.
    Returns the names added (their inputs are not captured yet). `layers` keeps the model's module order.
    """
    order = {id(m): n for n, m in module.named_modules()}
    for name in [n for n, k in layers.items() if k == "hf"]:
        if name in captured and id(module.get_submodule(name)) not in dispatched:
            skipped[name] = "reached by the example input without calling transformers' attention-function registry"
            del layers[name]
            del captured[name]
    found = []
    for mid, m in dispatched.items():
        name = order.get(mid)
        if name is None or name in layers or name in skipped:
            continue
        reason = "excluded by config" if name in exclude else _hf_unsupported(m)
        if reason is not None:
            skipped[name] = reason
        else:
            layers[name] = "hf"
            found.append(name)
    ranked = {n: i for i, n in enumerate(order.values())}
    ordered = dict(sorted(layers.items(), key=lambda kv: ranked.get(kv[0], -1)))
    layers.clear()
    layers.update(ordered)
    return found


def _is_hf_attention(m: Any) -> bool:
    """A module with a transformers config whose forward looks its attention function up in ALL_ATTENTION_FUNCTIONS.

    Found by its code, so that layers are known without running the model; when example inputs exist the pass
    then keeps exactly the layers that did call the registry (`_reconcile_hf`).
    """
    return (hasattr(getattr(m, "config", None), "_attn_implementation")
            and "ALL_ATTENTION_FUNCTIONS" in code_names(type(m).forward))


def _is_diffusers_attention(m: Any) -> bool:
    """diffusers' `Attention` module (the one with swappable processors) or a subclass of it."""
    import sys

    cls = getattr(sys.modules.get("diffusers.models.attention_processor"), "Attention", None)
    return cls is not None and isinstance(m, cls) and hasattr(m, "processor") and hasattr(m, "set_processor")


def find_attention_layers(module: Any) -> tuple[dict[str, str], dict[str, str]]:
    """({name: "module" | "hf" | "diffusers"} of the layers this pass can swap, {name: reason} of those it cannot)."""
    from torch import nn

    from edgeopt.kernels.attention import (DIFFUSERS_PROCESSORS, HF_SWAPPABLE, EdgeoptAttnProcessor,  # lazy: imports torch
                                           MultiHeadSelfAttention)

    layers: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name, m in module.named_modules():
        if isinstance(m, MultiHeadSelfAttention):
            layers[name] = "module"
        elif isinstance(m, nn.MultiheadAttention):
            skipped[name] = "torch.nn.MultiheadAttention (packed in_proj and its own fused path) is not supported"
        elif _is_diffusers_attention(m):
            proc = type(m.processor).__name__
            if proc in DIFFUSERS_PROCESSORS or isinstance(m.processor, EdgeoptAttnProcessor):
                layers[name] = "diffusers"
            else:
                skipped[name] = f"diffusers processor {proc} is not supported (only {', '.join(DIFFUSERS_PROCESSORS)})"
        elif _is_hf_attention(m):
            current = getattr(m.config, "_attn_implementation", None)
            if current not in HF_SWAPPABLE:
                skipped[name] = f"model attention implementation {current!r} (only eager or sdpa are swapped)"
            elif _hf_unsupported(m) is not None:
                skipped[name] = _hf_unsupported(m)
            else:
                layers[name] = "hf"
    return layers, skipped


def _original(layer: Any, kind: str) -> Any:
    """What the layer computes with before the pass: (impl, blocks) of a module, its diffusers processor, or None."""
    if kind == "module":
        return layer.impl, dict(layer.blocks)
    if kind == "diffusers":
        return layer.processor
    return None


def _label(kind: str, original: Any) -> str:
    """A short name for the untouched computation of a layer."""
    if kind == "module":
        return original[0]
    if kind == "diffusers":
        return type(original).__name__
    return "eager (the model's own)"


def _set_impl(layer: Any, kind: str, impl: str | None, blocks: dict[str, int], original: Any = None,
              final: bool = False) -> None:
    """Point one layer at `impl`; None: back to the untouched computation (`original`, from `_original`)."""
    from edgeopt.kernels.attention import HF_SPEC_ATTR, diffusers_processor_for  # lazy: imports torch

    if kind == "module":
        if impl is None:
            layer.set_impl(original[0] if original else "naive", **(original[1] if original else {}))
        else:
            layer.set_impl(impl, **blocks)
    elif kind == "diffusers":
        proc = original if impl is None else diffusers_processor_for(layer, impl, **blocks)
        if final:
            layer.set_processor(proc)
        else:  # while measuring: a plain attribute swap (set_processor logs and checks on every call)
            layer.processor = proc
    elif impl is None:
        layer.__dict__.pop(HF_SPEC_ATTR, None)
    else:
        setattr(layer, HF_SPEC_ATTR, {"impl": impl, "blocks": dict(blocks)})


def _first_tensor(out: Any) -> Any:
    from edgeopt.kernels.layer_stats import first_tensor  # lazy: imports torch

    return first_tensor(out)


def _dims(layer: Any, kind: str, args: tuple, kwargs: dict) -> dict[str, int] | None:
    """(B, nh, Tq, Tk, hs) of a layer's attention from its input and attributes (None if not known)."""
    x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
    if x is None or x.dim() not in (3, 4):
        return None
    if x.dim() == 4:  # diffusers on an image: (B, C, H, W) -> H*W tokens
        B, Tq = int(x.shape[0]), int(x.shape[2] * x.shape[3])
    else:
        B, Tq = int(x.shape[0]), int(x.shape[1])
    if kind == "module":
        nh, hs = layer.num_heads, layer.head_dim
    elif kind == "diffusers":
        nh = int(layer.heads)
        hs = int(layer.to_q.out_features) // nh
    else:
        cfg = layer.config
        nh = int(getattr(layer, "num_attention_heads", 0) or getattr(cfg, "num_attention_heads", 0))
        hs = int(getattr(layer, "attention_head_size", 0) or getattr(layer, "head_dim", 0)
                 or getattr(cfg, "hidden_size", 0) // max(nh, 1))
    enc = kwargs.get("encoder_hidden_states")
    if enc is None and kind == "diffusers" and len(args) > 1:
        enc = args[1]
    Tk = int(enc.shape[1]) if enc is not None else Tq
    return {"B": B, "nh": nh, "Tq": Tq, "Tk": Tk, "hs": hs}


def _choose(module: Any, layers: dict[str, str], captured: dict[str, tuple[tuple, dict]], untouched: dict[str, Any],
            cfg: Any, blocks: dict[str, int]) -> dict[str, dict]:
    """Per layer: time and check every candidate implementation on the inputs captured in the example run."""
    import torch

    from edgeopt.kernels.attention import peak_intermediate_bytes  # lazy: imports torch
    from edgeopt.kernels.layer_stats import relative_error, time_interleaved  # lazy: imports torch

    records: dict[str, dict[str, Any]] = {}
    errors: dict[str, dict[str, float]] = {}
    dtypes: dict[str, Any] = {}
    fns: dict[str, Any] = {}
    for name, kind in layers.items():
        if name not in captured:
            records[name] = {"kind": kind, "impl": None, "reason": "not reached by the example input"}
            continue
        layer = module.get_submodule(name)
        args, kwargs = captured[name]
        original = untouched[name]
        with torch.inference_mode():
            _set_impl(layer, kind, None, blocks, original)
            ref = _first_tensor(layer(*args, **kwargs))  # the untouched computation
            errors[name] = {}
            for impl in cfg.candidates:
                _set_impl(layer, kind, impl, blocks)
                errors[name][impl] = relative_error(_first_tensor(layer(*args, **kwargs)), ref)
        dtypes[name] = ref.dtype

        def timed(impl: str, layer=layer, kind=kind, args=args, kwargs=kwargs):
            return lambda: (_set_impl(layer, kind, impl, blocks), layer(*args, **kwargs))

        for impl in cfg.candidates:
            fns[f"{name}\t{impl}"] = timed(impl)
    # every layer's candidates in one interleaved session
    lat_all = time_interleaved(fns, runs=cfg.runs, threads=cfg.threads) if fns else {}
    for name in errors:
        kind, layer = layers[name], module.get_submodule(name)
        _set_impl(layer, kind, None, blocks, untouched[name])
        lat = {impl: lat_all[f"{name}\t{impl}"] for impl in cfg.candidates}
        err = errors[name]
        dims = _dims(layer, kind, *captured[name])
        measured = {impl: {"latency_ms": lat[impl], "rel_error": err[impl],
                           "peak_intermediate_bytes": None if dims is None else
                           peak_intermediate_bytes(impl, **dims, dtype=dtypes[name], blocks=blocks)}
                    for impl in cfg.candidates}
        ok = [i for i in cfg.candidates if err[i] <= cfg.max_rel_error]
        refused = {i: f"relative error {err[i]:.2e} > {cfg.max_rel_error:.0e}" for i in cfg.candidates if i not in ok}
        if not ok:
            records[name] = {"kind": kind, "impl": None, "measured": measured, "refused": refused,
                             "reason": "no candidate within max_rel_error"}
            continue
        best = min(ok, key=lambda i: lat[i])
        records[name] = {"kind": kind, "impl": best, "dims": dims, "measured": measured, "refused": refused,
                         "reason": f"fastest within max_rel_error ({lat[best]:.3f} ms)"}
    return {n: records[n] for n in layers}


def _per_layer(module: Any, chosen: dict[str, dict], captured: dict[str, tuple[tuple, dict]],
               untouched: dict[str, Any], cfg: Any, blocks: dict[str, int]) -> dict[str, Any]:
    """Before (untouched) vs after (chosen impl) of every swapped layer reached by the example input."""
    from edgeopt.kernels.layer_stats import compare_layers  # lazy: imports torch

    items: dict[str, dict[str, Any]] = {}
    for name, rec in chosen.items():
        if name not in captured:
            continue
        layer, kind = module.get_submodule(name), rec["kind"]
        args, kwargs = captured[name]
        original = untouched[name]

        def call(impl: str | None, layer=layer, kind=kind, original=original):
            def fn(*a, **k):
                _set_impl(layer, kind, impl, blocks, original)
                return layer(*a, **k)
            return fn

        items[name] = {"before": call(None), "after": call(rec["impl"]), "args": args, "kwargs": kwargs,
                       "label_before": _label(kind, original), "label_after": rec["impl"]}
    try:
        out = compare_layers(items, runs=cfg.runs, threads=cfg.threads)
    finally:
        for name, rec in chosen.items():
            _set_impl(module.get_submodule(name), rec["kind"], rec["impl"], blocks, final=True)
    for name, rec in out.items():
        rec["dims"] = _dims(module.get_submodule(name), chosen[name]["kind"], *captured[name])
    return out
