"""Fusion rules written with onnxscript's rewriter; each module exports `rules`."""
