"""Op census and parameter count of an ONNX graph: which operators it uses, how many weights and bytes."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

# Element types that hold shapes, indices and masks rather than learned weights: their bytes count toward
# weight bytes, their elements not toward the parameter count.
_NON_PARAM_DTYPES = {"int64", "bool", "str", "object"}
# Bits per element of the sub-byte types numpy has no itemsize for.
_SUBBYTE_BITS = {"int4": 4, "uint4": 4, "float4_e2m1": 4, "int2": 2, "uint2": 2}


def op_key(node: Any) -> str:
    """The census name of a node: its op type, prefixed by its domain where that is not the default one."""
    domain = node.domain or ""
    return node.op_type if domain in ("", "ai.onnx") else f"{domain}.{node.op_type}"


def op_census(model: Any) -> dict[str, int]:
    """Op type -> node count over the main graph and any subgraphs, most frequent first (ties by name)."""
    counts: Counter[str] = Counter(op_key(n) for n in iter_nodes(model.graph))
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def op_counts(model: Any) -> dict[str, int]:
    """Op type -> node count over the main graph only, by name (what a graph pass records before and after)."""
    return dict(sorted(Counter(op_key(n) for n in model.graph.node).items()))


def iter_nodes(graph: Any):
    """Every node of `graph`, then of the subgraphs held in node attributes (If, Loop, Scan)."""
    import onnx

    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from iter_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from iter_nodes(g)


def dtype_name(elem_type: int) -> str:
    """The numpy-style name of an ONNX element type ("float32", "int8", ...; "unknown" when unset)."""
    import onnx

    if not elem_type:
        return "unknown"
    try:
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # types numpy cannot name (or new ones this onnx does not map)
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def dtype_bits(elem_type: int) -> int:
    """Bits per element of an ONNX element type (0 where unknown, e.g. strings)."""
    import onnx

    name = dtype_name(elem_type)
    if name in _SUBBYTE_BITS:
        return _SUBBYTE_BITS[name]
    if name in ("str", "object", "unknown") or elem_type == onnx.TensorProto.STRING:
        return 0
    try:
        return 8 * np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem_type)).itemsize
    except Exception:
        return 0


def tensor_numel(t: Any) -> int:
    n = 1
    for d in t.dims:
        n *= int(d)
    return n


def tensor_nbytes(t: Any) -> int:
    """Bytes of a TensorProto from its dims and type, so weights kept in external data need not be loaded."""
    import onnx

    if t.data_type == onnx.TensorProto.STRING:
        return sum(len(s) for s in t.string_data)
    return (tensor_numel(t) * dtype_bits(t.data_type) + 7) // 8


def weight_tensors(model: Any) -> list[Any]:
    """The graph's constant tensors: initializers and the values of Constant nodes (main graph only)."""
    out = list(model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    out.append(attr.t)
    return out


def param_stats(model: Any) -> dict[str, Any]:
    """Parameter count and bytes of an ONNX model, in all and by dtype.

    `count` counts the elements of every weight tensor except scalars (eps, 0.5, sqrt 2, ...) and shape,
    index and mask constants (int64, bool), so it matches the framework's parameter count; `bytes` counts
    the bytes of every constant tensor (initializers and Constant nodes); `by_dtype` counts all elements.
    Returns
    `{"count", "bytes", "tensors", "by_dtype": {dtype: {"count", "bytes", "tensors"}}}`.
    """
    by: dict[str, dict[str, int]] = {}
    count = 0
    for t in weight_tensors(model):
        name = dtype_name(t.data_type)
        n = tensor_numel(t)
        row = by.setdefault(name, {"count": 0, "bytes": 0, "tensors": 0})
        row["count"] += n
        row["bytes"] += tensor_nbytes(t)
        row["tensors"] += 1
        if n > 1 and name not in _NON_PARAM_DTYPES:
            count += n
    return {
        "count": int(count),
        "bytes": int(sum(r["bytes"] for r in by.values())),
        "tensors": int(sum(r["tensors"] for r in by.values())),
        "by_dtype": dict(sorted(by.items(), key=lambda kv: -kv[1]["bytes"])),
    }


def model_info(model: Any, path: Any = None) -> dict[str, Any]:
    """Facts about the model file: path, opsets by domain, IR version, producer, graph inputs and outputs."""
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}

    def io(values, skip=()):
        rows = []
        for v in values:
            if v.name in skip:
                continue
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.shape.dim]
            rows.append({"name": v.name, "dtype": dtype_name(t.elem_type), "shape": dims})
        return rows

    inits = {i.name for i in model.graph.initializer}
    return {
        "path": str(path) if path is not None else None,
        "opset": opsets.get("ai.onnx"),
        "opsets": dict(sorted(opsets.items())),
        "ir_version": int(model.ir_version),
        "producer": " ".join(x for x in (model.producer_name, model.producer_version) if x) or None,
        "graph_name": model.graph.name or None,
        "nodes": len(model.graph.node),
        "inputs": io(model.graph.input, inits),
        "outputs": io(model.graph.output),
    }
