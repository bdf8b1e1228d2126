"""PyTorch-level compression passes: pruning, distillation, depthwise rewrites, QAT."""
