"""What an ONNX graph leaves on the table: fusable patterns, int8-ready FLOPs, and the passes to run, in order.

What graph.fuse rewrites itself is found by running its own rule sets (`edgeopt.passes.graph.rules`) on a
copy of the model and recording each match, so analysis reports exactly what the pass would do. Patterns
no rule set covers keep a matcher: the ones ONNX Runtime fuses (attention and Conv + activation, shared
with the graph passes from `edgeopt.analyze.patterns`; skip-LayerNorm, RMS norm and MatMul + bias, which
its transformer optimizer or its session fuses) and what graph.simplify removes (Identity/Dropout,
constant-foldable nodes).
"""

from __future__ import annotations

import re
from typing import Any

from edgeopt.analyze.census import op_key
from edgeopt.analyze.patterns import CONV_ACTIVATIONS, GraphIndex, find_attention, find_conv_activations
from edgeopt.artifact import node_name
from edgeopt.passes.graph.rules import RULE_SETS, RuleMatch, match_rule_sets, summarize

FUSE = "graph.fuse"
SIMPLIFY = "graph.simplify"
RUNTIME = "onnxruntime session"  # fused by ONNX Runtime when it builds a session: no pass needed
PASS_FOR = {"identity": SIMPLIFY, "constant_foldable": SIMPLIFY, "conv_activation": RUNTIME}

