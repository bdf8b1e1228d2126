"""Rule set "gelu": Erf-GELU `x * 0.5 * (1 + erf(x / sqrt(2)))` in its common spellings -> com.microsoft Gelu.

Reused from onnxscript 0.7: `ort_fusions/erfgelu.py` (`0.5 * (x * (erf(x/sqrt2) + 1))` and
`x * (0.5 * (erf(x/sqrt2) + 1))`), `ort_fusions/gelu.py` (`(x * (erf(x/sqrt2) + 1)) * 0.5`, and tanh-GELU
with `Pow(x, 3)` -> com.microsoft FastGelu). Written here by hand: the erf spellings those miss,
`(0.5 * x) * (1 + erf(..))` (what PyTorch exports for an explicit `0.5 * x * (1 + torch.erf(x / math.sqrt(2)))`)
and every form with `x * (1/sqrt2)` instead of `x / sqrt2`; and tanh-GELU as PyTorch's TorchScript exporter
spells `nn.GELU(approximate="tanh")` (`x * x * x`, not `Pow`). The erf rules are expanded over operand
order (commute); the tanh rules match their spellings as written (expanding 8 commutative nodes would
make 256 variants).

The output is com.microsoft Gelu (ONNX Runtime's kernel, which its BiasGelu fusion then extends), not
ONNX Gelu: a model rewritten by this set runs on ONNX Runtime, not on runtimes without its contrib ops.
"""

from __future__ import annotations

import math

from onnxscript.rewriter import pattern
from onnxscript.rewriter.ort_fusions import erfgelu as _ort_erfgelu
from onnxscript.rewriter.ort_fusions import gelu as _ort_gelu

_SQRT2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _erf_term(op, x):
    """`erf(x / sqrt2) + 1`, with the division also written as a multiplication by 1/sqrt2."""
    scaled = pattern.OrValue([op.Div(x, _SQRT2), op.Mul(x, 1.0 / _SQRT2)])
    return op.Add(op.Erf(scaled), 1.0)


class ErfGeluFusion(pattern.RewriteRuleClassBase):
    """GELU with erf, in one of its three association orders (`form`), -> com.microsoft Gelu."""

    def __init__(self, form: str):
        super().__init__(name=f"ErfGelu_{form}")
        self._form = form

    def pattern(self, op, x):
        term = _erf_term(op, x)
        if self._form == "half_x_first":  # (0.5 * x) * (erf(..) + 1)
            return op.Mul(op.Mul(x, 0.5), term)
        if self._form == "half_last":  # (x * (erf(..) + 1)) * 0.5
            return op.Mul(op.Mul(x, term), 0.5)
        return op.Mul(x, op.Mul(term, 0.5))  # "half_term": x * ((erf(..) + 1) * 0.5)

    def rewrite(self, op, x):
        return op.Gelu(x, _domain="com.microsoft")


class TorchTanhGeluFusion(pattern.RewriteRuleClassBase):
    """`0.5 * (x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * (x * (x * x))))))`, PyTorch's export -> FastGelu."""

    def pattern(self, op, x):
        cube = op.Mul(x, op.Mul(x, x))
        inner = op.Mul(_SQRT_2_OVER_PI, op.Add(x, op.Mul(0.044715, cube)))
        return op.Mul(0.5, op.Mul(x, op.Add(1.0, op.Tanh(inner))))

    def rewrite(self, op, x):
        return op.FastGelu(x, _domain="com.microsoft")


_erf_rules = pattern.RewriteRuleSet(
    [
        # shipped by onnxscript (the exact x / sqrt(2) spellings)
        _ort_erfgelu.rule1,
        _ort_erfgelu.rule2,
        _ort_gelu._erf_rule,
        # written here: the spellings the shipped rules miss
        ErfGeluFusion.rule("half_x_first"),
        ErfGeluFusion.rule("half_last"),
        ErfGeluFusion.rule("half_term"),
    ],
    commute=True,
)
rules = pattern.RewriteRuleSet([*_erf_rules.rules, _ort_gelu._tanh_rule, TorchTanhGeluFusion.rule()])
