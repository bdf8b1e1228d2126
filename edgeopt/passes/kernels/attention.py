"""kernels.attention: choose per layer how a PyTorch model computes attention (naive, partial softmax, flash, SDPA)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.kernels.winograd import example_inputs, torch_module_copy

Impl = Literal["naive", "partial_softmax", "flash", "sdpa"]


@register("kernels.attention")
class AttentionPass(Pass):
    """Swap the attention computation of each supported layer for the chosen implementation.

    Supported layers, found in a deep copy of the model:
    - `edgeopt.kernels.attention.MultiHeadSelfAttention` (the generic q/k/v-projection module): its `impl`
      and `blocks` are set.
    - Hugging Face attention modules whose forward dispatches through transformers' AttentionInterface
      (BertSelfAttention and the like; the model's attention implementation must be eager or sdpa): the
      kernels are registered under the name "edgeopt" (with eager-style additive masks), the model config
      switched to it, and each layer gets its own choice in the attribute `edgeopt_attention`.
    Other attention modules (torch.nn.MultiheadAttention, grouped key/value heads, ...) are left alone with
    the reason in ctx.notes["attention"]["skipped"].

    `impl` "auto" measures, per layer, on the inputs the example run gives it: the layer's latency with each
    candidate (median of interleaved runs), its relative error against the untouched layer, and the
    analytic peak bytes of the attention intermediates; it keeps the fastest candidate within
    `max_rel_error`. Choices and measurements go to ctx.notes["attention"]["layers"].
    """

    class Config(PassConfig):
        impl: Literal["naive", "partial_softmax", "flash", "sdpa", "auto"] = "auto"
        q_block: int = Field(default=128, ge=1)
        k_block: int = Field(default=128, ge=1)
        candidates: tuple[Impl, ...] = Field(default=("naive", "partial_softmax", "flash", "sdpa"), min_length=1)
        max_rel_error: float = Field(default=1e-4, gt=0)
        runs: int = Field(default=5, ge=1)
        threads: int | None = Field(default=None, ge=1)
        exclude: tuple[str, ...] = ()

    accepts = ("torch",)
    produces = "torch"

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        from edgeopt.kernels.attention import HF_NAME, register_hf_attention

        cfg = self.config
        blocks = {"q_block": cfg.q_block, "k_block": cfg.k_block}
        module = torch_module_copy(art, self.name)
        layers, skipped = find_attention_layers(module)
        for name in [n for n in layers if n in cfg.exclude]:
            skipped[name] = "excluded by config"
            del layers[name]
        hf_configs = {id(c): c for c in (module.get_submodule(n).config for n, k in layers.items() if k == "hf")}
        originals = {i: c._attn_implementation for i, c in hf_configs.items()}
        if hf_configs:  # layers without a choice fall back to the model's eager attention
            register_hf_attention()
            for c in hf_configs.values():
                c._attn_implementation = HF_NAME
        if cfg.impl == "auto" and layers:
            records = _measure(module, layers, example_inputs(art, ctx, self.name), cfg, blocks)
        else:
            records = {n: {"kind": k, "impl": cfg.impl, "reason": "fixed by config"} for n, k in layers.items()}
        for name, rec in records.items():
            if rec["impl"] is None:
                skipped[name] = rec["reason"]
            else:
                _set_impl(module.get_submodule(name), rec["kind"], rec["impl"], blocks)
                rec["blocks"] = dict(blocks)
        if not any(r["impl"] is not None and r["kind"] == "hf" for r in records.values()):
            for i, c in hf_configs.items():
                c._attn_implementation = originals[i]
        chosen = {n: r for n, r in records.items() if r["impl"] is not None}
        ctx.notes["attention"] = {"layers": chosen, "skipped": skipped}
        if skipped:
            ctx.warnings.append("kernels.attention: left unchanged: "
                                + "; ".join(f"{n} ({r})" for n, r in skipped.items()))
        meta = {**art.meta, "attention": {n: r["impl"] for n, r in chosen.items()}}
        return Artifact.from_module(module, art.input_spec, meta=meta)


def _is_hf_attention(m: Any) -> bool:
    """A transformers module whose forward looks its attention function up in ALL_ATTENTION_FUNCTIONS."""
    code = getattr(type(m).forward, "__code__", None)
    return code is not None and "ALL_ATTENTION_FUNCTIONS" in code.co_names and hasattr(m, "config")


def find_attention_layers(module: Any) -> tuple[dict[str, str], dict[str, str]]:
    """({name: "module" | "hf"} of the layers this pass can swap, {name: reason} of attention layers it cannot)."""
    from torch import nn

    from edgeopt.kernels.attention import MultiHeadSelfAttention

    layers: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name, m in module.named_modules():
        if isinstance(m, MultiHeadSelfAttention):
            layers[name] = "module"
        elif isinstance(m, nn.MultiheadAttention):
            skipped[name] = "torch.nn.MultiheadAttention (packed in_proj and its own fused path) is not supported"
        elif _is_hf_attention(m):
            current = getattr(m.config, "_attn_implementation", None)
            if current not in ("eager", "sdpa", None, "edgeopt"):
                skipped[name] = f"model attention implementation {current!r} (only eager or sdpa are swapped)"
            elif getattr(m, "num_key_value_groups", 1) != 1:
                skipped[name] = "grouped key/value heads are not supported by the kernels"
            else:
                layers[name] = "hf"
    return layers, skipped


def _set_impl(layer: Any, kind: str, impl: str | None, blocks: dict[str, int],
              original: tuple[str, dict[str, int]] | None = None) -> None:
    """Point one layer at `impl`; None: back to the untouched computation (`original` impl and blocks for modules)."""
    from edgeopt.kernels.attention import HF_SPEC_ATTR

    if kind == "module":
        if impl is None:
            layer.set_impl(original[0] if original else "naive", **(original[1] if original else {}))
        else:
            layer.set_impl(impl, **blocks)
    elif impl is None:
        layer.__dict__.pop(HF_SPEC_ATTR, None)
    else:
        setattr(layer, HF_SPEC_ATTR, {"impl": impl, "blocks": dict(blocks)})


def _first_tensor(out: Any) -> Any:
    import torch

    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out


def _dims(layer: Any, kind: str, args: tuple, kwargs: dict) -> dict[str, int] | None:
    """(B, nh, Tq, Tk, hs) of a layer's attention from its input and attributes (None if not known)."""
    x = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
    if x is None or x.dim() != 3:
        return None
    if kind == "module":
        nh, hs = layer.num_heads, layer.head_dim
    else:
        cfg = layer.config
        nh = int(getattr(layer, "num_attention_heads", 0) or getattr(cfg, "num_attention_heads", 0))
        hs = int(getattr(layer, "attention_head_size", 0) or getattr(layer, "head_dim", 0)
                 or getattr(cfg, "hidden_size", 0) // max(nh, 1))
    enc = kwargs.get("encoder_hidden_states")
    Tk = int(enc.shape[1]) if enc is not None else int(x.shape[1])
    return {"B": int(x.shape[0]), "nh": nh, "Tq": int(x.shape[1]), "Tk": Tk, "hs": hs}


def _measure(module: Any, layers: dict[str, str], example: Any, cfg: Any, blocks: dict[str, int]) -> dict[str, dict]:
    """Per layer: capture its inputs in one example run, then time and check every candidate implementation."""
    import torch

    from edgeopt.kernels.attention import peak_intermediate_bytes
    from edgeopt.kernels.winograd import call_with, relative_error, time_interleaved

    captured: dict[str, tuple[tuple, dict]] = {}
    hooks = []
    for name in layers:
        def hook(mod, args, kwargs, name=name):
            captured.setdefault(name, (args, dict(kwargs)))
        hooks.append(module.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            call_with(module, example)
    finally:
        for h in hooks:
            h.remove()
    records: dict[str, dict[str, Any]] = {}
    for name, kind in layers.items():
        if name not in captured:
            records[name] = {"kind": kind, "impl": None, "reason": "not reached by the example input"}
            continue
        layer = module.get_submodule(name)
        args, kwargs = captured[name]
        original = (layer.impl, dict(layer.blocks)) if kind == "module" else None
        with torch.inference_mode():
            _set_impl(layer, kind, None, blocks, original)
            ref = _first_tensor(layer(*args, **kwargs))  # the untouched computation
            errors = {}
            for impl in cfg.candidates:
                _set_impl(layer, kind, impl, blocks)
                errors[impl] = relative_error(_first_tensor(layer(*args, **kwargs)), ref)

        def timed(impl: str, layer=layer, kind=kind, args=args, kwargs=kwargs):
            return lambda: (_set_impl(layer, kind, impl, blocks), layer(*args, **kwargs))

        lat = time_interleaved({impl: timed(impl) for impl in cfg.candidates}, runs=cfg.runs, threads=cfg.threads)
        dims = _dims(layer, kind, args, kwargs)
        dtype = ref.dtype
        measured = {impl: {"latency_ms": lat[impl], "rel_error": errors[impl],
                           "peak_intermediate_bytes": None if dims is None else
                           peak_intermediate_bytes(impl, **dims, dtype=dtype, blocks=blocks)}
                    for impl in cfg.candidates}
        ok = [i for i in cfg.candidates if errors[i] <= cfg.max_rel_error]
        refused = {i: f"relative error {errors[i]:.2e} > {cfg.max_rel_error:.0e}"
                   for i in cfg.candidates if i not in ok}
        if not ok:
            records[name] = {"kind": kind, "impl": None, "measured": measured, "refused": refused,
                             "reason": "no candidate within max_rel_error"}
            _set_impl(layer, kind, None, blocks, original)
            continue
        best = min(ok, key=lambda i: lat[i])
        records[name] = {"kind": kind, "impl": best, "dims": dims, "measured": measured, "refused": refused,
                         "reason": f"fastest within max_rel_error ({lat[best]:.3f} ms)"}
    return records
