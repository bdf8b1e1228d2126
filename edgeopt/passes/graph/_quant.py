"""Plumbing shared by the ONNX Runtime quantization passes: the quantizer call, the layers it takes, settings."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgeopt.passes.base import PassConfig
from edgeopt.passes.graph._io import save_onnx_atomic

FLOAT_DEFAULT = {"DefaultTensorType": 1}  # contrib ops (Attention, ...) defeat shape inference: assume float
# Ops whose input at this index ONNX Runtime's static quantizer turns into an int32 bias (scale = input x weight scale)
BIAS_INPUT = {"Conv": 2, "ConvTranspose": 2, "Gemm": 2}


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


def _reads(graph: Any) -> dict[str, int]:
    """How many times each tensor name is read: node inputs (subgraphs included) and graph outputs."""
    counts: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            if name:
                counts[name] = counts.get(name, 0) + 1
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                for name, n in _reads(sub).items():
                    counts[name] = counts.get(name, 0) + n
    for out in graph.output:
        counts[out.name] = counts.get(out.name, 0) + 1
    return counts


def _identity_sources(model: Any) -> dict[str, str]:
    """Output name -> initializer name for Identity nodes that pass an initializer on (how the TorchScript
    exporter shares one deduplicated tensor, e.g. the all-zero biases of a freshly built MobileNetV2)."""
    inits = {i.name for i in model.graph.initializer}
    return {n.output[0]: n.input[0] for n in model.graph.node
            if n.op_type == "Identity" and n.domain in ("", "ai.onnx") and n.input and n.input[0] in inits}


def shared_biases(model: Any) -> list[tuple[int, str]]:
    """(node index, bias name) of every Conv/ConvTranspose/Gemm whose bias initializer is also read elsewhere, or
    reaches it through an Identity (ONNX Runtime's quantizer needs the bias as an initializer of its own)."""
    inits = {i.name for i in model.graph.initializer}
    via_identity = _identity_sources(model)
    reads = _reads(model.graph)
    out = []
    for k, node in enumerate(model.graph.node):
        i = BIAS_INPUT.get(node.op_type)
        if i is not None and node.domain in ("", "ai.onnx") and len(node.input) > i:
            name = node.input[i]
            if (name in inits and reads.get(name, 0) > 1) or name in via_identity:
                out.append((k, name))
    return out


def unshare_biases(model: Any) -> int:
    """Give each Conv/ConvTranspose/Gemm bias initializer that another node (or output) also reads, or that
    reaches it through an Identity, its own copy, in place; returns how many copies were made.

    ONNX Runtime's static quantizer quantizes a bias once, to int32 at the first node's input x weight
    scale, and hands that same tensor to every other reader: in QOperator format an Add sharing it gets an
    int32 input and the model no longer loads (QLinearAdd takes 8-bit inputs); a second Conv/Gemm sharing
    it gets the first one's scale (wrong numbers). Exporters merge identical initializers (all-zero
    biases of freshly initialized layers), so this happens on real models. Written here because the
    quantizer has no option for it.
    """
    from onnx import numpy_helper  # lazy: onnx is heavy, the pass registry imports this module

    found = shared_biases(model)
    if not found:
        return 0
    via_identity = _identity_sources(model)
    by_name = {i.name: i for i in model.graph.initializer}
    taken = set(by_name) | {o for n in model.graph.node for o in n.output} | {i.name for i in model.graph.input}
    for k, name in found:
        node = model.graph.node[k]
        base = f"{name}__{node.name or node.op_type + str(k)}"
        new, j = base, 1
        while new in taken:
            new, j = f"{base}_{j}", j + 1
        taken.add(new)
        source = by_name[via_identity.get(name, name)]
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(source), new))
        node.input[BIAS_INPUT[node.op_type]] = new
    reads = _reads(model.graph)
    for node in [n for n in model.graph.node if n.op_type == "Identity" and n.output[0] in via_identity
                 and n.output[0] not in reads]:  # Identities nobody reads any more
        model.graph.node.remove(node)
    reads = _reads(model.graph)
    for name in ({name for _, name in found} | set(via_identity.values())) - set(reads):  # no reader left
        if name in by_name:
            model.graph.initializer.remove(by_name[name])
    return len(found)


def with_unshared_biases(src: Path, work: Path) -> tuple[Path, int]:
    """(`src`, 0) when no Conv/Gemm bias is shared, else (a copy of the model in `work` whose shared biases
    were copied, how many): the input file is never modified."""
    import onnx  # lazy: onnx is heavy, the pass registry imports this module
    from onnx.external_data_helper import load_external_data_for_model

    model = onnx.load(str(src), load_external_data=False)
    if not shared_biases(model):
        return src, 0
    load_external_data_for_model(model, str(Path(src).parent))
    n = unshare_biases(model)
    return save_onnx_atomic(model, Path(work) / "model.onnx"), n


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
