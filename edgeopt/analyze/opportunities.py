"""What an ONNX graph leaves on the table: fusable patterns, int8-ready FLOPs, and the passes to run, in order.

The pattern matchers here are our own (plain walks over producer/consumer maps), so the analysis is
complete without any pass installed; when `edgeopt.passes.graph.fuse.find_opportunities` exists its
findings are merged in (its rules win where both see the same thing).
"""

from __future__ import annotations

import re
from typing import Any, Callable

from edgeopt.analyze.census import op_key
from edgeopt.analyze.flops import node_name

FUSE = "graph.fuse"
SIMPLIFY = "graph.simplify"
RUNTIME = "onnxruntime session"  # fused by ONNX Runtime when it builds a session: no pass needed
PASS_FOR = {"identity": SIMPLIFY, "constant_foldable": SIMPLIFY, "conv_activation": RUNTIME}

# Ops ONNX Runtime runs in int8 once quantized (dynamic or static), as census keys.
QUANTIZABLE_OPS = frozenset(("MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "GRU", "Einsum",
                             "com.microsoft.Attention", "com.microsoft.FusedMatMul", "com.microsoft.FusedConv",
                             "com.microsoft.MultiHeadAttention"))
# Ops that are already integer (a quantized graph).
INT8_OPS = frozenset(("MatMulInteger", "ConvInteger", "QLinearConv", "QLinearMatMul", "com.microsoft.QGemm",
                      "com.microsoft.DynamicQuantizeMatMul", "com.microsoft.MatMulIntegerToFloat",
                      "com.microsoft.QAttention", "com.microsoft.MatMulNBits", "com.microsoft.DynamicQuantizeLSTM",
                      "com.microsoft.QLinearConvTranspose"))
# Float-only ops on ONNX Runtime's CPU provider: quantization leaves them in float (used when the target
# does not say).
DEFAULT_NO_INT8_OPS = ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization",
                       "InstanceNormalization", "GroupNormalization", "Softmax", "LogSoftmax", "Erf", "Gelu",
                       "FastGelu", "BiasGelu", "Tanh", "Exp", "Log", "Pow", "Sqrt", "Div", "ReduceMean",
                       "Resize", "Einsum", "CumSum", "TopK")
