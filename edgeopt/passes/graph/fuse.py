"""graph.fuse: fuse op patterns of an ONNX model (onnxscript rewrite rules + ONNX Runtime's transformer optimizer).

Two fusers, one pass:
- the rule sets under `edgeopt/passes/graph/rules/` (onnxscript's rewriter; each module exports `rules`):
  "layernorm", "gelu", "conv_bn", "matmul_add";
- for a transformer whose family is known (`meta["family"]`, with `meta["num_heads"]`,
  `meta["hidden_size"]`), ONNX Runtime's transformer optimizer (`optimize_model(opt_level=0)`, its default
  fusion options), which fuses Attention, EmbedLayerNormalization, SkipLayerNormalization and BiasGelu.

Order: the rule sets that leave ONNX Runtime's patterns intact run first (a LayerNormalization or a
com.microsoft Gelu is what its SkipLayerNorm/BiasGelu fusions start from), then its optimizer, then the
sets that would take the MatMul+Add pairs its Attention/BiasGelu fusions need ("matmul_add"), on what is
left. Conv+Relu/Clip is left to ONNX Runtime's session-level fusion (no standard fused op exists).

`find_opportunities` and `find_attention` (written here by hand: a walk up and down from each Softmax)
report what would fuse without changing the model.
"""

from __future__ import annotations

import copy
import importlib
import logging
from typing import Any

from pydantic import field_validator

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassConfig, PassContext, register

# rule-set name -> (module exporting `rules`, what it fuses)
RULE_SETS: dict[str, tuple[str, str]] = {
    "layernorm": ("edgeopt.passes.graph.rules.layernorm", "decomposed LayerNorm -> LayerNormalization"),
    "gelu": ("edgeopt.passes.graph.rules.gelu", "Erf/tanh GELU -> com.microsoft Gelu/FastGelu"),
    "conv_bn": ("edgeopt.passes.graph.rules.conv_bn", "BatchNormalization folded into Conv/ConvTranspose/Gemm"),
    "matmul_add": ("edgeopt.passes.graph.rules.matmul_add", "2-D MatMul + Add -> Gemm"),
}
PRESETS: dict[str, tuple[str, ...]] = {
    "transformer": ("layernorm", "gelu", "matmul_add"),
    "cnn": ("conv_bn", "matmul_add"),
    "all": tuple(RULE_SETS),
    "auto": tuple(RULE_SETS),  # every set: a rule only fires where its pattern is found
}
# Sets that would consume patterns ONNX Runtime's transformer fusions match: run after its optimizer.
AFTER_ORT = frozenset({"matmul_add"})

# model_type values of onnxruntime.transformers.optimizer (kept here so configs validate without importing it)
ORT_MODEL_TYPES = ("bart", "bert", "bert_keras", "bert_tf", "clip", "conformer", "gpt2", "gpt2_tf", "gpt_neox",
                   "mmdit", "phi", "qwen3", "sam2", "swin", "t5", "tnlr", "unet", "vae", "vit")
# Hugging Face model_type (our meta["family"]) -> ONNX Runtime optimizer model_type
FAMILY_TO_ORT: dict[str, str] = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert", "distilbert": "bert",
    "electra": "bert", "vit": "vit", "deit": "vit", "swin": "swin", "gpt2": "gpt2", "bart": "bart", "t5": "t5",
}


def resolve_rule_sets(rules: str | tuple[str, ...] | list[str]) -> list[str]:
    """Rule-set names (presets expanded, duplicates dropped, in RULE_SETS order); unknown names raise ValueError."""
    names = (rules,) if isinstance(rules, str) else tuple(rules)
    chosen: set[str] = set()
    for name in names:
        if name in PRESETS:
            chosen.update(PRESETS[name])
        elif name in RULE_SETS:
            chosen.add(name)
        else:
            raise ValueError(f"rules: unknown rule set {name!r}; known: {', '.join([*RULE_SETS, *PRESETS])}")
    return [n for n in RULE_SETS if n in chosen]


def load_rules(name: str):
    """The RewriteRuleSet exported by the rule module of rule set `name`."""
    from onnxscript.rewriter import pattern

    rules = importlib.import_module(RULE_SETS[name][0]).rules
    return rules if isinstance(rules, pattern.RewriteRuleSet) else pattern.RewriteRuleSet(list(rules))


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


def _node_label(node: Any) -> str:
    return node.name or f"{node.op_type}@{id(node):x}"


