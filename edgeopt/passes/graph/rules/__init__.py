"""graph.fuse's rule sets (onnxscript rewriter; each module exports `rules`), applied with a record of each match.

`match_rule_sets` is the one place the rule sets run: graph.fuse rewrites with it, and analysis
(`edgeopt.analyze.opportunities`) runs it on a copy to report which rules would fire and where, so the
two cannot disagree. Of edgeopt it imports only `edgeopt.artifact` (node names), so analysis can read it.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import Any

from edgeopt.artifact import node_name

# rule-set name -> (module exporting `rules`, what it fuses), in the order graph.fuse applies them
RULE_SETS: dict[str, tuple[str, str]] = {
    "layernorm": ("edgeopt.passes.graph.rules.layernorm", "decomposed LayerNorm -> LayerNormalization"),
    "gelu": ("edgeopt.passes.graph.rules.gelu", "Erf/tanh GELU -> com.microsoft Gelu/FastGelu"),
    "conv_bn": ("edgeopt.passes.graph.rules.conv_bn", "BatchNormalization folded into Conv/ConvTranspose/Gemm"),
    "matmul_add": ("edgeopt.passes.graph.rules.matmul_add", "2-D MatMul + Add -> Gemm"),
}


@dataclass(frozen=True)
class RuleMatch:
    """One rewrite: the rule set and rule that made it, and the input model's nodes it replaced (graph order,
    Constants left out; a match over a node an earlier rewrite made counts that rewrite's nodes)."""

    rule_set: str
    rule: str
    nodes: tuple[str, ...]


def load_rules(name: str):
    """The RewriteRuleSet exported by the rule module of rule set `name`."""
    from onnxscript.rewriter import pattern  # onnxscript is heavy: imported when rules are used

    rules = importlib.import_module(RULE_SETS[name][0]).rules
    return rules if isinstance(rules, pattern.RewriteRuleSet) else pattern.RewriteRuleSet(list(rules))


class _Recorded:
    """A rewrite rule that reports each rewrite it makes (its ReplacementSubgraph) before the rule set applies it."""

    def __init__(self, rule: Any, on_rewrite: Any):
        self._rule = rule
        self._on_rewrite = on_rewrite

    def __getattr__(self, name: str) -> Any:
        return getattr(self._rule, name)

    def try_rewrite(self, *args: Any, **kwargs: Any) -> Any:
        delta = self._rule.try_rewrite(*args, **kwargs)
        if delta is not None:
            self._on_rewrite(self._rule, delta)
        return delta


def _label(node: Any, index: int | None = None) -> str:
    """A node's name as analysis gives it (`node_name`, by its index in the input model), or by identity
    for a node the input does not have."""
    return node_name(node, index) if index is not None else (node.name or f"{node.op_type}@{id(node):x}")


def _to_ir(model: Any):
    """An onnx_ir model of a ModelProto (deep-copied first), with inferred shapes for the rules' checks."""
    import onnx_ir as ir
    from onnx_ir.passes.common import ShapeInferencePass

    ir_model = ir.serde.deserialize_model(copy.deepcopy(model))
    try:
        ShapeInferencePass(strict_mode=False)(ir_model)
    except Exception:  # shapes only help rules decide; rules without them decline
        pass
    return ir_model


def _from_ir(ir_model: Any):
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedFunctionsPass, RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(ir_model)
    RemoveUnusedFunctionsPass()(ir_model)
    return ir.serde.serialize_model(ir_model)


def match_rule_sets(model: Any, names: list[str]) -> tuple[Any, list[RuleMatch]]:
    """Apply rule sets in order to a copy of `model` (a ModelProto, left unchanged).

    Returns the rewritten ModelProto and every rewrite made, in order.
    """
    if not names:
        return model, []
    from onnxscript.rewriter import pattern  # onnxscript is heavy: imported when rules are used

    ir_model = _to_ir(model)
    # nodes keep the input's order: the n-th node is the n-th of graph.node
    origin: dict[Any, tuple[str, ...]] = {n: (_label(p, i),) for i, (n, p) in
                                          enumerate(zip(ir_model.graph, model.graph.node))}
    rewrites: list[tuple[str, Any, set[str]]] = []

    def record(set_name: str):
        def on_rewrite(rule: Any, delta: Any) -> None:
            matched = [n for n in delta.match.nodes if n.op_type != "Constant"]
            covered = {x for n in matched for x in origin.get(n, (_label(n),))}
            for n in delta.new_nodes:
                origin[n] = tuple(covered)
            rewrites.append((set_name, rule, covered))
        return on_rewrite

    for name in names:
        rule_set = load_rules(name)
        pattern.RewriteRuleSet([_Recorded(r, record(name)) for r in rule_set.rules]).apply_to_model(ir_model)
    order = _graph_order(model)
    matches = [RuleMatch(rule_set=s, rule=rule.name or type(rule).__name__, nodes=tuple(sorted(covered, key=order)))
               for s, rule, covered in rewrites]
    return _from_ir(ir_model), matches


def apply_rule_sets(model: Any, names: list[str]) -> tuple[Any, dict[str, int], dict[str, list[str]]]:
    """Apply rule sets in order to a copy of `model`.

    Returns the new ModelProto, how many times each set fired, and the names of the nodes each replaced.
    """
    fused, matches = match_rule_sets(model, names)
    return (fused, *summarize(model, matches))


def summarize(model: Any, matches: list[RuleMatch]) -> tuple[dict[str, int], dict[str, list[str]]]:
    """How many times each rule set fired, and the names of the nodes of `model` each replaced (graph order)."""
    counts: dict[str, int] = {}
    covered: dict[str, set[str]] = {}
    for m in matches:
        counts[m.rule_set] = counts.get(m.rule_set, 0) + 1
        covered.setdefault(m.rule_set, set()).update(m.nodes)
    order = _graph_order(model)
    return counts, {s: sorted(c, key=order) for s, c in covered.items()}


def _graph_order(model: Any):
    """Sort key of node labels: their position in `model`'s main graph (others last, by name)."""
    index = {_label(p, i): i for i, p in enumerate(model.graph.node)}
    return lambda label: (index.get(label, len(index)), label)
