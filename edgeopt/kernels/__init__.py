"""The kernels themselves: Winograd transforms, attention variants, fused norm + activation."""
