"""Versions of the runtimes and libraries a figure depends on (read from package metadata, no imports)."""

from __future__ import annotations

import platform
from functools import lru_cache
from importlib import metadata

__version__ = "0.1.0"  # edgeopt's own (pyproject.toml says the same)

PACKAGES = ("edgeopt", "torch", "onnx", "onnxruntime", "onnxscript", "onnxslim", "transformers", "numpy",
            "ai-edge-litert", "litert-torch", "ai-edge-quantizer", "onnxruntime-genai")


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out