def apply_rule_sets(model: Any, names: list[str]) -> tuple[Any, dict[str, int], dict[str, list[str]]]:
    """Apply rule sets in order to a copy of `model`.

    Returns the new ModelProto, how many times each set fired, and the names of the nodes each replaced.
    """
    if not names:
        return model, {}, {}
    ir_model = _to_ir(model)
    counts: dict[str, int] = {}
    replaced: dict[str, list[str]] = {}
    for name in names:
        nodes_before = list(ir_model.graph)
        n = load_rules(name).apply_to_model(ir_model)
        if n:
            still = set(ir_model.graph)
            counts[name] = n
            replaced[name] = [_node_label(x) for x in nodes_before if x not in still and x.op_type != "Constant"]
    return _from_ir(ir_model), counts, replaced


def find_attention(model: Any) -> list[list[str]]:
    """Attention blocks of a ModelProto's main graph: MatMul -> (Div|Mul)? -> (Add|Where mask)? -> Softmax -> MatMul.

    Returns one list of node names per block (QK MatMul, scale, mask, Softmax, AV MatMul). Casts and
    Dropouts between the steps are walked through.
    """
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    through = {"Cast", "Dropout", "Identity"}

    def up(name: str):
        n = producer.get(name)
        while n is not None and n.op_type in through:
            n = producer.get(n.input[0])
        return n

    def down(name: str):
        users = consumers.get(name, [])
        while len(users) == 1 and users[0].op_type in through:
            users = consumers.get(users[0].output[0], [])
        return users

    blocks = []
    for sm in nodes:
        if sm.op_type != "Softmax":
            continue
        chain = [sm]
        n = up(sm.input[0])
        if n is not None and n.op_type in ("Add", "Where"):
            chain.insert(0, n)
            data_inputs = n.input[:2] if n.op_type == "Add" else n.input[1:2]
            scores = (up(i) for i in data_inputs)
            n = next((p for p in scores if p is not None and p.op_type in ("Div", "Mul", "MatMul")), None)
        if n is not None and n.op_type in ("Div", "Mul"):
            chain.insert(0, n)
            n = next((p for p in (up(i) for i in n.input) if p is not None and p.op_type == "MatMul"), None)
        if n is None or n.op_type != "MatMul":
            continue
        av = [u for u in down(sm.output[0]) if u.op_type == "MatMul"]
        if not av:
            continue
        blocks.append([x.name for x in [n, *chain, av[0]]])
    return blocks


def find_conv_activations(model: Any) -> list[list[str]]:
    """Conv -> Relu/Clip pairs (the activation is the Conv's only consumer): what ONNX Runtime fuses in a session."""
    consumers: dict[str, list[Any]] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    pairs = []
    for n in model.graph.node:
        if n.op_type == "Conv":
            users = consumers.get(n.output[0], [])
            if len(users) == 1 and users[0].op_type in ("Relu", "Clip"):
                pairs.append([n.name, users[0].name])
    return pairs


def find_opportunities(model: Any) -> list[dict[str, Any]]:
    """Fusable patterns in `model` (an onnx.ModelProto), without changing it: one dict per pattern kind found.

    Each dict: `rule` (rule-set name, or "attention" / "conv_activation"), `count`, `nodes` (names of the
    nodes the fusion would replace), `handled_by` (the pass, or the runtime), `detail`. The rule sets are
    run, in graph.fuse's order, on a copy; attention and Conv+activation are found by walking the graph.
    """
    found: list[dict[str, Any]] = []
    attention = find_attention(model)
    if attention:
        found.append({"rule": "attention", "count": len(attention), "nodes": [x for b in attention for x in b],
                      "handled_by": "graph.fuse",
                      "detail": "MatMul-scale-mask-Softmax-MatMul -> com.microsoft Attention, by ONNX Runtime's "
                                "transformer optimizer (ort_transformer; needs the model family)"})
    _, counts, replaced = apply_rule_sets(model, list(RULE_SETS))
    for name in RULE_SETS:
        if counts.get(name):
            found.append({"rule": name, "count": counts[name], "nodes": replaced[name], "handled_by": "graph.fuse",
                          "detail": RULE_SETS[name][1]})
    conv_act = find_conv_activations(model)
    if conv_act:
        found.append({"rule": "conv_activation", "count": len(conv_act), "nodes": [x for p in conv_act for x in p],
                      "handled_by": "onnxruntime session",
                      "detail": "Conv + Relu/Clip -> FusedConv, done by ONNX Runtime when it builds a session "
                                "(graph optimization level extended or higher); no graph rewrite needed"})
    return found


