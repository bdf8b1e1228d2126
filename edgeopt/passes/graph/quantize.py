"""graph.quantize_dynamic and graph.quantize_static: INT8 quantization through ONNX Runtime's quantizer."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassContext, register
from edgeopt.passes.graph._io import finish, stage_output, target_of
from edgeopt.passes.graph._quant import (FLOAT_DEFAULT, QuantConfig, quant_type, quiet_root_logger,
                                         resolved_settings, run_quantize_dynamic, with_unshared_biases)
from edgeopt.passes.graph.mixed import mixed_quantize


@register("graph.quantize_dynamic")
class QuantizeDynamic(Pass):
    """INT8 weights, activations quantized at run time (no calibration data needed).

    With `exclude_sensitive` set (a minimum mean cosine such as 0.995), the sensitivity search of
    graph.quantize_mixed keeps the layers that drift most in float until that fidelity holds.
    """

    class Config(QuantConfig):
        exclude_sensitive: float | None = Field(default=None, gt=0, le=1)

    tolerance = 0.95

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        cfg = self.config
        if cfg.exclude_sensitive is not None:
            return _warn_conv_integer(mixed_quantize(art, ctx, min_mean_cosine=cfg.exclude_sensitive, min_cosine=None,
                                                     base=cfg), ctx)
        settings = resolved_settings(cfg, target_of(ctx))
        out, tmp = stage_output(ctx)
        try:
            run_quantize_dynamic(art.path, tmp, op_types=cfg.op_types, exclude=list(cfg.exclude), **settings)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise PassError(f"graph.quantize_dynamic failed: {str(e).splitlines()[0][:300]}") from None
        ctx.notes["quantization"] = {"mode": "dynamic", **settings, "excluded": list(cfg.exclude)}
        return _warn_conv_integer(finish(tmp, out, art, quantized="dynamic-int8"), ctx)


def _warn_conv_integer(art: Artifact, ctx: PassContext) -> Artifact:
    """A warning when dynamic quantization turned convolutions into ConvInteger: ONNX Runtime's CPU ConvInteger
    has no fast kernel (zoo:digits-cnn ran at 0.05-0.06x its fp32 model on a Zen 4 EPYC, with VNNI and with the ISA
    masked to AVX2), where static INT8's QLinearConv is the fast path."""
    import onnx  # lazy: heavy

    n = sum(node.op_type == "ConvInteger" for node in onnx.load(str(art.path), load_external_data=False).graph.node)
    if n:
        ctx.warnings.append(f"graph.quantize_dynamic: {n} Conv layer{'s' * (n != 1)} became ConvInteger, which ONNX "
                            "Runtime's CPU kernels run slowly (a CNN measured 0.05-0.06x its fp32 model); quantize "
                            "convolutions with graph.quantize_static (QLinearConv), or keep them float with "
                            "op_types: [MatMul, Gemm]")
    return art


class _Reader:
    """ONNX Runtime CalibrationDataReader over a list of feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]], advance=None):
        self._it = iter(feeds)
        self._advance = advance or (lambda n=1: None)

    def get_next(self):
        feed = next(self._it, None)
        if feed is not None:
            self._advance()
        return feed

    def rewind(self):  # pragma: no cover - part of ORT's reader protocol
        pass


@register("graph.quantize_static")
class QuantizeStatic(Pass):
    """INT8 weights and activations with scales calibrated on the recipe's calibration data.

    A Conv/Gemm bias initializer that another node also reads (exporters merge identical ones) is given
    its own copy first, on a copy of the model (`_quant.unshare_biases` says why); the count is recorded
    in `notes["quantization"]["unshared_biases"]`.
    """

    class Config(QuantConfig):
        method: Literal["minmax", "entropy", "percentile"] = "minmax"
        percentile: float = Field(default=99.999, gt=50, le=100)
        format: Literal["auto", "QDQ", "QOperator"] = "auto"
        activation_type: Literal["auto", "uint8", "int8"] = "auto"
        samples: int = Field(default=64, ge=1)

    tolerance = 0.95

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        cfg = self.config
        target = target_of(ctx)
        if not ctx.calibration:
            raise PassError("graph.quantize_static needs calibration data (recipe data.calibration)")
        settings = resolved_settings(cfg, target)
        fmt = cfg.format if cfg.format != "auto" else getattr(target, "quant_format", "QDQ")
        act = cfg.activation_type if cfg.activation_type != "auto" else getattr(target, "activation_type", "uint8")
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[cfg.method]
        feeds = ctx.calibration[: cfg.samples]
        extra: dict[str, Any] = {**FLOAT_DEFAULT, "MatMulConstBOnly": True}
        if cfg.method == "percentile":
            extra["CalibPercentile"] = cfg.percentile
        out, tmp = stage_output(ctx)
        advance = ctx.task(f"calibrating ({cfg.method})", total=len(feeds))
        unshared = 0
        try:
            with tempfile.TemporaryDirectory(dir=ctx.stage_dir, prefix=".unshared.") as work, quiet_root_logger():
                src, unshared = with_unshared_biases(Path(art.path), Path(work))
                quantize_static(str(src), str(tmp), _Reader(feeds, advance),
                                quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
                                op_types_to_quantize=list(cfg.op_types) if cfg.op_types else None,
                                per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                                activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                                weight_type=quant_type(settings["weight_type"]), nodes_to_exclude=list(cfg.exclude),
                                calibrate_method=method, extra_options=extra)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise PassError(f"graph.quantize_static failed: {str(e).splitlines()[0][:300]}") from None
        ctx.notes["quantization"] = {"mode": "static", "method": cfg.method, "format": fmt, "activation_type": act,
                                     "samples": len(feeds), **settings, "excluded": list(cfg.exclude),
                                     "unshared_biases": unshared}
        return finish(tmp, out, art, quantized=f"static-int8-{fmt}")
