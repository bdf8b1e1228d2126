"""graph.simplify: constant folding, dead-code elimination and shape inference of an ONNX model, by onnxslim.

onnxslim does the work. What is ours is the guard around it (`keep_ort_fusable`), found by running
onnxslim 0.1.98 on all-MiniLM-L6-v2 exported by the TorchScript exporter, then ONNX Runtime's
transformer optimizer (`model_type="bert"`, `opt_level=0`) on the result:

- onnxslim's `EliminationReshape` pattern merges the two chained Reshapes of the attention-mask
  subgraph that transformers builds; ONNX Runtime's attention fusion then no longer recognizes the mask
  path, and fuses no Attention (and so no EmbedLayerNormalization): 0/6 and 0/1 instead of 6/6 and 1/1.
  Skipping that one pattern keeps the full fusion (Attention 6, EmbedLayerNormalization 1,
  SkipLayerNormalization 12, BiasGelu 6), with every other onnxslim optimization on.
- onnxslim's dead-node elimination removes `Add(x, 0)`. Where a model's MatMul biases are all zeros
  (randomly initialized transformers: Hugging Face initializes biases to zero), that removes the bias Adds
  ONNX Runtime's Attention and BiasGelu fusions match; it is skipped only for such models.
"""

from __future__ import annotations

import contextlib
import io
from typing import Any, Literal

from pydantic import Field, field_validator

from edgeopt.analyze.census import op_counts
from edgeopt.analyze.patterns import GraphIndex, find_attention
from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.graph._io import save_onnx_atomic

OPTIMIZATIONS = ("constant_folding", "graph_fusion", "dead_node_elimination", "subexpression_elimination",
                 "weight_tying")


def zero_matmul_biases(model: Any) -> int:
    """How many `Add(MatMul(..), b)` nodes of the main graph add an all-zero constant `b`."""
    import numpy as np

    g = GraphIndex(model)
    count = 0
    for node in g.nodes:
        if node.op_type != "Add" or len(node.input) != 2:
            continue
        for a, b in (node.input, node.input[::-1]):
            p = g.prod(a)
            bias = g.const_value(b) if p is not None and g.op(p) == "MatMul" else None
            if bias is not None and bias.size > 0 and not np.any(bias):
                count += 1
                break
    return count


@register("graph.simplify")
class Simplify(Pass):
    """Simplify an ONNX model with onnxslim (fold constants, drop dead nodes, infer shapes), guarded for ORT fusion.

    `skip_optimizations` and `skip_fusion_patterns` are onnxslim's own options (skip constant folding with
    `skip_optimizations: [constant_folding]`); `size_threshold` leaves constants larger than that many bytes
    unfolded. `keep_ort_fusable` ("auto": where the graph has an attention block) skips the onnxslim steps
    that stop ONNX Runtime's transformer optimizer from fusing attention (see the module docstring).
    """

    class Config(PassConfig):
        skip_optimizations: tuple[Literal[OPTIMIZATIONS], ...] = ()  # type: ignore[valid-type]
        skip_fusion_patterns: tuple[str, ...] = ()
        size_threshold: int | None = Field(default=None, ge=0)
        shape_inference: bool = True
        keep_ort_fusable: bool | Literal["auto"] = "auto"

        @field_validator("skip_fusion_patterns")
        @classmethod
        def _known_patterns(cls, v: tuple[str, ...]) -> tuple[str, ...]:
            if v:
                from onnxslim.core.pattern.registry import DEFAULT_FUSION_PATTERNS

                unknown = [p for p in v if p not in DEFAULT_FUSION_PATTERNS]
                if unknown:
                    raise ValueError(f"skip_fusion_patterns: unknown onnxslim pattern {unknown[0]!r}; "
                                     f"known: {', '.join(DEFAULT_FUSION_PATTERNS)}")
            return v

    accepts = ("onnx",)

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import onnx
        import onnxslim

        cfg = self.config
        model = onnx.load(str(art.path))
        before = op_counts(model)
        skip_opts = list(cfg.skip_optimizations)
        skip_patterns = list(cfg.skip_fusion_patterns)
        kept: dict[str, str] = {}
        keep = cfg.keep_ort_fusable
        if keep == "auto":
            keep = bool(find_attention(model))
        if keep:
            if "EliminationReshape" not in skip_patterns:
                skip_patterns.append("EliminationReshape")
                kept["EliminationReshape"] = "merging the attention-mask Reshapes stops ORT's Attention fusion"
            zeros = zero_matmul_biases(model)
            if zeros and "dead_node_elimination" not in skip_opts:
                skip_opts.append("dead_node_elimination")
                kept["dead_node_elimination"] = (f"{zeros} MatMul biases are all zeros; removing their Adds "
                                                 "stops ORT's Attention/BiasGelu fusions")
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                slim = onnxslim.slim(model, skip_optimizations=skip_opts or None,
                                     skip_fusion_patterns=skip_patterns or None,
                                     size_threshold=cfg.size_threshold, no_shape_infer=not cfg.shape_inference)
        except Exception as e:
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
            raise PassError(f"graph.simplify: onnxslim failed: {first[:300]}") from None
        if slim is None:
            raise PassError("graph.simplify: onnxslim returned no model")
        out = save_onnx_atomic(slim, ctx.stage_dir / "model.onnx")
        after = op_counts(slim)
        ctx.notes["simplify"] = {
            "nodes_before": sum(before.values()),
            "nodes_after": sum(after.values()),
            "ops_before": before,
            "ops_after": after,
            "skipped_for_ort_fusion": kept,
        }
        return Artifact.from_onnx(out, meta={k: v for k, v in art.meta.items() if k != "session"})