# Ops ONNX Runtime runs in int8 once quantized (dynamic or static), as census keys. LSTM: dynamic only
# (DynamicQuantizeLSTM); GRU and RNN have no quantized kernel in ONNX Runtime and stay float.
QUANTIZABLE_OPS = frozenset(("MatMul", "Gemm", "Conv", "ConvTranspose", "LSTM", "Einsum",
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
                       "Resize", "Einsum", "CumSum", "TopK", "GRU", "RNN")

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


# ------------------------------------------------------------------------------- graph.fuse's rule sets
def rule_matches(model: Any) -> list[RuleMatch]:
    """Every rewrite graph.fuse's rule sets make on `model` (all sets, in the pass's order), found on a copy."""
    return match_rule_sets(model, list(RULE_SETS))[1]


def _outermost(matches: list[RuleMatch]) -> list[RuleMatch]:
    """One match per fused instance: a rewrite that a later one of the same set extended (a LayerNorm, then
    its bias) is folded into that later one."""
    return [m for i, m in enumerate(matches)
            if not any(o.rule_set == m.rule_set and set(m.nodes) <= set(o.nodes) for o in matches[i + 1:])]


def _rule_chains(g: GraphIndex, matches: list[RuleMatch]) -> dict[str, list[list[str]]]:
    """The rule-set matches under analysis's pattern names, each match as the node names it covers."""
    chains: dict[str, list[list[str]]] = {"layernorm_decomposed": [], "gelu_erf": [], "gelu_tanh": [],
                                          "matmul_add": [], "conv_bn": []}
    for m in _outermost(matches):
        nodes = list(m.nodes)
        if m.rule_set == "layernorm":
            chains["layernorm_decomposed"].append(nodes)
        elif m.rule_set == "gelu":
            tanh = any(i is not None and g.op(i) == "Tanh" for i in map(g.position.get, nodes))
            chains["gelu_tanh" if tanh else "gelu_erf"].append(nodes)
        elif m.rule_set == "conv_bn":  # and the activation ONNX Runtime then fuses into the folded Conv
            last = g.position.get(nodes[-1])
            act = g.only_user(last, CONV_ACTIVATIONS) if last is not None else None
            chains["conv_bn"].append(nodes + ([g.names[act]] if act is not None else []))
        elif m.rule_set in chains:
            chains[m.rule_set].append(nodes)
    return chains


def find_opportunities(model: Any, matches: list[RuleMatch] | None = None) -> list[dict[str, Any]]:
    """What graph.fuse would fuse in `model` (an onnx.ModelProto, left unchanged), per rule set.

    One dict per pattern kind found: `rule` (rule-set name, or "attention" / "conv_activation"), `count`
    (rewrites), `nodes` (names of the nodes the fusion would replace, one flat list), `handled_by` (the
    pass, or the runtime), `detail`. `matches` are `rule_matches(model)`, when already computed.
    """
    counts, replaced = summarize(model, rule_matches(model) if matches is None else matches)
    attention = find_attention(model)
    conv_act = find_conv_activations(model)
    rows = [("attention", len(attention), [x for b in attention for x in b], FUSE,
             "MatMul-scale-mask-Softmax-MatMul -> com.microsoft Attention, by ONNX Runtime's transformer optimizer "
             "(ort_transformer; needs the model family)")]
    rows += [(name, counts.get(name, 0), replaced.get(name, []), FUSE, RULE_SETS[name][1]) for name in RULE_SETS]
    rows.append(("conv_activation", len(conv_act), [x for p in conv_act for x in p], RUNTIME,
                 "Conv + activation -> FusedConv, done by ONNX Runtime when it builds a session (graph optimization "
                 "level extended or higher); no graph rewrite needed"))
    return [{"rule": rule, "count": count, "nodes": nodes, "handled_by": by, "detail": detail}
            for rule, count, nodes, by, detail in rows if count]


# ------------------------------------------------------------------ matchers for what no rule set covers
def _match_rmsnorm(g: GraphIndex) -> list[list[int]]:
    """RMS norm written out (Pow or x·x, ReduceMean, + eps, Sqrt, Div or Reciprocal·, optional scale): ONNX
    Runtime fuses it into SimplifiedLayerNormalization (at session creation, and in its transformer optimizer)."""
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


def _match_skip_layernorm(g: GraphIndex, ln_chains: list[list[str]]) -> list[list[int]]:
    """A residual Add (two variable inputs) feeding a LayerNormalization or a decomposed one (given as the
    node names of each match of the "layernorm" rule set): ONNX Runtime's SkipLayerNormalization fusion."""
    targets = [i for i, n in enumerate(g.nodes) if n.op_type == "LayerNormalization"]
    targets += [g.position[c[0]] for c in ln_chains if c[0] in g.position and g.position[c[0]] not in targets]
    found = []
    for ln in targets:
        a = g.prod(g.nodes[ln].input[0])
        if a is None or g.op(a) != "Add":
            continue
        ins = [y for y in g.nodes[a].input if y]
        if len(ins) == 2 and not any(g.is_const(y) for y in ins):
            found.append([a, ln])
    return found


def _match_matmul_add(g: GraphIndex) -> list[list[int]]:
    """MatMul by a constant weight, then + a constant bias, at any rank: the rule set "matmul_add" rewrites
    the 2-D ones to Gemm; ONNX Runtime folds the others into its fused kernels (Attention, BiasGelu,
    SkipLayerNormalization) or its session's MatMul + Add fusion."""
    found = []
    for m, n in enumerate(g.nodes):
        if n.op_type != "MatMul" or len(n.input) < 2 or not g.is_const(n.input[1]):
            continue
        add = g.only_user(m, "Add")
        if add is not None and g.const_and_var(add)[0] is not None:
            found.append([m, add])
    return found


def _match_identity(g: GraphIndex) -> list[list[int]]:
    return [[i] for i, n in enumerate(g.nodes) if n.op_type in ("Identity", "Dropout")]


def _match_constant_foldable(g: GraphIndex) -> list[list[int]]:
    return [[i] for i in g.folds if g.op(i) not in ("Identity", "Dropout")]


def find_patterns(model: Any, matches: list[RuleMatch] | None = None) -> list[dict[str, Any]]:
    """Every fusable / removable pattern, by analysis's names: `[{"rule", "count", "nodes": [[node names per
    match]], "pass", "description", "source": "analyze"}]`, only rules that matched, in a fixed order.

    `matches` are `rule_matches(model)`, when already computed.
    """
    g = GraphIndex(model)
    ruled = _rule_chains(g, rule_matches(model) if matches is None else matches)

    def names(chains: list[list[int]]) -> list[list[str]]:
        return [[g.names[i] for i in chain] for chain in chains]

    covered = {x for chains in ruled.values() for chain in chains for x in chain}
    matmul_add = ruled["matmul_add"] + [c for c in names(_match_matmul_add(g)) if not covered.intersection(c)]
    in_bn = {x for chain in ruled["conv_bn"] for x in chain}
    matches_by_rule = {
        "attention": find_attention(g),
        "layernorm_decomposed": ruled["layernorm_decomposed"],
        "rmsnorm_decomposed": names(_match_rmsnorm(g)),
        "skip_layernorm": names(_match_skip_layernorm(g, ruled["layernorm_decomposed"])),
        "gelu_erf": ruled["gelu_erf"],
        "gelu_tanh": ruled["gelu_tanh"],
        "matmul_add": sorted(matmul_add, key=lambda c: g.position.get(c[0], len(g.nodes))),
        "conv_bn": ruled["conv_bn"],
        "conv_activation": [c for c in find_conv_activations(g) if c[0] not in in_bn],
        "identity": names(_match_identity(g)),
        "constant_foldable": names(_match_constant_foldable(g)),
    }
    return [{"rule": rule, "count": len(chains), "nodes": chains, "pass": PASS_FOR.get(rule, FUSE),
             "description": DESCRIPTIONS[rule], "source": "analyze"}
            for rule, chains in matches_by_rule.items() if chains]


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


def fusion_opportunities(model: Any, node_flops: dict[str, int] | None = None
                         ) -> tuple[list[dict[str, Any]], list[str]]:
    """Every fusable / removable pattern (graph.fuse's rule-set findings merged with analysis's names), with
    the FLOPs of the nodes each covers when `node_flops` (node name -> FLOPs) is given. Returns (findings,
    warnings)."""
    warnings: list[str] = []
    try:
        matches = rule_matches(model)
    except Exception as e:
        matches = []
        warnings.append(f"graph.fuse's rule sets failed on this model ({type(e).__name__}: {str(e)[:120]}); "
                        "what they fuse is not reported")
    try:
        theirs = list(find_opportunities(model, matches) or [])
    except Exception as e:
        theirs = []
        warnings.append(f"graph.fuse find_opportunities failed ({type(e).__name__}: {str(e)[:120]}); "
                        "own matchers used")
    merged = merge_findings(find_patterns(model, matches), theirs)
    if node_flops is not None:
        for f in merged:
            covered = set().union(*_instances(f.get("nodes") or [])) if f.get("nodes") else set()
            f["flops"] = int(sum(node_flops.get(n, 0) for n in covered))
    return merged, warnings


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