def _ort_optimize(model: Any, model_type: str, num_heads: int, hidden_size: int) -> tuple[Any, dict[str, int]]:
    """ONNX Runtime's transformer optimizer (opt_level=0: its Python fusions only); (model, fused-op statistics).

    It rewrites the ModelProto it is given in place, so it gets a copy: a failure leaves `model` whole.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its fusions log every pattern they do not find
    try:
        opt = optimize_model(copy.deepcopy(model), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size,
                             opt_level=0)
        stats = opt.get_fused_operator_statistics()
    finally:
        logging.disable(previous)
    return opt.model, {k: int(v) for k, v in stats.items()}


@register("graph.fuse")
class Fuse(Pass):
    """Fuse op patterns: onnxscript rule sets, plus ONNX Runtime's transformer optimizer for known families.

    `rules`: rule-set names ("layernorm", "gelu", "conv_bn", "matmul_add") or presets ("transformer",
    "cnn", "all", "auto"). `ort_transformer`: "auto" (run ONNX Runtime's optimizer where `meta["family"]`
    maps to one of its model types), True (run it; model type from the family, else "bert"), False, or an
    explicit ONNX Runtime model type ("bert", "vit", "gpt2", ...). Records fusions in `notes["fusions"]`.
    """

    class Config(PassConfig):
        rules: str | tuple[str, ...] = "auto"
        ort_transformer: bool | str = "auto"

        @field_validator("rules")
        @classmethod
        def _known_rules(cls, v: str | tuple[str, ...]) -> str | tuple[str, ...]:
            resolve_rule_sets(v)
            return v

        @field_validator("ort_transformer")
        @classmethod
        def _known_model_type(cls, v: bool | str) -> bool | str:
            if isinstance(v, str) and v != "auto" and v not in ORT_MODEL_TYPES:
                raise ValueError(f"ort_transformer: unknown ONNX Runtime model type {v!r}; "
                                 f"expected true, false, auto or one of: {', '.join(ORT_MODEL_TYPES)}")
            return v

    accepts = ("onnx",)

    def ort_model_type(self, meta: dict[str, Any]) -> str | None:
        """The ONNX Runtime optimizer model type this config and the artifact's meta call for (None: do not run it)."""
        v = self.config.ort_transformer
        family = str(meta.get("family") or "").lower()
        if v is False:
            return None
        if v == "auto":
            return FAMILY_TO_ORT.get(family)
        if v is True:
            return FAMILY_TO_ORT.get(family, "bert")
        return str(v)

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import onnx

        from edgeopt.passes.graph.simplify import op_counts, save_onnx_atomic

        model = onnx.load(str(art.path))
        sets = resolve_rule_sets(self.config.rules)
        model_type = self.ort_model_type(art.meta)
        before_rules = [s for s in sets if not (model_type and s in AFTER_ORT)]
        after_rules = [s for s in sets if model_type and s in AFTER_ORT]

        model, fusions, _ = apply_rule_sets(model, before_rules)
        ort_stats: dict[str, int] = {}
        if model_type:
            ops_before = op_counts(model)
            try:
                model, ort_stats = _ort_optimize(model, model_type, int(art.meta.get("num_heads") or 0),
                                                 int(art.meta.get("hidden_size") or 0))
            except Exception as e:
                msg = (f"ONNX Runtime transformer optimizer ({model_type}) failed: "
                       f"{e.__class__.__name__}: {str(e)[:200]}")
                if self.config.ort_transformer == "auto":
                    ctx.warnings.append(msg + "; continuing without it")
                    model_type = None
                else:
                    raise PassError(f"graph.fuse: {msg}") from None
            ops_after = op_counts(model)
            for op in ort_stats:  # fused ops it created (not ones already in the graph before it ran)
                key = op if op in ops_after else f"com.microsoft.{op}"
                made = ops_after.get(key, 0) - ops_before.get(key, 0)
                if ort_stats[op] and made > 0:
                    fusions[f"ort.{op}"] = made
        model, later, _ = apply_rule_sets(model, after_rules)
        fusions.update(later)
        # shapes recorded before the rewrites can contradict the rewritten graph (later shape inference,
        # e.g. the quantizer's, then fails): drop them and let consumers infer afresh
        del model.graph.value_info[:]

        out = save_onnx_atomic(model, ctx.stage_dir / "model.onnx")
        ctx.notes["fusions"] = fusions
        ctx.notes["fuse"] = {
            "rule_sets": sets,
            "ort_transformer": model_type,
            "ort_stats": {k: v for k, v in ort_stats.items() if v},
            "left_to_runtime": {"conv_activation": len(find_conv_activations(model))},
        }
        return Artifact.from_onnx(out, meta={k: v for k, v in art.meta.items() if k != "session"})
