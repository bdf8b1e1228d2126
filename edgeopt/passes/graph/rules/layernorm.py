"""Rule set "layernorm": a decomposed layer norm (ReduceMean, Sub, Pow, .., Div, Mul, Add) -> LayerNormalization.

Matched spellings: squared deviation as Pow(d, 2) or Mul(d, d); normalization as Div(d, std),
Mul(d, Reciprocal(std)) or Mul(d, Div(1, std)); with a per-channel scale, without one (unit scale), and
with or without a trailing per-channel bias; ReduceMean axes as attribute (opset 17) or input (opset 18+).

The decomposition rules are written here by hand: onnxscript 0.7 ships `LayerNormFusion`
(`onnxscript/rewriter/rules/fusion/_layer_norm.py`), but it matches only the opset-18 form where
ReduceMean takes its axes as an input, while PyTorch's exporter at opset 17 (our default) writes axes as
an attribute (and LayerNormalization needs opset 17, which these rules check); it also does not check
that the scale is a per-channel vector.
The trailing `+ bias` step reuses onnxscript's shipped `LayerNormBiasFusion`, with a check added here
that the bias is a constant vector the size of the normalized axis (the shipped rule accepts any tensor,
e.g. a residual, which LayerNormalization cannot take as its bias).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter._ir_utils import get_numpy_value, get_singleton_value
from onnxscript.rewriter.rules.fusion._layer_norm import LayerNormBiasFusion

# Element types LayerNormalization (opset 17) takes; statistics in float, or double for double inputs.
_INPUT_TYPES = frozenset([ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16])
_MIN_OPSET = 17


def _reduce_axes(node: ir.Node) -> list[int] | None:
    """The axes a ReduceMean node reduces over, from its attribute (opset < 18) or its second input."""
    attr = node.attributes.get("axes")
    if attr is not None:
        return [int(a) for a in attr.as_ints()]
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        axes = get_numpy_value(node.inputs[1])
        return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    return None  # no axes: reduces over every axis, not a layer norm


def _keepdims(node: ir.Node) -> int:
    attr = node.attributes.get("keepdims")
    return 1 if attr is None else attr.as_int()


def _last_dim(x: ir.Value) -> int | None:
    if x.shape is None or x.shape.rank() is None or x.shape.rank() == 0:
        return None
    d = x.shape[-1]
    return d if isinstance(d, int) else None


def _is_last_axis(axes: list[int] | None, rank: int | None) -> bool:
    if axes is None or len(axes) != 1:
        return False
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def _channel_vector(value: ir.Value, size: int | None) -> np.ndarray | None:
    """`value` as a constant vector of `size` elements (leading 1-dims allowed), or None."""
    arr = get_numpy_value(value)
    if arr is None or arr.ndim == 0 or any(d != 1 for d in arr.shape[:-1]):
        return None
    if size is not None and arr.shape[-1] != size:
        return None
    return arr.reshape(-1)


def _scale_operand(node: ir.Node, normalized: ir.Value, x: ir.Value) -> ir.Value | None:
    """The scale operand of `node` if it is `Mul(normalized, scale)` with a scale LayerNormalization takes."""
    if node.op_type != "Mul" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    other = node.inputs[1] if node.inputs[0] is normalized else node.inputs[0]
    if other is None or other.dtype != x.dtype or _channel_vector(other, _last_dim(x)) is None:
        return None
    return other


class _DecomposedLayerNormBase(pattern.RewriteRuleClassBase):
    """Shared check of the decomposed-norm rules: last-axis reductions, scalar epsilon, opset >= 17."""

    def _check_core(self, context, x: ir.Value, mean: ir.Value, var: ir.Value,
                    epsilon: ir.Value) -> pattern.MatchResult:
        result = pattern.MatchResult()
        opset = context.model.opset_imports.get("", context.model.opset_imports.get("ai.onnx", 0))
        if opset < _MIN_OPSET:
            return result.fail(f"LayerNormalization needs opset {_MIN_OPSET}, the model has opset {opset}")
        if x.dtype not in _INPUT_TYPES:
            return result.fail(f"input type {x.dtype} is not one LayerNormalization takes", x)
        rank = x.shape.rank() if x.shape is not None else None
        for node in (mean.producer(), var.producer()):
            if not _is_last_axis(_reduce_axes(node), rank) or _keepdims(node) != 1:
                return result.fail("ReduceMean is not over the last axis only with keepdims=1", node)
        eps = get_singleton_value(epsilon)
        if eps is None:
            return result.fail("epsilon is not a constant scalar", epsilon)
        self._epsilon = float(eps)
        self._stash_type = int(ir.DataType.DOUBLE if x.dtype == ir.DataType.DOUBLE else ir.DataType.FLOAT)
        return result

    def _core(self, op, x, epsilon, form: str | None = None):
        """The normalized value; `form` "div" or "reciprocal" fixes how it divides (None: either)."""
        mean = op.ReduceMean(x, _allow_other_inputs=True, _outputs=["mean"])
        deviation = op.Sub(x, mean)
        squared = pattern.OrValue([op.Pow(deviation, 2.0), op.Mul(deviation, deviation)])
        var = op.ReduceMean(squared, _allow_other_inputs=True, _outputs=["var"])
        std = op.Sqrt(op.Add(var, epsilon))
        if form == "div":
            return op.Div(deviation, std, _outputs=["normalized"])
        inverse = pattern.OrValue([op.Reciprocal(std), op.Div(1.0, std)])  # torch.rsqrt exports as 1 / Sqrt
        if form == "reciprocal":
            return op.Mul(deviation, inverse, _outputs=["normalized"])
        return pattern.OrValue([op.Div(deviation, std), op.Mul(deviation, inverse)])


class DecomposedLayerNormFusion(_DecomposedLayerNormBase):
    """`scale * (x - mean) / sqrt(var + eps)` over the last axis -> LayerNormalization(x, scale)."""

    def pattern(self, op, x, epsilon, scale):
        return op.Mul(self._core(op, x, epsilon), scale)

    def check(self, context, x, mean, var, epsilon, scale, **_) -> pattern.MatchResult:
        result = self._check_core(context, x, mean, var, epsilon)
        if not result:
            return result
        vec = _channel_vector(scale, _last_dim(x))
        if vec is None or scale.dtype != x.dtype:
            return result.fail("scale is not a constant vector of the input's type, the size of the last axis", scale)
        # A (1, .., D) scale is reshaped to (D,), the shape LayerNormalization takes.
        self._scale = None if scale.shape is not None and scale.shape.rank() == 1 else vec
        return result

    def rewrite(self, op, x, mean, scale, **_):
        if self._scale is not None:  # named after `mean`, a value unique to this match
            scale = op.initializer(ir.tensor(self._scale), name=f"{mean.name}_ln_scale")
        return op.LayerNormalization(x, scale, axis=-1, epsilon=self._epsilon, stash_type=self._stash_type)


class DecomposedLayerNormNoScaleFusion(_DecomposedLayerNormBase):
    """`(x - mean) / sqrt(var + eps)` over the last axis (no affine) -> LayerNormalization(x, ones).

    Needs the last dimension statically known, to build the all-ones scale. One rule per way of dividing
    (`form` "div" or "reciprocal"): a pattern cannot end in a choice.
    """

    def __init__(self, form: str):
        super().__init__(name=f"{type(self).__name__}_{form}")
        self._form = form

    def pattern(self, op, x, epsilon):
        return self._core(op, x, epsilon, self._form)

    def check(self, context, x, mean, var, epsilon, normalized, **_) -> pattern.MatchResult:
        result = self._check_core(context, x, mean, var, epsilon)
        if not result:
            return result
        uses = list(normalized.uses())
        if len(uses) == 1 and _scale_operand(uses[0].node, normalized, x) is not None:
            return result.fail("a per-channel scale follows: DecomposedLayerNormFusion takes this match")
        d = _last_dim(x)
        if d is None:
            return result.fail("the last dimension is not static (needed to build the unit scale)", x)
        self._size = d
        return result

    def rewrite(self, op, x, mean, **_):
        ones = op.initializer(ir.tensor(np.ones(self._size, dtype=x.dtype.numpy())), name=f"{mean.name}_ln_ones")
        return op.LayerNormalization(x, ones, axis=-1, epsilon=self._epsilon, stash_type=self._stash_type)


class CheckedLayerNormBiasFusion(LayerNormBiasFusion):
    """onnxscript's `LayerNormalization(x, scale) + bias -> LayerNormalization(x, scale, bias)`, bias checked."""

    def check(self, context, x, scale, bias, normalized, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        node = normalized.producer()
        axis = node.attributes.get("axis")
        if axis is not None and axis.as_int() != -1 and (x.shape is None or axis.as_int() != x.shape.rank() - 1):
            return result.fail("LayerNormalization is not over the last axis only", node)
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            return result.fail("LayerNormalization already has a bias", node)
        if _channel_vector(bias, _last_dim(x)) is None or bias.shape is None or bias.shape.rank() != 1:
            return result.fail("bias is not a constant vector the size of the last axis", bias)
        return result


# Applied as one set, node by node in graph order: the no-scale rules decline where a scale follows (the
# with-scale rule takes that match at the Mul), and the bias rule then extends the LayerNormalization.
rules = pattern.RewriteRuleSet(
    [
        DecomposedLayerNormFusion.rule(),
        DecomposedLayerNormNoScaleFusion.rule("div"),
        DecomposedLayerNormNoScaleFusion.rule("reciprocal"),
        CheckedLayerNormBiasFusion.rule(),
    ],
    commute=True,
)
