"""Rule set "conv_bn": BatchNormalization after Conv / ConvTranspose / Gemm -> folded weights (onnxscript's rules).

Reused as is from onnxscript 0.7 (`rewriter/rules/common/_fuse_batchnorm.py`): the BatchNormalization's
scale and shift are folded into the producer's weights and bias (`W * gamma / std`,
`(B - mean) * gamma / std + beta`); the rules decline when a weight is not a constant initializer or is
shared with another node. PyTorch's exporter already folds Conv+BN of a module in eval mode, so this set
fires on graphs from other sources (training-mode exports, other frameworks, hand-built graphs).

A Conv followed by an activation (Relu, Clip, ...) has no standard fused op to rewrite to: ONNX Runtime
fuses it when it builds a session (ConvActivationFusion, graph optimization level "extended" or higher), so
no rule here rewrites it; analysis (`edgeopt.analyze.opportunities`) reports it as left to the runtime.
"""

from __future__ import annotations

from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import (
    fuse_batchnorm_into_conv_rule,
    fuse_batchnorm_into_conv_transpose_rule,
    fuse_batchnorm_into_gemm_rule,
)

rules = pattern.RewriteRuleSet(
    [
        fuse_batchnorm_into_conv_rule,
        fuse_batchnorm_into_conv_transpose_rule,
        fuse_batchnorm_into_gemm_rule,
    ]
)
