"""Public PyTorch building blocks (layers, blocks, pruning and distillation tools) for your own training code; the
zoo models and the compression passes are built from the same ones.

    from edgeopt.nn import (DepthwiseSeparableConv2d, InvertedResidual, apply_width_multiplier,
                            replace_conv_with_depthwise_separable, compute_flops_reduction,
                            PrunedMultiHeadAttention, HeadImportanceScorer, AttentionHeadPruner, PruningConfig,
                            DistillationConfig, PatientDistillationLoss, create_distillation_trainer)

Names resolve on first use (module `__getattr__`), so `import edgeopt.nn` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the submodule that defines it
_WHERE = {
    **{n: "blocks" for n in ("ConvBNAct", "DepthwiseSeparable", "InvertedResidual", "BasicBlock", "make_act",
                             "make_divisible", "ACTIVATIONS")},
    **{n: "separable" for n in ("DepthwiseSeparableConv2d", "apply_width_multiplier", "compute_flops_reduction",
                                "replace_conv_with_depthwise_separable")},
    **{n: "attention" for n in ("PrunedMultiHeadAttention", "HeadImportanceScorer", "AttentionHeadPruner",
                                "PruningConfig", "convert_multihead_attention", "find_attention")},
    **{n: "ofa" for n in ("OFAConfig", "SubnetConfig", "OFANet", "OFASubNetworkExtractor", "ElasticKernelConv",
                          "ElasticKernel", "ElasticInvertedResidual", "ElasticBlock", "ElasticWidth", "ElasticDepth",
                          "create_progressive_shrinking_schedule")},
    **{n: "distill" for n in ("DistillationConfig", "PatientDistillationLoss", "create_distillation_trainer",
                              "DistillationTrainer", "teacher_layer_indices", "kd_loss", "freeze")},
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
