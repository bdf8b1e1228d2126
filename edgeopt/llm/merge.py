"""Merge LiteRT flatbuffers converted from the same model with different signatures into one multi-signature model
whose signatures share their weight buffers (how `export.convert` converts signatures in parallel processes).

Each part holds a complete copy of the weights its signatures use; the merge appends the later parts' subgraphs,
operator codes and signature definitions to the first part's, and points every tensor at one buffer per distinct
content (buffers are compared by size and SHA-256), so the merged file stores each weight once, as a single
conversion of all the signatures does. Tensor and subgraph names that two parts share get a ";merged<k>" suffix:
ai-edge-quantizer refuses a model whose tensor names repeat. Written here because neither litert-torch nor ai-edge-litert merges
converted models; the flatbuffer is read and written with ai-edge-litert's own schema object API.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

from edgeopt.errors import InputError

# ops whose options name other subgraphs (control flow): refused, the LLM exports have none. Composite ops (e.g.
# litert-torch's RMSNorm) name their decomposition subgraph too: that index is renumbered with the subgraphs.
_SUBGRAPH_OPTIONS = ("WhileOptions", "IfOptions", "CallOnceOptions", "CallOptions", "StablehloWhileOptions", "StablehloCaseOptions",
                     "StablehloReduceOptions", "StablehloSortOptions", "StablehloScatterOptions",
                     "StablehloReduceWindowOptions")


def merge(parts: Sequence[bytes]) -> bytes:
    """One flatbuffer with every signature of `parts` (LiteRT models converted from the same weights), the first
    part's metadata and description, and each distinct buffer stored once. Raises InputError for parts it cannot
    merge safely (control-flow subgraphs, a signature name in two parts)."""
    from ai_edge_litert import schema_py_generated as S  # lazy: optional extra
    from ai_edge_litert.tools import flatbuffer_utils as fu  # lazy: optional extra

    if not parts:
        raise InputError("nothing to merge")
    models = [fu.read_model_from_bytearray(p) for p in parts]  # buffers stay views of `parts` (read, never written)
    out = models[0]
    names = [s.signatureKey for s in out.signatureDefs or []]
    buffers: list[Any] = [S.BufferT()]  # buffer 0: the empty sentinel every non-constant tensor may point at
    by_content: dict[tuple[int, bytes], int] = {}
    codes: list[Any] = []
    code_index: dict[tuple[Any, ...], int] = {}
    subgraphs: list[Any] = []
    signatures: list[Any] = []
    tensor_names: set[bytes] = set()  # ai-edge-quantizer needs tensor names unique across the whole model
    subgraph_names: set[bytes] = set()
    first_map: list[int] = []
    for m in models:
        _refuse_control_flow(m, S)
        buffer_map = [_buffer_index(b, buffers, by_content) for b in m.buffers or []]
        if m is out:
            first_map = buffer_map
        code_map = []
        for c in m.operatorCodes or []:
            key = (c.builtinCode, c.deprecatedBuiltinCode, c.customCode, c.version)
            if key not in code_index:
                code_index[key] = len(codes)
                codes.append(c)
            code_map.append(code_index[key])
        offset = len(subgraphs)
        composite = getattr(S.BuiltinOptions2, "StableHLOCompositeOptions", None)
        for g in m.subgraphs or []:
            g.name = _unique(g.name, subgraph_names)
            for t in g.tensors or []:
                t.buffer = buffer_map[t.buffer] if t.buffer < len(buffer_map) else 0
                t.name = _unique(t.name, tensor_names)
            for op in g.operators or []:
                op.opcodeIndex = code_map[op.opcodeIndex]
                if composite is not None and getattr(op, "builtinOptions2Type", 0) == composite:
                    op.builtinOptions2.decompositionSubgraphIndex += offset
            subgraphs.append(g)
        for s in m.signatureDefs or []:
            if m is not out:
                if s.signatureKey in names:
                    key = s.signatureKey.decode() if isinstance(s.signatureKey, bytes) else s.signatureKey
                    raise InputError(f"signature {key!r} is in two of the parts")
                names.append(s.signatureKey)
            s.subgraphIndex += offset
            signatures.append(s)
    for md in out.metadata or []:  # the first part's metadata, its buffers renumbered like its tensors'
        md.buffer = first_map[md.buffer]
    if out.metadataBuffer is not None:
        out.metadataBuffer = [first_map[i] for i in out.metadataBuffer]
    out.buffers, out.operatorCodes, out.subgraphs, out.signatureDefs = buffers, codes, subgraphs, signatures
    return bytes(fu.convert_object_to_bytearray(out))


def _unique(name: Any, taken: set[bytes]) -> Any:
    """`name`, or `name` + ";merged<k>" for the smallest k not yet taken (a suffix keeps substring matches, such as
    the quantization recipes' regexes on tensor names); `taken` is updated."""
    if not name:
        return name
    raw = name if isinstance(name, bytes) else str(name).encode()
    out, k = raw, 1
    while out in taken:
        out, k = raw + b";merged%d" % k, k + 1
    taken.add(out)
    return out


def _buffer_index(b: Any, buffers: list[Any], by_content: dict[tuple[int, bytes], int]) -> int:
    """The merged index of buffer `b`: 0 when empty, else the first buffer with the same bytes (appended if new).
    Buffers stored at file offsets were already read into `data` by `read_model_from_bytearray`."""
    if b.data is None or len(b.data) == 0:
        return 0
    key = (len(b.data), hashlib.sha256(b.data).digest())
    if key not in by_content:
        by_content[key] = len(buffers)
        buffers.append(b)
    return by_content[key]


def _refuse_control_flow(m: Any, S: Any) -> None:
    one = {getattr(S.BuiltinOptions, n) for n in _SUBGRAPH_OPTIONS if hasattr(S.BuiltinOptions, n)}
    two = ({getattr(S.BuiltinOptions2, n) for n in _SUBGRAPH_OPTIONS if hasattr(S.BuiltinOptions2, n)}
           if hasattr(S, "BuiltinOptions2") else set())
    for g in m.subgraphs or []:
        for op in g.operators or []:
            if op.builtinOptionsType in one or getattr(op, "builtinOptions2Type", 0) in two:
                raise InputError("a part has control-flow ops that name other subgraphs: cannot merge it")