ACTIVATIONS = frozenset(("Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "HardSwish"))
_PASSTHROUGH = frozenset(("Dropout", "Identity", "Cast"))
_NONDETERMINISTIC = frozenset(("RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
                               "Multinomial", "Bernoulli"))

DESCRIPTIONS = {
    "attention": "Q·Kᵀ → scale/mask → Softmax → ·V as one fused attention kernel",
    "layernorm_decomposed": "ReduceMean/Sub/Pow/Sqrt/Div chain → one LayerNormalization",
    "rmsnorm_decomposed": "Pow/ReduceMean/Sqrt/Div chain → one SimplifiedLayerNormalization (RMS norm)",
    "gelu_erf": "Div → Erf → Add → Mul → Mul → one Gelu",
    "gelu_tanh": "tanh-approximated GELU chain → one FastGelu",
    "skip_layernorm": "residual Add + LayerNormalization → one SkipLayerNormalization",
    "matmul_add": "MatMul + bias Add → Gemm / bias folded into the next fused kernel",
    "conv_bn": "BatchNormalization folded into the preceding Conv's weights (+ activation fused)",
    "conv_activation": "Conv + activation → one FusedConv (ONNX Runtime does it at session creation)",
    "identity": "Identity / Dropout nodes that do nothing at inference",
    "constant_foldable": "nodes whose inputs are all constants: computed once, ahead of time",
}


class _Graph:
    """Producer/consumer maps of a graph, and the helpers every matcher uses."""

    def __init__(self, model: Any):
        g = model.graph
        self.nodes = list(g.node)
        self.names = [node_name(n, i) for i, n in enumerate(self.nodes)]
        self.inits = {i.name: i for i in g.initializer}
        self.consts = set(self.inits)
        self.folds: list[int] = []  # nodes computing only from constants (constant-foldable)
        for i, n in enumerate(self.nodes):  # file order is topological in a valid model
            if n.op_type == "Constant":
                self.consts.update(o for o in n.output if o)
            elif _foldable(n) and all(x in self.consts for x in n.input if x) and any(n.input):
                self.consts.update(o for o in n.output if o)
                self.folds.append(i)
        self.graph_outputs = {o.name for o in g.output}
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for x in n.input:
                if x:
                    self.consumers.setdefault(x, []).append(i)

    def op(self, i: int) -> str:
        return self.nodes[i].op_type

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def prod(self, name: str) -> int | None:
        return self.producer.get(name)

    def users(self, i: int, k: int = 0) -> list[int]:
        n = self.nodes[i]
        return self.consumers.get(n.output[k], []) if k < len(n.output) else []

    def only_user(self, i: int, op: str | frozenset | tuple | None = None) -> int | None:
        """The single consumer of node i's first output (None if several, none, or a graph output)."""
        n = self.nodes[i]
        if not n.output or n.output[0] in self.graph_outputs:
            return None
        us = self.users(i)
        if len(us) != 1:
            return None
        u = us[0]
        if op is None or self.op(u) == op or (not isinstance(op, str) and self.op(u) in op):
            return u
        return None

    def const_and_var(self, i: int) -> tuple[str | None, str | None]:
        """(constant input, variable input) of a two-input node, or (None, None) if not that shape."""
        ins = [x for x in self.nodes[i].input if x]
        if len(ins) != 2:
            return None, None
        a, b = ins
        if self.is_const(a) and not self.is_const(b):
            return a, b
        if self.is_const(b) and not self.is_const(a):
            return b, a
        return None, None

    def const_value(self, name: str):
        """The numpy value of a constant tensor (None if not a constant or not loaded)."""
        import onnx

        if name in self.inits:
            try:
                return onnx.numpy_helper.to_array(self.inits[name])
            except Exception:  # external data not loaded
                return None
        i = self.producer.get(name)
        if i is not None and self.op(i) == "Identity":
            return self.const_value(self.nodes[i].input[0])
        if i is not None and self.op(i) == "Constant":
            for a in self.nodes[i].attribute:
                if a.name == "value" and a.HasField("t"):
                    return onnx.numpy_helper.to_array(a.t)
        return None


def _scalar_is(g: _Graph, name: str | None, value: float, tol: float = 1e-3) -> bool:
    if name is None:
        return False
    v = g.const_value(name)
    try:
        return v is not None and v.size == 1 and abs(float(v.reshape(-1)[0]) - value) <= tol * max(1, abs(value))
    except (TypeError, ValueError):
        return False


# ----------------------------------------------------------------------------------------------- matchers
def _match_attention(g: _Graph) -> list[list[int]]:
    found = []
    for s, n in enumerate(g.nodes):
        if n.op_type != "Softmax":
            continue
        # downstream: Softmax (→ Dropout/Cast) → MatMul as its first input
        cur, tail = s, []
        pv = None
        for _ in range(3):
            us = g.users(cur)
            mm = [u for u in us if g.op(u) == "MatMul" and g.nodes[u].input[0] == g.nodes[cur].output[0]]
            if mm:
                pv = mm[0]
                break
            nxt = g.only_user(cur, _PASSTHROUGH)
            if nxt is None:
                break
            tail.append(nxt)
            cur = nxt
        if pv is None:
            continue
        # upstream: through scale / mask ops to the Q·Kᵀ MatMul
        head = _find_up(g, s, lambda i: g.op(i) == "MatMul", via=("Add", "Div", "Mul", "Where", "Cast", "Sub"),
                        depth=4)
        if head is None:
            continue
        qk, between = head
        found.append([qk, *between, s, *tail, pv])
    return found


def _find_up(g: _Graph, start: int, want: Callable[[int], bool], via: tuple[str, ...], depth: int
             ) -> tuple[int, list[int]] | None:
    """Walk up from node `start` through ops in `via` (variable inputs only) to a node satisfying `want`:
    (that node, the nodes passed on the way, nearest to it first)."""
    def walk(i: int, d: int, path: list[int]):
        for x in g.nodes[i].input:
            if not x or g.is_const(x):
                continue
            p = g.prod(x)
            if p is None:
                continue
            if want(p):
                return p, list(reversed(path))
            if d > 0 and g.op(p) in via:
                r = walk(p, d - 1, path + [p])
                if r:
                    return r
        return None

    return walk(start, depth, [])


def _match_gelu_erf(g: _Graph) -> list[list[int]]:
    found = []
    for e, n in enumerate(g.nodes):
        if n.op_type != "Erf":
            continue
        pre = g.prod(n.input[0])
        if pre is None or g.op(pre) not in ("Div", "Mul"):
            continue
        c, x = g.const_and_var(pre)
        if x is None:
            continue
        add = g.only_user(e, "Add")
        if add is None or g.const_and_var(add)[0] is None:
            continue
        chain = [pre, e, add]
        muls = [u for u in g.users(add) if g.op(u) == "Mul"]
        if len(muls) != 1:
            continue
        m1 = muls[0]
        other = [y for y in g.nodes[m1].input if y != g.nodes[add].output[0]]
        if not other:
            continue
        if other[0] == x:  # x · (1 + erf) then · 0.5
            m2 = g.only_user(m1, "Mul")
            if m2 is None:
                continue
            chain += [m1, m2]
        else:  # (0.5 · x) · (1 + erf)
            half = g.prod(other[0])
            if half is None or g.op(half) != "Mul" or x not in g.nodes[half].input:
                continue
            chain += [half, m1]
        found.append(chain)
    return found


def _match_gelu_tanh(g: _Graph) -> list[list[int]]:
    found = []
    for t, n in enumerate(g.nodes):
        if n.op_type != "Tanh":
            continue
        up = _find_up(g, t, lambda i: g.op(i) == "Pow", via=("Mul", "Add"), depth=3)
        if up is None:
            continue
        pw, between = up
        if not _scalar_is(g, g.nodes[pw].input[1] if len(g.nodes[pw].input) > 1 else None, 3.0):
            continue
        chain = [pw, *between, t]
        cur = t
        for _ in range(3):  # (1 + tanh) · x · 0.5
            nxt = g.only_user(cur, ("Add", "Mul"))
            if nxt is None:
                break
            chain.append(nxt)
            cur = nxt
        found.append(chain)
    return found


def _match_layernorm(g: _Graph) -> list[list[int]]:
    found = []
    for r1, n in enumerate(g.nodes):
        if n.op_type != "ReduceMean" or not n.input:
            continue
        x = n.input[0]
        subs = [u for u in g.users(r1) if g.op(u) == "Sub" and g.nodes[u].input[0] == x]
        if len(subs) != 1:
            continue
        sub = subs[0]
        d_out = g.nodes[sub].output[0]
        sq = [u for u in g.users(sub) if g.op(u) == "Pow" or (g.op(u) == "Mul" and list(g.nodes[u].input) == [d_out, d_out])]
        if len(sq) != 1:
            continue
        r2 = g.only_user(sq[0], "ReduceMean")
        add = g.only_user(r2, "Add") if r2 is not None else None
        sqrt = g.only_user(add, "Sqrt") if add is not None else None
        if sqrt is None:
            continue
        chain = [r1, sub, sq[0], r2, add, sqrt]
        div = g.only_user(sqrt, ("Div", "Reciprocal"))
        if div is None or (g.op(div) == "Div" and g.nodes[div].input[0] != d_out):
            continue
        chain.append(div)
        if g.op(div) == "Reciprocal":
            mul = g.only_user(div, "Mul")
            if mul is None:
                continue
            chain.append(mul)
            div = mul
        scale = g.only_user(div, "Mul")
        if scale is not None and g.const_and_var(scale)[0] is not None:
            chain.append(scale)
            bias = g.only_user(scale, "Add")
            if bias is not None and g.const_and_var(bias)[0] is not None:
                chain.append(bias)
        found.append(chain)
    return found


def _match_rmsnorm(g: _Graph) -> list[list[int]]:
    found = []
    for r, n in enumerate(g.nodes):
        if n.op_type != "ReduceMean" or not n.input:
            continue
        sq = g.prod(n.input[0])
        if sq is None or g.op(sq) not in ("Pow", "Mul"):
            continue
        x = g.nodes[sq].input[0]
        if g.op(sq) == "Mul" and list(g.nodes[sq].input) != [x, x]:
            continue
        xp = g.prod(x)
        if xp is not None and g.op(xp) == "Sub":  # a LayerNorm's centred input
            continue
        add = g.only_user(r, "Add")
        sqrt = g.only_user(add, "Sqrt") if add is not None else None
        if sqrt is None:
            continue
        chain = [sq, r, add, sqrt]
        nxt = g.only_user(sqrt, ("Div", "Reciprocal"))
        if nxt is None:
            continue
        chain.append(nxt)
        if g.op(nxt) == "Reciprocal":
            nxt = g.only_user(nxt, "Mul")
            if nxt is None:
                continue
            chain.append(nxt)
        if x not in g.nodes[nxt].input:
            continue
        scale = g.only_user(nxt, "Mul")
        if scale is not None and g.const_and_var(scale)[0] is not None:
            chain.append(scale)
        found.append(chain)
    return found


def _match_skip_layernorm(g: _Graph, ln_chains: list[list[int]]) -> list[list[int]]:
    """A residual Add (two variable inputs) feeding a LayerNormalization or a decomposed one."""
    targets = [(i, g.nodes[i].input[0]) for i, n in enumerate(g.nodes) if n.op_type == "LayerNormalization"]
    targets += [(c[0], g.nodes[c[0]].input[0]) for c in ln_chains]
    found = []
    for ln, x in targets:
        a = g.prod(x)
        if a is None or g.op(a) != "Add":
            continue
        ins = [y for y in g.nodes[a].input if y]
        if len(ins) == 2 and not any(g.is_const(y) for y in ins):
            found.append([a, ln])
    return found


def _match_matmul_add(g: _Graph) -> list[list[int]]:
    found = []
    for m, n in enumerate(g.nodes):
        if n.op_type != "MatMul" or len(n.input) < 2 or not g.is_const(n.input[1]):
            continue
        add = g.only_user(m, "Add")
        if add is not None and g.const_and_var(add)[0] is not None:
            found.append([m, add])
    return found


def _match_conv_bn(g: _Graph) -> list[list[int]]:
    found = []
    for c, n in enumerate(g.nodes):
        if n.op_type != "Conv":
            continue
        bn = g.only_user(c, "BatchNormalization")
        if bn is None:
            continue
        chain = [c, bn]
        act = g.only_user(bn, ACTIVATIONS)
        if act is not None:
            chain.append(act)
        found.append(chain)
    return found


def _match_conv_activation(g: _Graph) -> list[list[int]]:
    found = []
    for c, n in enumerate(g.nodes):
        if n.op_type == "Conv":
            act = g.only_user(c, ACTIVATIONS)
            if act is not None:
                found.append([c, act])
    return found


def _match_identity(g: _Graph) -> list[list[int]]:
    return [[i] for i, n in enumerate(g.nodes) if n.op_type in ("Identity", "Dropout")]


def _foldable(n: Any) -> bool:
    """Whether a node could be computed ahead of time if all its inputs are constants."""
    return (n.op_type not in _NONDETERMINISTIC and n.domain in ("", "ai.onnx")
            and not any(a.type in (5, 10) for a in n.attribute))  # no If/Loop/Scan bodies


def _match_constant_foldable(g: _Graph) -> list[list[int]]:
    return [[i] for i in g.folds if g.op(i) not in ("Identity", "Dropout")]


def find_patterns(model: Any) -> list[dict[str, Any]]:
    """Our own pattern matches: `[{"rule", "count", "nodes": [[node names per match]], "pass",
    "description", "source": "analyze"}]`, only rules that matched, in a fixed order."""
    g = _Graph(model)
    ln = _match_layernorm(g)
    matches = {
        "attention": _match_attention(g),
        "layernorm_decomposed": ln,
        "rmsnorm_decomposed": _match_rmsnorm(g),
        "skip_layernorm": _match_skip_layernorm(g, ln),
        "gelu_erf": _match_gelu_erf(g),
        "gelu_tanh": _match_gelu_tanh(g),
        "matmul_add": _match_matmul_add(g),
        "conv_bn": _match_conv_bn(g),
        "conv_activation": [],
        "identity": _match_identity(g),
        "constant_foldable": _match_constant_foldable(g),
    }
    in_bn = {i for chain in matches["conv_bn"] for i in chain}
    matches["conv_activation"] = [c for c in _match_conv_activation(g) if c[0] not in in_bn]
    out = []
    for rule, chains in matches.items():
        if not chains:
            continue
        out.append({
            "rule": rule,
            "count": len(chains),
            "nodes": [[g.names[i] for i in chain] for chain in chains],
            "pass": PASS_FOR.get(rule, FUSE),
            "description": DESCRIPTIONS[rule],
            "source": "analyze",
        })
    return out


def _norm(rule: str) -> str:
    return re.sub(r"[^a-z0-9]", "", str(rule).lower())


def _instances(nodes: Any) -> list[frozenset[str]]:
    """A finding's `nodes` as one set of names per match (a flat list of names is one match each)."""
    if not nodes:
        return []
    if all(isinstance(x, str) for x in nodes):
        return [frozenset([x]) for x in nodes]
    return [frozenset(str(y) for y in x) if isinstance(x, (list, tuple, set, frozenset)) else frozenset([str(x)])
            for x in nodes]


def merge_findings(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """graph.fuse's findings first (the rules that will actually run), then ours that they do not cover.

    A rule of ours is dropped when graph.fuse has a rule of the same name, or one whose nodes contain every
    match of ours. graph.fuse's `handled_by` / `detail` keys are read as `pass` / `description`.
    """
    merged, names, covers = [], set(), []
    for f in theirs:
        if not isinstance(f, dict) or not f.get("rule") or not int(f.get("count") or 0):
            continue
        nodes = f.get("nodes") or []
        rule = str(f["rule"])
        rec = {"rule": rule, "count": int(f["count"]), "nodes": jsonable(nodes),
               "pass": str(f.get("pass") or f.get("handled_by") or FUSE),
               "description": str(f.get("description") or f.get("detail") or DESCRIPTIONS.get(rule, "")),
               "source": FUSE}
        for k, v in f.items():
            rec.setdefault(k, jsonable(v))
        merged.append(rec)
        names.add(_norm(rule))
        covers.append(frozenset().union(*_instances(nodes)) if nodes else frozenset())
    for f in ours:
        mine = _instances(f["nodes"])
        if _norm(f["rule"]) in names or any(mine and all(m <= c for m in mine) for c in covers):
            continue
        merged.append(f)
    return merged


def jsonable(v: Any) -> Any:
    """`v` with tuples as lists, numpy scalars as numbers and anything else unknown as its str (for JSON)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set, frozenset)):
        return [jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if hasattr(v, "item"):
        try:
            return v.item()
        except Exception:
            pass
    return str(v)


def fuse_findings(model: Any) -> tuple[list[dict[str, Any]], str | None]:
    """graph.fuse's own findings, if that module offers `find_opportunities` ([] and a note otherwise)."""
    try:
        from edgeopt.passes.graph.fuse import find_opportunities
    except ImportError:
        return [], None
    try:
        found = find_opportunities(model)
        return list(found or []), None
    except Exception as e:
        return [], f"graph.fuse find_opportunities failed ({type(e).__name__}: {str(e)[:120]}); own matchers used"


def fusion_opportunities(model: Any, node_flops: dict[str, int] | None = None
                         ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every fusable / removable pattern (ours merged with graph.fuse's), with the FLOPs of the nodes each
    covers when `node_flops` (node name -> FLOPs) is given. Returns (findings, warnings)."""
    theirs, warn = fuse_findings(model)
    merged = merge_findings(find_patterns(model), theirs)
    if node_flops is not None:
        for f in merged:
            covered = set().union(*_instances(f.get("nodes") or [])) if f.get("nodes") else set()
            f["flops"] = int(sum(node_flops.get(n, 0) for n in covered))
    return merged, [warn] if warn else []


# ------------------------------------------------------------------------------------------- quantization
def _bare(key: str) -> str:
    return key.rsplit(".", 1)[-1] if key.startswith("com.") else key


def int8_summary(model: Any, flops: dict[str, Any], no_int8_ops: tuple[str, ...] | None = None
                 ) -> dict[str, Any]:
    """How much of the compute int8 can take: FLOP shares of quantizable ops, of ops already integer
    (incl. float ops fed by DequantizeLinear weights, the QDQ form), and of the float-only ops present.

    `no_int8_ops` are op types (domain-free); None uses DEFAULT_NO_INT8_OPS.
    """
    total = flops.get("total") or 0
    g = model.graph
    dq_outputs = {n.output[0] for n in g.node if n.op_type == "DequantizeLinear" and n.output}
    qdq_nodes = {node_name(n, i) for i, n in enumerate(g.node)
                 if op_key(n) in QUANTIZABLE_OPS and len(n.input) > 1 and n.input[1] in dq_outputs}
    quant = int8 = 0
    by_quant: dict[str, int] = {}
    for rec in flops.get("nodes", []):
        key = rec["op_type"]
        if key in INT8_OPS or rec["name"] in qdq_nodes:
            int8 += rec["flops"]
        elif key in QUANTIZABLE_OPS:
            quant += rec["flops"]
            by_quant[key] = by_quant.get(key, 0) + rec["flops"]
    src = "target" if no_int8_ops is not None else "default"
    names = set(no_int8_ops if no_int8_ops is not None else DEFAULT_NO_INT8_OPS)
    rows: dict[str, dict[str, Any]] = {}
    for key, row in flops.get("by_op_type", {}).items():
        if _bare(key) in names or key in names:
            rows[key] = {"op_type": key, "count": row["count"], "flops": row["flops"],
                         "flops_share": row["flops"] / total if total else 0.0}
    no_int8 = sorted(rows.values(), key=lambda r: (-r["flops"], r["op_type"]))
    return {
        "quantizable_flops_share": quant / total if total else 0.0,
        "quantizable_by_op_type": {k: v / total if total else 0.0
                                   for k, v in sorted(by_quant.items(), key=lambda kv: -kv[1])},
        "int8_flops_share": int8 / total if total else 0.0,
        "no_int8_ops": no_int8,
        "no_int8_flops_share": sum(r["flops"] for r in no_int8) / total if total else 0.0,
        "no_int8_source": src,
    }


def suggest_passes(findings: list[dict[str, Any]], quant: dict[str, Any], flops: dict[str, Any],
                   target: dict[str, Any] | None) -> list[dict[str, str]]:
    """The passes worth running, in order, each with the reason: simplify, fuse, then precision."""
    out: list[dict[str, str]] = []
    simplify = [f for f in findings if f.get("pass") == SIMPLIFY]
    if simplify:
        what = ", ".join(f"{f['count']} {f['rule']}" for f in simplify)
        out.append({"pass": SIMPLIFY, "why": f"removes or folds nodes that do no work at run time ({what})"})
    fuse = [f for f in findings if f.get("pass") == FUSE]
    if fuse:
        what = ", ".join(f"{f['count']} {f['rule']}" for f in fuse)
        out.append({"pass": FUSE, "why": f"fusable patterns: {what}"})
    for f in findings:  # other passes named by graph.fuse's findings (not runtimes: "onnxruntime session")
        p = str(f.get("pass") or "")
        if re.fullmatch(r"[a-z0-9_]+\.[a-z0-9_]+", p) and p not in (SIMPLIFY, FUSE) and p not in {x["pass"] for x in out}:
            out.append({"pass": p, "why": f"{f['count']} {f['rule']}"})
    t = target or {}
    tname = str(t.get("name") or "").lower()
    share = quant.get("quantizable_flops_share", 0.0)
    if quant.get("int8_flops_share", 0.0) >= 0.5:
        return out  # already quantized
    device = str(t.get("device") or "").lower()
    if "cuda" in tname or "gpu" in tname or device in ("cuda", "gpu"):
        out.append({"pass": "graph.fp16", "why": "GPU target: half precision halves weights and uses tensor cores"})
        return out
    if share < 0.3:
        return out
    by = quant.get("quantizable_by_op_type", {})
    conv = sum(v for k, v in by.items() if "Conv" in k)
    static = (conv > share / 2 or "qdq" in tname or "npu" in tname or device == "npu"
              or (str(t.get("quant_format") or "").upper() == "QDQ" and conv > 0))
    why = f"{share:.0%} of FLOPs run in int8-capable ops"
    if t.get("has_int8_dot") is False:
        why += " (this target has no int8 dot-product instructions: expect smaller weights more than speed)"
    if static:
        out.append({"pass": "graph.quantize_static", "why": why + "; convolutions want calibrated activation scales"})
    else:
        out.append({"pass": "graph.quantize_dynamic", "why": why + "; MatMul-heavy graphs quantize well dynamically"})
    return out
