"""kernels.winograd: replace eligible 3×3 Conv2d modules of a PyTorch model with Winograd F(m×m, 3×3) modules."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from edgeopt.artifact import Artifact, register_builder
from edgeopt.kernels import native
from edgeopt.kernels.checks import ErrorBudget
from edgeopt.passes.base import Pass, PassContext, register, torch_module_copy
from edgeopt.passes.kernels._common import LayerSwapConfig, example_inputs, optional_example_inputs


@register("kernels.winograd")
class WinogradPass(Pass):
    """Replace each eligible Conv2d (3×3, stride 1, dilation 1, groups 1; any padding) with WinogradConv2d.

    `tile` fixes m for every eligible layer (the paper's choice is 4); "auto" runs the tuner per layer (over
    `tiles`) on the shapes the example input produces and keeps the fastest candidate within `error_budget`
    (norm-wise relative error against float64), which may be direct convolution. Ineligible layers stay as they are,
    with the reason in ctx.notes["winograd"]["skipped"] and one summary line in ctx.warnings; layers where
    "auto" kept direct convolution are listed under "kept_direct", the tuner's measurements under "tuning".
    With `measure` on (and example inputs present) every replaced layer is measured before vs after on the
    input it sees in the example run (latency, throughput, peak intermediate bytes, error against the
    untouched conv) into ctx.notes["winograd"]["per_layer"].

    `backend` (edgeopt.kernels.winograd): "torch" (PyTorch ops) or "native" (edgeopt's C++ kernel, tiles 2
    and 4; refused at configuration, with the reason, where it cannot be built). With "native", a fixed
    `tile` must be 2 or 4, and "auto" tunes F2/F4 on the native kernel and larger tiles on PyTorch ops.
    The backend asked for is ctx.notes["winograd"]["backend"], each replaced layer's under "backends".
    """

    class Config(LayerSwapConfig):
        tile: Literal[2, 4, 6, 8, "auto"] = 4
        tiles: tuple[Literal[2, 4, 6, 8], ...] = Field(default=(2, 4, 6, 8), min_length=1)  # what "auto" tries
        error_budget: ErrorBudget = 1e-5
        backend: Literal["torch", "native"] = "torch"

        @field_validator("backend")
        @classmethod
        def _native_usable(cls, backend: str, info: ValidationInfo) -> str:
            tile = info.data.get("tile", "auto")
            if backend == "native" and tile not in ("auto", *native.WINOGRAD_TILES):
                raise ValueError(f"the native kernel computes tiles {' and '.join(map(str, native.WINOGRAD_TILES))}"
                                 f", not tile {tile}")
            reason = native.unavailable_reason() if backend == "native" else None
            if reason is not None:
                raise ValueError(f"the native kernels cannot be used here: {reason}")
            return backend

    accepts = ("torch",)
    produces = "torch"

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        from torch import nn

        # torch-backed: imported when the pass runs (pass modules load with the registry)
        from edgeopt.kernels.winograd import (WinogradConv2d, candidate_backend, candidate_name,  # lazy: imports torch
                                              tune_model, winograd_supported)

        cfg = self.config
        module = torch_module_copy(art, self.name, share_weights=True)
        convs = {n: m for n, m in module.named_modules() if isinstance(m, nn.Conv2d)}
        replaced: dict[str, int] = {}
        backends: dict[str, str] = {}  # replaced layer -> the backend it runs on
        skipped: dict[str, str] = {}
        tuning: dict[str, Any] = {}
        example = None
        if convs and (cfg.tile == "auto" or cfg.measure):
            example = example_inputs(art, ctx, self.name) if cfg.tile == "auto" else optional_example_inputs(art, ctx)
        if cfg.tile == "auto" and convs:
            tuning = tune_model(module, example, tiles=cfg.tiles, error_budget=cfg.error_budget, runs=cfg.runs,
                                threads=cfg.threads, backend=cfg.backend)
        kept_direct: dict[str, str] = {}
        originals: dict[str, Any] = {}
        for name, conv in convs.items():
            ok, why = winograd_supported(conv)
            if name in cfg.exclude:
                skipped[name] = "excluded by config"
            elif not ok:
                skipped[name] = why
            elif cfg.tile != "auto":
                err = _fixed_tile_error(conv, int(cfg.tile), cfg.backend)
                if err > cfg.error_budget:
                    skipped[name] = (f"F{cfg.tile} relative error {err:.1e} against float64 exceeds the error budget "
                                     f"{cfg.error_budget:g} in {str(conv.weight.dtype).removeprefix('torch.')}")
                else:
                    replaced[name] = int(cfg.tile)
                    backends[name] = candidate_backend(int(cfg.tile), cfg.backend)
            elif not tuning[name]["supported"]:
                skipped[name] = tuning[name]["reason"]
            elif tuning[name]["tile"] is None:
                kept_direct[name] = "direct convolution is fastest within the error budget"
            else:
                replaced[name] = tuning[name]["tile"]
                backends[name] = tuning[name]["backend"]
        captured: dict[str, tuple[tuple, dict]] = {}
        if cfg.measure and replaced and example is not None:
            # torch-backed: imported when the pass runs (pass modules load with the registry)
            from edgeopt.kernels.layer_stats import capture_inputs  # lazy: imports torch

            captured = capture_inputs(module, list(replaced), example)
        for name, tile in replaced.items():
            originals[name] = convs[name]
            module.set_submodule(name, WinogradConv2d(convs[name], tile, backends[name]))
        per_layer: dict[str, Any] = {}
        if cfg.measure:
            # torch-backed: imported when the pass runs (pass modules load with the registry)
            from edgeopt.kernels.layer_stats import compare_layers  # lazy: imports torch

            items = {name: {"before": originals[name], "after": module.get_submodule(name), "args": args,
                            "kwargs": kwargs, "label_before": "Conv2d (direct)",
                            "label_after": candidate_name(replaced[name], backends[name])}
                     for name, (args, kwargs) in captured.items()}
            per_layer = compare_layers(items, runs=cfg.runs, threads=cfg.threads)
            for name, rec in per_layer.items():
                rec["extra_bytes"] = module.get_submodule(name).extra_bytes(tuple(captured[name][0][0].shape),
                                                                            cfg.threads)
        ctx.notes["winograd"] = {"replaced": replaced, "backend": cfg.backend, "backends": backends,
                                 "skipped": skipped, "kept_direct": kept_direct,
                                 "tuning": {n: _summary(r) for n, r in tuning.items()}, "per_layer": per_layer}
        if cfg.measure and replaced and example is None:
            ctx.warnings.append("kernels.winograd: per-layer measurement skipped: no example inputs")
        if skipped:
            ctx.warnings.append("kernels.winograd: left as direct convolution: "
                                + "; ".join(f"{n} ({r})" for n, r in skipped.items()))
        meta = {**art.meta, "winograd": dict(replaced)}
        return Artifact.from_module(module, art.input_spec, meta=meta,
                                    rebuild=("kernels.winograd", {"tiles": dict(replaced), "backends": backends}))


@register_builder("kernels.winograd")
def rebuild_winograd(parent: Artifact, args: dict[str, Any], ctx: Any) -> Any:
    """The input model with each conv of `args["tiles"]` wrapped as WinogradConv2d with its recorded tile and
    backend (`args["backends"]`; "torch" where absent, as in records written before there were backends)."""
    # torch-backed: imported when the pass runs (pass modules load with the registry)
    from edgeopt.kernels.winograd import WinogradConv2d  # lazy: imports torch

    module = torch_module_copy(parent, "kernels.winograd", share_weights=True)
    backends = args.get("backends", {})
    for name, tile in args["tiles"].items():
        module.set_submodule(name, WinogradConv2d(module.get_submodule(name), int(tile), backends.get(name, "torch")))
    return module.eval()


def _fixed_tile_error(conv: Any, tile: int, backend: str, size: int = 16) -> float:
    """Norm-wise relative error of F(tile, 3) on `backend`, on a random probe, in the layer's dtype, against float64:
    a fixed tile the data type cannot carry (F8 in bf16 is off by ~5x) is refused, never used."""
    import copy

    import torch

    # torch-backed: imported when the pass runs (pass modules load with the registry)
    from edgeopt.kernels.layer_stats import relative_error  # lazy: imports torch
    from edgeopt.kernels.winograd import WinogradConv2d  # lazy: imports torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, conv.in_channels, size, size, generator=g)
    ref = copy.deepcopy(conv).double()
    with torch.no_grad():
        y = WinogradConv2d(conv, tile, backend)(x.to(conv.weight.dtype))
        return relative_error(y, ref(x.double()))


def _summary(res: dict[str, Any]) -> dict[str, Any]:
    """The tuner's result for one layer, as the ledger keeps it (per candidate: ms, error, ratio, extra bytes)."""
    cands = {k: {"latency_ms": c["latency_ms"], "rel_error": c["rel_error"], "flops_ratio": c["flops_ratio"],
                 "extra_bytes": c["extra_bytes"]["total"], "accepted": c["accepted"]}
             for k, c in res.get("candidates", {}).items()}
    return {"choice": res["choice"], "input_shape": res.get("input_shape"), "candidates": cands,
            "refused": res.get("refused", {}), "reason": res.get("reason", "")}
