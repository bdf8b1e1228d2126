"""ONNX-level passes: simplify, fuse, quantize, fp16, session tuning."""
