"""FLOPs, MACs and activation memory of an ONNX graph, from shapes inferred with its dynamic dims bound.

Written by hand, after checking the maintained counter onnx-tool (1.0.1, measured 2026-12): it stops with
NotImplementedError on the graphs edgeopt analyzes after its own passes (com.microsoft fused ops such as
EmbedLayerNormalization, and DynamicQuantizeLinear in INT8 graphs), and it folds elementwise work into
"MACs" (a small CNN: 1.23 M vs 1.11 M multiply-accumulates; MiniLM at 1x128: 1.50 G vs 1.43 G), so FLOPs
and MACs cannot be told apart. The cost formulas below are ours. Conventions (one "flop" is one scalar
operation):

- MatMul-like ops: MACs = output elements x reduction length; FLOPs = 2 x MACs (+ 1 per output for a bias).
- Conv: MACs = output elements x (C_in / group) x kernel elements, so depthwise and grouped convs come out
  right; ConvTranspose: input elements x (C_out / group) x kernel elements.
- Attention ops: projections (com.microsoft Attention), Q·Kᵀ and P·V as MACs, plus softmax, scale and mask.
- Composite ops count the primitives of their usual decomposition, so fusing a pattern never changes the
  total: Softmax 5 per element, LayerNormalization 7, RMS norm 4, erf-GELU 5, tanh-GELU 8, ...
- Elementwise ops (arithmetic, activations, comparisons, transcendental functions): 1 per output element;
  reductions: 1 per input element; pooling: kernel elements per output.
- Data movement and shape ops (Reshape, Transpose, Gather, Concat, Cast, ...): 0.
- Ops we have no formula for, or whose shapes could not be inferred, count 0 and are listed in
  `unestimated` (op type -> number of nodes) so a total is never silently incomplete.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from edgeopt.analyze.census import dtype_bits, op_key
from edgeopt.artifact import node_name

Shape = tuple[int, ...]

# Named dynamic dims that mean batch or sequence length (lower-cased substrings).
_BATCH_NAMES = ("batch",)
_SEQ_NAMES = ("seq", "sequence", "token", "length", "len")

# Per-element cost of elementwise and composite ops (FLOPs per output element).
ELEMENTWISE: dict[str, float] = {
    **{op: 1 for op in (
        "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Exp", "Log", "Erf", "Tanh", "Sigmoid", "Relu", "LeakyRelu",
        "PRelu", "Elu", "Selu", "Celu", "ThresholdedRelu", "HardSigmoid", "HardSwish", "Softplus", "Softsign",
        "Clip", "Abs", "Neg", "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Min", "Max", "Sum", "Mean",
        "Mod", "Sin", "Cos", "Tan", "Asin", "Acos", "Atan", "Sinh", "Cosh", "Asinh", "Acosh", "Atanh", "Equal",
        "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "And", "Or", "Xor", "Not", "Where", "IsNaN",
        "IsInf", "BitShift", "BitwiseAnd", "BitwiseOr", "BitwiseXor", "BitwiseNot", "Shrink", "Mish",
        "Resize", "Upsample", "Trilu", "BiasAdd",
    )},
    "Swish": 2, "QuickGelu": 3, "BiasSoftmax": 6, "Softmax": 5, "LogSoftmax": 6, "Hardmax": 2,
    "Gelu": 5, "BiasGelu": 6, "FastGelu": 8, "GeluGrad": 8,
    "BatchNormalization": 2, "LayerNormalization": 7, "InstanceNormalization": 7, "GroupNormalization": 7,
    "GroupNorm": 7, "MeanVarianceNormalization": 5, "LpNormalization": 3, "SimplifiedLayerNormalization": 4,
    "RMSNormalization": 4, "SkipLayerNormalization": 8, "SkipSimplifiedLayerNormalization": 5,
    "EmbedLayerNormalization": 9, "QuantizeLinear": 3, "DequantizeLinear": 2, "DynamicQuantizeLinear": 4,
    "RotaryEmbedding": 3,
}
# Reductions: FLOPs per input element.
REDUCTIONS: dict[str, float] = {
    "ReduceMean": 1, "ReduceSum": 1, "ReduceMax": 1, "ReduceMin": 1, "ReduceProd": 1, "ReduceL1": 2,
    "ReduceL2": 2, "ReduceSumSquare": 2, "ReduceLogSum": 1, "ReduceLogSumExp": 3, "ArgMax": 1, "ArgMin": 1,
    "CumSum": 1, "TopK": 1, "GlobalAveragePool": 1, "GlobalMaxPool": 1, "GlobalLpPool": 2,
}
# Ops that only move, reshape or describe data.
ZERO_COST = frozenset((
    "Reshape", "Transpose", "Gather", "GatherElements", "GatherND", "Scatter", "ScatterElements", "ScatterND",
    "Concat", "Split", "SplitToSequence", "Slice", "Squeeze", "Unsqueeze", "Flatten", "Expand", "Tile", "Pad",
    "Identity", "Dropout", "Shape", "Size", "Constant", "ConstantOfShape", "Cast", "CastLike", "Range",
    "NonZero", "OneHot", "DepthToSpace", "SpaceToDepth", "EyeLike", "Compress", "ReverseSequence", "Unique",
    "SequenceAt", "SequenceConstruct", "SequenceEmpty", "SequenceInsert", "SequenceLength", "ConcatFromSequence",
    "NonMaxSuppression", "CenterCropPad", "Col2Im", "GatherBlockQuantized", "Optional", "OptionalGetElement",
    "OptionalHasElement", "MemcpyFromHost", "MemcpyToHost", "TransposeMatMul",
))
MATMUL_OPS = frozenset(("MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul", "MatMulIntegerToFloat",
                        "DynamicQuantizeMatMul", "MatMulNBits", "MatMulBnb4", "MatMulFpQ4", "QGemm", "Gemm",
                        "QuantizeBFP", "TransposeMatMul"))
CONV_OPS = frozenset(("Conv", "ConvInteger", "QLinearConv", "FusedConv", "NhwcConv", "NhwcFusedConv",
                      "QLinearConvTranspose", "ConvTranspose", "DeformConv"))


def _prod(xs) -> int:
    return int(math.prod(int(x) for x in xs))


def _attr(node: Any, name: str, default: Any = None) -> Any:
    import onnx

    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


# --------------------------------------------------------------------------------------------------- shapes
def dynamic_input_dims(model: Any):
    """Yield (key, axis, dim proto) for every dynamic dim of the graph inputs (initializers excluded); the key
    is the dim's name, or INPUT_dimAXIS when it has none."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        for i, d in enumerate(inp.type.tensor_type.shape.dim):
            if not (d.HasField("dim_value") and d.dim_value > 0):
                yield d.dim_param or f"{inp.name}_dim{i}", i, d


