"""edgeopt: analyze, optimize and measure neural networks for edge devices (public API only; imports stay lazy)."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

from edgeopt.versions import __version__


def _quiet_third_party() -> None:
    """torchao (installed with litert-torch, imported by transformers whenever present) tries to load CUDA kernels
    and registers enums with torch's pytree on import: both print warnings into every command's output. Its CPU
    code needs neither; the user's own setting of the variable wins. JAX's fork warning: see below."""
    os.environ.setdefault("TORCHAO_FORCE_SKIP_LOADING_SO_FILES", "1")
    # the TensorFlow runtime inside LiteRT's converter announces its oneDNN kernels on import, through absl before
    # absl's logging is set up (so no log level reaches it, and the line escapes fd redirection); without those
    # kernels it stays silent, and it only folds constants while converting
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    # JAX (imported by litert-torch's converter) warns on every later fork (NNCF's and the quantizers' workers,
    # our measuring children); edgeopt never runs JAX code after a conversion, so the warning says nothing here
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning)
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").addFilter(lambda r: "register_constant" not in r.getMessage())


_quiet_third_party()

_API = {
    "Artifact": "edgeopt.artifact",
    "InputSpec": "edgeopt.artifact",
    "TensorSpec": "edgeopt.artifact",
    "load_model": "edgeopt.load",
    "Recipe": "edgeopt.recipe",
    "load_recipe": "edgeopt.recipe",
    "parse_recipe": "edgeopt.recipe",
    "Ledger": "edgeopt.ledger",
    "Stage": "edgeopt.ledger",
    "Target": "edgeopt.target",
    "detect_target": "edgeopt.target",
    "get_target": "edgeopt.target",
    "Pass": "edgeopt.passes.base",
    "PassConfig": "edgeopt.passes.base",
    "PassContext": "edgeopt.passes.base",
    "register": "edgeopt.passes.base",
    "registry": "edgeopt.passes.base",
    "optimize": "edgeopt.pipeline",
    "run_pipeline": "edgeopt.pipeline",
    "analyze": "edgeopt.analyze",
    "profile": "edgeopt.analyze.profile",
    "bench": "edgeopt.measure.bench",
    "EdgeoptError": "edgeopt.errors",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgeopt' has no attribute {name!r}")
