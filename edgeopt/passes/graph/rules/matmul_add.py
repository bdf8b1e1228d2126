"""Rule set "matmul_add": MatMul + Add(bias) on 2-D operands -> Gemm (onnxscript's shipped rules, reused as is).

Reused from onnxscript 0.7 (`rewriter/rules/common/_matmul_add_to_gemm.py`): `Add(MatMul(a, b), c)`, also
with `a` and/or `b` transposed, -> `Gemm(a, b, c, transA, transB)`, only where both operands are known to
be 2-D (run shape inference first). MatMuls of higher rank (the (B, T, H) projections of a transformer)
are kept as they are: Gemm is 2-D only, and ONNX Runtime's own fusions (Attention, BiasGelu,
SkipLayerNormalization, or MatMul+Add at session level) take those, so graph.fuse runs this set after
ONNX Runtime's transformer optimizer, never before it.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import (
    matmul_add_to_gemm_rule,
    transpose_a_matmul_add_to_gemm_rule,
    transpose_ab_matmul_add_to_gemm_rule,
    transpose_b_matmul_add_to_gemm_rule,
)

# The transposed forms first, so a Transpose feeding the MatMul is folded into transA/transB.
rules = pattern.RewriteRuleSet(
    [
        transpose_ab_matmul_add_to_gemm_rule,
        transpose_a_matmul_add_to_gemm_rule,
        transpose_b_matmul_add_to_gemm_rule,
        matmul_add_to_gemm_rule,
    ]
)
