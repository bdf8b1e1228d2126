"""Converters between model forms: torch -> ONNX, ..."""
