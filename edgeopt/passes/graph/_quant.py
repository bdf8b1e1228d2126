"""Plumbing shared by the ONNX Runtime quantization passes: the quantizer call, the layers it takes, settings."""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Literal

from pydantic import Field

from edgeopt.passes.base import PassConfig

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


def quant_type(name: str):
    """ONNX Runtime's QuantType for a weight type name."""
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
                         per_channel=per_channel, reduce_range=reduce_range, weight_type=quant_type(weight_type),
                         nodes_to_exclude=list(exclude), nodes_to_quantize=list(include) if include else None,
                         extra_options=extra)


class QuantConfig(PassConfig):
    """The settings every ONNX Runtime quantization pass takes (None: the target's default)."""

    per_channel: bool | None = Field(default=None, description="None: the target's default")
    reduce_range: bool | None = Field(default=None, description="None: the target's default (True on x86 without VNNI)")
    weight_type: Literal["int8", "uint8"] | None = None
    op_types: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()


def resolved_settings(cfg: QuantConfig, target: Any) -> dict[str, Any]:
    """Config values with the target's defaults filled in (what the ledger records)."""
    return {
        "per_channel": cfg.per_channel if cfg.per_channel is not None else bool(getattr(target, "per_channel", True)),
        "reduce_range": cfg.reduce_range if cfg.reduce_range is not None else bool(getattr(target, "reduce_range", False)),
        "weight_type": cfg.weight_type or getattr(target, "weight_type", "int8"),
    }
