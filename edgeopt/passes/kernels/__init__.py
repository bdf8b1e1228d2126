"""PyTorch-level kernel swaps: Winograd, attention variants, fused normalization."""
