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
left. Conv + activation is left to ONNX Runtime's session-level fusion (no standard fused op exists).

The rule sets themselves, and applying them, live in `rules/`; `edgeopt.analyze.opportunities` runs the
same sets on a copy to report what would fuse, and the attention and Conv+activation matchers are shared
from `edgeopt.analyze.patterns`.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import io
import logging
import os
import sys
import tempfile
from typing import Any, Iterator

from pydantic import field_validator

from edgeopt.analyze.census import op_counts
from edgeopt.analyze.patterns import find_conv_activations
from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.graph._io import save_onnx_atomic
from edgeopt.passes.graph.rules import RULE_SETS, apply_rule_sets

log = logging.getLogger(__name__)

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


@contextlib.contextmanager
def captured_output() -> Iterator[list[str]]:
    """Everything written to stdout and stderr while open, kept out of the terminal: Python's `sys.stdout` /
    `sys.stderr` and the process's file descriptors 1 and 2 (C/C++ output). The yielded list receives the
    captured text on exit.

    For that span, output of other threads of this process is captured too (the descriptors are the
    process's); it is kept short (one library call).
    """
    captured: list[str] = []
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    saved: list[tuple[int, int]] = []
    with tempfile.TemporaryFile() as sink:
        buf = io.StringIO()
        try:
            for fd in (1, 2):
                try:
                    saved.append((fd, os.dup(fd)))
                except OSError:  # no such descriptor (a detached process): nothing to capture there
                    continue
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
                yield captured
        finally:
            with contextlib.suppress(Exception):  # C stdio buffers, before the descriptors go back
                ctypes.CDLL(None).fflush(None)
            for fd, dup in saved:
                os.dup2(dup, fd)
                os.close(dup)
            sink.seek(0)
            captured.extend(t for t in (buf.getvalue(), sink.read().decode(errors="replace")) if t.strip())


def _ort_optimize(model: Any, model_type: str, num_heads: int, hidden_size: int) -> tuple[Any, dict[str, int]]:
    """ONNX Runtime's transformer optimizer (opt_level=0: its Python fusions only); (model, fused-op statistics).

    It rewrites the ModelProto it is given in place, so it gets a copy: a failure leaves `model` whole. What
    it prints (e.g. "failed in shape inference" on GPT-2) goes to this module's debug log, not the terminal;
    a failure is the caller's one warning or error. The com.microsoft opset import its fused ops need is
    added here (ONNX Runtime adds it only in its own `save`), so later shape inference reads the model.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # its fusions log every pattern they do not find
    printed: list[str] = []
    try:
        with captured_output() as printed:
            opt = optimize_model(copy.deepcopy(model), model_type=model_type, num_heads=num_heads,
                                 hidden_size=hidden_size, opt_level=0)
            stats = opt.get_fused_operator_statistics()
    finally:
        logging.disable(previous)
        if printed:
            log.debug("ONNX Runtime transformer optimizer (%s) printed: %s", model_type, " ".join(printed)[:2000])
    out = opt.model
    if any(n.domain == "com.microsoft" for n in out.graph.node) and not any(
            o.domain == "com.microsoft" for o in out.opset_import):
        out.opset_import.add(domain="com.microsoft", version=1)
    return out, {k: int(v) for k, v in stats.items()}


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