def dim_bindings(model: Any, batch: int = 1, seq_len: int = 128, dims: dict[str, int] | None = None
                 ) -> dict[str, int]:
    """The value each named dynamic input dim gets: `dims` first, then batch-like or sequence-like names,
    then by position (first axis = batch, any other = seq_len)."""
    out: dict[str, int] = {}
    for key, i, _ in dynamic_input_dims(model):
        if key in out:
            continue
        low = key.lower()
        if dims and key in dims:
            out[key] = int(dims[key])
        elif any(s in low for s in _BATCH_NAMES):
            out[key] = int(batch)
        elif any(s in low for s in _SEQ_NAMES):
            out[key] = int(seq_len)
        else:
            out[key] = int(batch) if i == 0 else int(seq_len)
    return out


def bind_dims(model: Any, bindings: dict[str, int]) -> Any:
    """A copy of `model` with its graph inputs' dynamic dims fixed and stale shape annotations removed."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    for key, _, d in list(dynamic_input_dims(m)):
        if key in bindings:
            d.Clear()
            d.dim_value = int(bindings[key])
    # Exporters annotate intermediates and outputs with symbolic dims ("batch", "unk__0"): they would stop
    # inference from filling in the concrete ones.
    del m.graph.value_info[:]
    for out in m.graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    return m


def infer_shapes(model: Any) -> tuple[Any, str, list[str]]:
    """(model with value_info, method, warnings): ONNX Runtime's symbolic shape inference, which follows
    shape arithmetic (Shape→Gather→Concat→Reshape, Range, Slice) and com.microsoft ops, or ONNX's own
    inference with data propagation when that fails."""
    import onnx

    warnings: list[str] = []
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        for name in ("onnxruntime.tools.symbolic_shape_infer", "onnxruntime"):
            logging.getLogger(name).setLevel(logging.ERROR)
        import contextlib
        import tempfile

        # on incomplete inference it saves "sym_shape_infer_temp.onnx" into the working folder: keep that out
        with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):
            out = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False, verbose=0)
        if out is not None:
            return out, "onnxruntime-symbolic", warnings
    except Exception as e:  # incomplete inference or an op it does not know
        warnings.append(f"symbolic shape inference failed ({(str(e).splitlines() or [type(e).__name__])[0][:120]}); "
                        "used ONNX shape inference")
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=False, strict_mode=False, data_prop=True), \
            "onnx", warnings
    except Exception as e:
        warnings.append(f"ONNX shape inference failed ({type(e).__name__}); shapes unknown")
        return model, "none", warnings


def collect_shapes(model: Any) -> dict[str, tuple[tuple[int | None, ...] | None, int]]:
    """Tensor name -> (shape with None for unknown dims, or None if the rank is unknown; ONNX element type)."""
    out: dict[str, tuple[tuple[int | None, ...] | None, int]] = {}
    g = model.graph
    for v in [*g.input, *g.value_info, *g.output]:
        if not v.type.HasField("tensor_type"):
            continue
        t = v.type.tensor_type
        shape = None
        if t.HasField("shape"):
            shape = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim)
        prev = out.get(v.name)
        if prev is None or (prev[0] is None and shape is not None) or (
                shape is not None and sum(x is None for x in shape) < sum(x is None for x in prev[0] or ())):
            out[v.name] = (shape, t.elem_type or (prev[1] if prev else 0))
    for init in g.initializer:
        out[init.name] = (tuple(int(d) for d in init.dims), init.data_type)
    for node in g.node:
        if node.op_type == "Constant" and node.output:
            for a in node.attribute:
                if a.name == "value" and a.HasField("t"):
                    out[node.output[0]] = (tuple(int(d) for d in a.t.dims), a.t.data_type)
    return out


def _known(shape) -> bool:
    return shape is not None and all(d is not None for d in shape)


# ---------------------------------------------------------------------------------------------------- costs
def node_cost(node: Any, shapes: dict[str, tuple[Any, int]]) -> tuple[int, int] | str:
    """(MACs, FLOPs) of one node from the shapes around it, or a string saying why it has no estimate."""
    op = node.op_type

    def shp(i: int, outputs: bool = False):
        names = node.output if outputs else node.input
        if i >= len(names) or not names[i]:
            return None
        s = shapes.get(names[i], (None, 0))[0]
        return s if _known(s) else None

    def has(i: int) -> bool:
        return i < len(node.input) and bool(node.input[i])

    out = shp(0, outputs=True)
    if op in ZERO_COST:
        return 0, 0
    if op == "Einsum":
        return _einsum_cost(node, [shp(i) for i in range(len(node.input))])
    if op in ("LSTM", "GRU", "RNN"):
        return _rnn_cost(node, shp(0), shp(1))
    if op in MATMUL_OPS:
        return _matmul_cost(node, shp, has, out)
    if op in CONV_OPS:
        return _conv_cost(node, shp, has, out)
    if op in ("Attention", "MultiHeadAttention", "GroupQueryAttention", "PackedAttention",
              "PackedMultiHeadAttention", "SparseAttention", "QAttention", "DecoderMaskedMultiHeadAttention"):
        return _attention_cost(node, shp)
    if op in ("MaxPool", "AveragePool", "LpPool", "QLinearAveragePool", "MaxRoiPool"):
        kernel = _attr(node, "kernel_shape")
        if out is None or not kernel:
            return "shape unknown"
        flops = _prod(out) * _prod(kernel)
        return 0, flops
    if op in REDUCTIONS or op.startswith("QLinearGlobal"):
        x = shp(0)
        if x is None:
            return "shape unknown"
        return 0, int(_prod(x) * REDUCTIONS.get(op, 1))
    if op in ELEMENTWISE or op.startswith("QLinear"):
        if out is None:
            return "shape unknown"
        per = ELEMENTWISE.get(op, ELEMENTWISE.get(op[len("QLinear"):], 1) + 2)  # QLinearAdd: op + requantize
        if op == "Gelu" and _attr(node, "approximate", b"none") in (b"tanh", "tanh"):
            per = 8
        if op in ("SkipLayerNormalization", "FastGelu") and has(4 if op == "SkipLayerNormalization" else 1):
            per += 1  # its bias input
        return 0, int(_prod(out) * per)
    return "no formula"


def _matmul_cost(node, shp, has, out):
    op = node.op_type
    if out is None:
        return "shape unknown"
    a = shp(0)
    if op == "Gemm" or op == "QGemm":
        b_idx = 3 if op == "QGemm" else 1
        a = shp(0)
        b = shp(b_idx)
        if a is not None and len(a) == 2:
            k = a[0] if _attr(node, "transA", 0) else a[1]
        elif b is not None and len(b) == 2:
            k = b[1] if _attr(node, "transB", 0) else b[0]
        else:
            return "shape unknown"
        macs = _prod(out) * k
        bias = _prod(out) if has(6 if op == "QGemm" else 2) else 0
        return macs, 2 * macs + bias
    if op in ("MatMulNBits", "MatMulBnb4", "MatMulFpQ4"):
        k = _attr(node, "K")
        if k is None:
            if a is None:
                return "shape unknown"
            k = a[-1]
        macs = _prod(out) * int(k)
        return macs, 2 * macs + (_prod(out) if op == "MatMulNBits" and has(5) else 0)
    if a is None:
        return "shape unknown"
    if op == "FusedMatMul" and _attr(node, "transA", 0) and len(a) >= 2:
        k = a[-2]
    else:
        k = a[-1]
    macs = _prod(out) * int(k)
    bias = _prod(out) if op == "MatMulIntegerToFloat" and has(6) else 0
    return macs, 2 * macs + bias


def _conv_cost(node, shp, has, out):
    op = node.op_type
    if out is None:
        return "shape unknown"
    w_idx = 3 if op in ("QLinearConv", "QLinearConvTranspose") else 1
    bias_idx = 8 if op in ("QLinearConv", "QLinearConvTranspose") else 2
    w = shp(w_idx)
    if w is None or len(w) < 3:
        return "shape unknown"
    if op in ("ConvTranspose", "QLinearConvTranspose"):
        x = shp(0)
        if x is None:
            return "shape unknown"
        macs = _prod(x) * _prod(w[1:])  # every input element scatters into (C_out/group) x kernel outputs
    else:
        macs = _prod(out) * _prod(w[1:])  # w: (C_out, C_in/group, k...) so groups and depthwise fall out
    bias = _prod(out) if has(bias_idx) else 0
    act = _prod(out) if op in ("FusedConv", "NhwcFusedConv") and _attr(node, "activation") else 0
    return macs, 2 * macs + bias + act


def _attention_cost(node, shp):
    """Attention ops: Q·Kᵀ and P·V MACs (+ input projections for com.microsoft Attention), softmax, scale."""
    op = node.op_type
    q = shp(0)
    out = shp(0, outputs=True)
    if q is None or out is None:
        return "shape unknown"
    heads = int(_attr(node, "num_heads", 0) or _attr(node, "q_num_heads", 0) or 1)
    present = shp(1, outputs=True)  # present key (B, heads, L, head_size) gives the attended length
    if op in ("Attention", "QAttention") and node.domain == "com.microsoft":
        w = shp(1)
        if w is None or len(q) != 3:
            return "shape unknown"
        b, s, h_in = q
        sizes = _attr(node, "qkv_hidden_sizes")
        qh, kh, vh = (list(sizes) if sizes else [w[1] // 3] * 3)
        past = shp(4)
        length = s + (past[3] if past is not None and len(past) == 5 else 0)
        proj = b * s * h_in * w[1]
        qk = b * s * length * qh
        pv = b * s * length * vh
        scores = b * heads * s * length
        macs = proj + qk + pv
        return macs, 2 * macs + b * s * w[1] + 7 * scores  # bias, then scale + mask + softmax(5) per score
    k = shp(1)
    if present is not None and len(present) == 4:
        length = present[2]
    elif k is not None and len(k) == 4:
        length = k[2]
    elif k is not None and len(k) == 3:
        length = k[1]
    elif op == "MultiHeadAttention" and k is None and len(q) == 5:
        length = q[1]  # packed QKV (B, S, heads, 3, head_size)
    else:
        return "shape unknown"
    if len(q) == 4:  # (B, heads, S, head_size)
        rows = _prod(q[:-1])
        q_elems = _prod(q)
    elif len(q) == 5:  # packed (B, S, heads, 3, head_size)
        rows = _prod(q[:3])
        q_elems = _prod(q) // 3
    else:  # (B, S, hidden)
        rows = q[0] * q[1] * heads
        q_elems = _prod(q)
    if op == "GroupQueryAttention":
        q_elems = _prod(out)  # packed QKV inputs; the output has the query's width
    qk = q_elems * length
    pv = _prod(out) * length
    scores = rows * length
    macs = qk + pv
    return macs, 2 * macs + 7 * scores


def _einsum_cost(node, ins):
    eq = _attr(node, "equation")
    if isinstance(eq, bytes):
        eq = eq.decode()
    if not eq or any(s is None for s in ins) or "..." in eq:
        return "shape unknown" if eq else "no equation"
    lhs = eq.replace(" ", "").split("->")[0].split(",")
    sizes: dict[str, int] = {}
    for term, s in zip(lhs, ins):
        if len(term) != len(s):
            return "shape unknown"
        for c, d in zip(term, s):
            sizes[c] = max(sizes.get(c, 1), int(d))
    macs = _prod(sizes.values()) if len(lhs) > 1 else 0
    flops = 2 * macs if macs else _prod(ins[0])
    return macs, flops


def _rnn_cost(node, x, w):
    if x is None or w is None:
        return "shape unknown"
    seq, batch, inp = x  # layout 0: (seq, batch, input)
    if _attr(node, "layout", 0) == 1:
        batch, seq = seq, batch
    gates = {"LSTM": 4, "GRU": 3}.get(node.op_type, 1)
    dirs, gates_h, _ = w  # W: (directions, gates x hidden, input)
    hidden = int(_attr(node, "hidden_size", 0) or gates_h // gates)
    macs = dirs * seq * batch * gates * hidden * (inp + hidden)
    pointwise = dirs * seq * batch * hidden * {"LSTM": 10, "GRU": 9}.get(node.op_type, 2)
    return macs, 2 * macs + pointwise


# ---------------------------------------------------------------------------------------------- the counts
def topo_order(graph: Any) -> list[int]:
    """Node indices in a topological order (the file's order wherever it is already valid)."""
    produced = {}
    for i, n in enumerate(graph.node):
        for o in n.output:
            if o:
                produced[o] = i
    deps = [set() for _ in graph.node]
    users: list[list[int]] = [[] for _ in graph.node]
    for i, n in enumerate(graph.node):
        for name in _node_inputs(n):
            j = produced.get(name)
            if j is not None and j != i and j not in deps[i]:
                deps[i].add(j)
                users[j].append(i)
    import heapq

    remaining = [len(d) for d in deps]
    ready = [i for i, r in enumerate(remaining) if r == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(i)
        for u in users[i]:
            remaining[u] -= 1
            if remaining[u] == 0:
                heapq.heappush(ready, u)
    if len(order) < len(graph.node):  # a cycle: keep the rest in file order
        seen = set(order)
        order += [i for i in range(len(graph.node)) if i not in seen]
    return order


def _node_inputs(node: Any) -> list[str]:
    """A node's inputs, plus the outer-scope names its subgraphs read (If/Loop/Scan bodies)."""
    import onnx

    names = [x for x in node.input if x]
    for a in node.attribute:
        graphs = {onnx.AttributeProto.GRAPH: [a.g], onnx.AttributeProto.GRAPHS: list(a.graphs)}.get(a.type, [])
        for g in graphs:
            local = {i.name for i in g.input} | {i.name for i in g.initializer} | {o for n in g.node for o in n.output}
            for n in g.node:
                names += [x for x in _node_inputs(n) if x and x not in local]
    return names


def count_flops(model: Any, shapes: dict[str, tuple[Any, int]]) -> dict[str, Any]:
    """FLOPs and MACs of every node of a model whose shapes were inferred (see `prepare`).

    Returns `{"total", "macs", "by_op_type": {op: {"count", "flops", "macs", "share"}}, "nodes": [{"name",
    "op_type", "macs", "flops", "output_shapes"}], "unestimated": {op: nodes}}`; node entries are in
    topological order, and output shapes are lists with None for unknown dims (None for unknown rank).
    """
    nodes = []
    unestimated: dict[str, int] = {}
    by_op: dict[str, dict[str, Any]] = {}
    for i in topo_order(model.graph):
        node = model.graph.node[i]
        key = op_key(node)
        cost = node_cost(node, shapes)
        if isinstance(cost, str):
            unestimated[key] = unestimated.get(key, 0) + 1
            macs, flops = 0, 0
        else:
            macs, flops = int(cost[0]), int(cost[1])
        out_shapes = []
        for o in node.output:
            s = shapes.get(o, (None, 0))[0] if o else None
            out_shapes.append(list(s) if s is not None else None)
        rec = {"name": node_name(node, i), "op_type": key, "macs": macs, "flops": flops,
               "output_shapes": out_shapes}
        if isinstance(cost, str):
            rec["unestimated"] = cost
        nodes.append(rec)
        row = by_op.setdefault(key, {"count": 0, "flops": 0, "macs": 0})
        row["count"] += 1
        row["flops"] += flops
        row["macs"] += macs
    total = sum(n["flops"] for n in nodes)
    for row in by_op.values():
        row["share"] = row["flops"] / total if total else 0.0
    return {
        "total": int(total),
        "macs": int(sum(n["macs"] for n in nodes)),
        "by_op_type": dict(sorted(by_op.items(), key=lambda kv: (-kv[1]["flops"], kv[0]))),
        "nodes": nodes,
        "unestimated": dict(sorted(unestimated.items())),
    }


def _nbytes(shape, elem_type) -> int | None:
    if not _known(shape):
        return None
    bits = dtype_bits(elem_type)
    return (_prod(shape) * bits + 7) // 8 if bits else None


def activation_memory(model: Any, shapes: dict[str, tuple[Any, int]]) -> dict[str, Any]:
    """Activation memory of one inference, walking nodes in topological order.

    Activations are the graph inputs and every tensor a node produces, except Constant nodes' values (those
    are weights). A tensor is allocated when its node runs and freed after its last consumer has run; graph
    outputs stay to the end; a node's inputs and outputs are live together while it runs. Returns
    `{"activation_peak_bytes", "activation_peak_node", "activation_total_bytes", "input_bytes",
    "output_bytes", "largest_tensor": {"name", "bytes"}, "unknown_tensors"}` (tensors of unknown size count 0).
    """
    g = model.graph
    order = topo_order(g)
    inits = {i.name for i in g.initializer}
    consts = {n.output[0] for n in g.node if n.op_type == "Constant" and n.output}
    graph_outputs = {o.name for o in g.output}
    last_use: dict[str, int] = {}
    for step, i in enumerate(order):
        for name in _node_inputs(g.node[i]):
            last_use[name] = step
    unknown = 0

    def size(name: str) -> int:
        nonlocal unknown
        shape, et = shapes.get(name, (None, 0))
        b = _nbytes(shape, et)
        if b is None:
            unknown += 1
            return 0
        return b

    live: dict[str, int] = {}
    inputs = [v.name for v in g.input if v.name not in inits]
    input_bytes = 0
    for name in inputs:
        live[name] = size(name)
        input_bytes += live[name]
    current = sum(live.values())
    peak, peak_node = current, None
    total = input_bytes
    largest = max(((n, b) for n, b in live.items()), key=lambda x: x[1], default=(None, 0))
    for step, i in enumerate(order):
        node = g.node[i]
        produced = [o for o in node.output if o and o not in consts]
        for o in produced:
            b = size(o)
            live[o] = b
            current += b
            total += b
            if b > largest[1]:
                largest = (o, b)
        if current > peak:
            peak, peak_node = current, node_name(node, i)
        for name in set(_node_inputs(node)) | set(produced):
            if name in live and name not in graph_outputs and last_use.get(name, -1) <= step:
                current -= live.pop(name)
    output_bytes = sum(size(o) for o in graph_outputs if o in shapes)
    return {
        "activation_peak_bytes": int(peak),
        "activation_peak_node": peak_node,
        "activation_total_bytes": int(total),
        "input_bytes": int(input_bytes),
        "output_bytes": int(output_bytes),
        "largest_tensor": {"name": largest[0], "bytes": int(largest[1])},
        "unknown_tensors": int(unknown),
    }


def prepare(model: Any, batch: int = 1, seq_len: int = 128, dims: dict[str, int] | None = None
            ) -> dict[str, Any]:
    """Bind dynamic dims and infer shapes once for FLOPs and memory.

    Returns `{"model": inferred ModelProto, "shapes": {tensor: (shape, elem_type)}, "dims": bindings,
    "method": which shape inference ran, "warnings": [...]}`.
    """
    bindings = dim_bindings(model, batch, seq_len, dims)
    bound = bind_dims(model, bindings)
    inferred, method, warnings = infer_shapes(bound)
    return {"model": inferred, "shapes": collect_shapes(inferred), "dims": bindings, "method": method,
            "warnings": warnings}


def total_flops(model: Any, batch: int = 1, seq_len: int = 128, dims: dict[str, int] | None = None) -> int:
    """Total FLOPs of an ONNX model (a path or a ModelProto) at the given batch and sequence length."""
    if not hasattr(model, "graph"):
        import onnx

        model = onnx.load(str(model), load_external_data=False)
    p = prepare(model, batch, seq_len, dims)
    return count_flops(p["model"], p["shapes"])["total"]
