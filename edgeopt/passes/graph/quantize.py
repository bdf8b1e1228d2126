"""graph.quantize_dynamic and graph.quantize_static: INT8 quantization through ONNX Runtime's quantizer."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.graph._io import finish, stage_output, target_of

FLOAT_DEFAULT = {"DefaultTensorType": 1}  # contrib ops (Attention, ...) defeat shape inference: assume float


def quantizable_nodes(model_path, op_types: tuple[str, ...] | None = None) -> list[tuple[str, str]]:
    """(node name, op type) of every node ONNX Runtime's dynamic quantizer would quantize."""
    import onnx
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    model = onnx.load(str(model_path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    wanted = set(op_types or ("MatMul", "Attention", "EmbedLayerNormalization", "Gather", "Conv", "Gemm"))
    out = []
    for n in model.graph.node:
        if n.op_type not in wanted or n.op_type not in IntegerOpsRegistry and n.op_type != "Gemm":
            continue
        if n.op_type in ("MatMul", "Gemm") and not any(i in inits for i in n.input[1:2]):
            continue  # activation x activation products have no weight to quantize
        if n.op_type == "Gather" and n.input[0] not in inits:
            continue
        out.append((n.name, n.op_type))
    return out


@contextlib.contextmanager
def quiet_root_logger():
    """ONNX Runtime's quantizer logs advice on the root logger; keep the user's terminal to our own output."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _weight_type(name: str):
    from onnxruntime.quantization import QuantType

    return {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[name]


def run_quantize_dynamic(src, dst, *, per_channel: bool, reduce_range: bool, weight_type: str,
                         op_types: tuple[str, ...] | None, exclude: list[str], include: list[str] | None = None) -> None:
    """ONNX Runtime's quantize_dynamic with the settings edgeopt chose (written to `dst`)."""
    from onnxruntime.quantization import quantize_dynamic

    # ONNX Runtime rewrites Gemm as MatMul + Add named "<gemm>_MatMul" before quantizing: name both forms
    exclude = [x for n in exclude for x in (n, f"{n}_MatMul")]
    include = [x for n in include for x in (n, f"{n}_MatMul")] if include else None
    extra: dict[str, Any] = dict(FLOAT_DEFAULT)
    # MatMulConstBOnly keeps activation x activation MatMuls in float (their dynamic quantization is lossy)
    extra["MatMulConstBOnly"] = True
    with quiet_root_logger():
        quantize_dynamic(str(src), str(dst), op_types_to_quantize=list(op_types) if op_types else None,
                         per_channel=per_channel, reduce_range=reduce_range, weight_type=_weight_type(weight_type),
                         nodes_to_exclude=list(exclude), nodes_to_quantize=list(include) if include else None,
                         extra_options=extra)


class _QuantConfig(PassConfig):
    per_channel: bool | None = Field(default=None, description="None: the target's default")
    reduce_range: bool | None = Field(default=None, description="None: the target's default (True on x86 without VNNI)")
    weight_type: Literal["int8", "uint8"] | None = None
    op_types: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()


def resolved_settings(cfg: _QuantConfig, target: Any) -> dict[str, Any]:
    """Config values with the target's defaults filled in (what the ledger records)."""
    return {
        "per_channel": cfg.per_channel if cfg.per_channel is not None else bool(getattr(target, "per_channel", True)),
        "reduce_range": cfg.reduce_range if cfg.reduce_range is not None else bool(getattr(target, "reduce_range", False)),
        "weight_type": cfg.weight_type or getattr(target, "weight_type", "int8"),
    }


@register("graph.quantize_dynamic")
class QuantizeDynamic(Pass):
    """INT8 weights, activations quantized at run time (no calibration data needed).

    With `exclude_sensitive` set (a minimum mean cosine such as 0.995), the sensitivity search of
    graph.quantize_mixed keeps the layers that drift most in float until that fidelity holds.
    """

    class Config(_QuantConfig):
        exclude_sensitive: float | None = Field(default=None, gt=0, le=1)

    tolerance = 0.95

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        cfg = self.config
        if cfg.exclude_sensitive is not None:
            from edgeopt.passes.graph.mixed import mixed_quantize

            return mixed_quantize(art, ctx, min_mean_cosine=cfg.exclude_sensitive, min_cosine=None, base=cfg)
        settings = resolved_settings(cfg, target_of(ctx))
        out, tmp = stage_output(ctx)
        try:
            run_quantize_dynamic(art.path, tmp, op_types=cfg.op_types, exclude=list(cfg.exclude), **settings)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise PassError(f"graph.quantize_dynamic failed: {str(e).splitlines()[0][:300]}") from None
        ctx.notes["quantization"] = {"mode": "dynamic", **settings, "excluded": list(cfg.exclude)}
        return finish(tmp, out, art, quantized="dynamic-int8")


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
    """INT8 weights and activations with scales calibrated on the recipe's calibration data."""

    class Config(_QuantConfig):
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
        try:
            with quiet_root_logger():
                quantize_static(str(art.path), str(tmp), _Reader(feeds, advance),
                                quant_format=QuantFormat.QDQ if fmt == "QDQ" else QuantFormat.QOperator,
                                op_types_to_quantize=list(cfg.op_types) if cfg.op_types else None,
                                per_channel=settings["per_channel"], reduce_range=settings["reduce_range"],
                                activation_type=QuantType.QUInt8 if act == "uint8" else QuantType.QInt8,
                                weight_type=_weight_type(settings["weight_type"]), nodes_to_exclude=list(cfg.exclude),
                                calibrate_method=method, extra_options=extra)
        except Exception as e:
            tmp.unlink(missing_ok=True)
            raise PassError(f"graph.quantize_static failed: {str(e).splitlines()[0][:300]}") from None
        ctx.notes["quantization"] = {"mode": "static", "method": cfg.method, "format": fmt, "activation_type": act,
                                     "samples": len(feeds), **settings, "excluded": list(cfg.exclude)}
        return finish(tmp, out, art, quantized=f"static-int8-{fmt}")
