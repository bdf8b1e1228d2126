"""Hugging Face models from local folders: load with eager attention and wrap to return embeddings."""

from __future__ import annotations

from pathlib import Path

from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.errors import InputError
from edgeopt.load import register_format

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _embedder_class():
    import torch

    class SentenceEmbedder(torch.nn.Module):
        """An encoder plus mean pooling over the attention mask and L2 normalization (sentence embedding).

        Only the named tensors reach the encoder, so the exporter never passes extra positional
        arguments (with transformers 5 they would collide with `use_cache`).
        """

        def __init__(self, encoder: torch.nn.Module, normalize: bool = True):
            super().__init__()
            self.encoder = encoder
            self.normalize = normalize

        def forward(self, input_ids, attention_mask, token_type_ids):
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state  # (B, T, H)
            mask = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            emb = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            return emb

    return SentenceEmbedder


def wrap_encoder(encoder, tokenizer_path: Path | str | None, seq_len: int = 128, batch: int = 1,
                 source: str = "", normalize: bool = True) -> Artifact:
    """A torch Artifact of `encoder` wrapped as a sentence embedder, with example inputs at `seq_len`."""
    import torch

    cfg = encoder.config
    model = _embedder_class()(encoder, normalize=normalize).eval()
    vocab = int(getattr(cfg, "vocab_size", 0) or 1000)
    ids = ((torch.arange(seq_len) * 7 + 101) % vocab).repeat(batch, 1)  # (B, T) in-vocabulary token ids
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    spec = InputSpec(tuple(TensorSpec(n, "int64", ("batch", "sequence")) for n in TEXT_INPUTS))
    meta = {
        "source": source,
        "family": getattr(cfg, "model_type", "bert"),
        "num_heads": int(getattr(cfg, "num_attention_heads", 0) or 0),
        "hidden_size": int(getattr(cfg, "hidden_size", 0) or 0),
        "vocab_size": int(getattr(cfg, "vocab_size", 0) or 0),
        "tokenizer": str(tokenizer_path) if tokenizer_path else None,
        "task": "sentence-embedding",
        "example_inputs": example,
        "input_names": list(TEXT_INPUTS),
        "output_names": ["sentence_embedding"],
    }
    return Artifact.from_module(model, spec, meta=meta)


def is_hf_folder(path: Path) -> bool:
    """A folder with a Hugging Face config.json."""
    return path.is_dir() and (path / "config.json").exists()


@register_format("hf-folder", is_hf_folder)
def load_hf_folder(path: Path, seq_len: int = 128, batch: int = 1) -> Artifact:
    """A local Hugging Face encoder folder (config.json + weights) as a sentence-embedding artifact."""
    import warnings

    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise InputError(f"{path}: unreadable Hugging Face config ({e.__class__.__name__})") from None
    weights = [p for p in path.iterdir() if p.suffix == ".safetensors"] if path.is_dir() else []
    if not weights:
        raise InputError(f"{path}: no .safetensors weights (pickled .bin weights are refused: they can run code)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = AutoModel.from_pretrained(str(path), attn_implementation="eager", local_files_only=True,
                                            use_safetensors=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise InputError(f"{path}: cannot load model: {first[:200]}") from None
    enc.eval()
    tok = path if (path / "tokenizer.json").exists() or (path / "vocab.txt").exists() else None
    return wrap_encoder(enc, tok, seq_len=seq_len, batch=batch, source=str(path))
