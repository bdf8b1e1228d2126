"""Hugging Face models from local folders: load with eager attention and wrap to return one tensor — text encoders
as sentence embedders, vision and audio backbones (pixel_values, input_values, Whisper's input_features) as
feature extractors (pooled output where the model has one, else the last hidden state)."""

from __future__ import annotations

import inspect
from pathlib import Path

from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.errors import InputError
from edgeopt.load import register_format
from edgeopt.zoo import images, speech

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _embedder_class():
    import torch

    class SentenceEmbedder(torch.nn.Module):
        """An encoder plus mean pooling over the attention mask and L2 normalization (sentence embedding).

        Only the named tensors reach the encoder, so the exporter never passes extra positional
        arguments (with transformers 5 they would collide with `use_cache`). Encoders without token types
        (DistilBERT) are called without them; decoders (GPT-2) without a key/value cache.
        """

        def __init__(self, encoder: torch.nn.Module, normalize: bool = True):
            super().__init__()
            self.encoder = encoder
            self.normalize = normalize
            params = _forward_params(encoder)
            self.takes_token_types = "token_type_ids" in params
            self.extra = {"use_cache": False} if "use_cache" in params else {}

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kw = dict(self.extra)
            if self.takes_token_types and token_type_ids is not None:
                kw["token_type_ids"] = token_type_ids
            h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state  # (B, T, H)
            mask = attention_mask.unsqueeze(-1).to(h.dtype)  # (B, T, 1)
            emb = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, H)
            if self.normalize:
                emb = torch.nn.functional.normalize(emb, p=2, dim=1)
            return emb

    return SentenceEmbedder


def _forward_params(module) -> set[str]:
    try:
        return set(inspect.signature(module.forward).parameters)
    except (TypeError, ValueError):
        return set(TEXT_INPUTS)


def wrap_encoder(encoder, tokenizer_path: Path | str | None, seq_len: int = 128, batch: int = 1,
                 source: str = "", normalize: bool = True) -> Artifact:
    """A torch Artifact of `encoder` wrapped as a sentence embedder, with example inputs at `seq_len` (inputs:
    input_ids, attention_mask and, where the encoder takes them, token_type_ids)."""
    import torch

    cfg = encoder.config
    model = _embedder_class()(encoder, normalize=normalize).eval()
    vocab = int(getattr(cfg, "vocab_size", 0) or 1000)
    ids = ((torch.arange(seq_len) * 7 + 101) % vocab).repeat(batch, 1)  # (B, T) in-vocabulary token ids
    names = [n for n in TEXT_INPUTS if n != "token_type_ids" or model.takes_token_types]
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    example = {n: example[n] for n in names}
    spec = InputSpec(tuple(TensorSpec(n, "int64", ("batch", "sequence")) for n in names))
    meta = {
        "source": source,
        "family": getattr(cfg, "model_type", "bert"),
        "num_heads": int(getattr(cfg, "num_attention_heads", 0) or 0),
        "hidden_size": int(getattr(cfg, "hidden_size", 0) or 0),
        "vocab_size": int(getattr(cfg, "vocab_size", 0) or 0),
        "tokenizer": str(tokenizer_path) if tokenizer_path else None,
        "task": "sentence-embedding",
        "example_inputs": example,
        "input_names": names,
        "output_names": ["sentence_embedding"],
    }
    return Artifact.from_module(model, spec, meta=meta)


def _features_class():
    import torch

    class FeatureModel(torch.nn.Module):
        """A vision or audio backbone called with its one main input; returns its pooled output where it has one
        (flattened: ResNet pools to (B, C, 1, 1)), else its last hidden state."""

        def __init__(self, backbone: torch.nn.Module, input_name: str):
            super().__init__()
            self.backbone = backbone
            self.input_name = input_name

        def forward(self, x):
            out = self.backbone(**{self.input_name: x})
            pooled = getattr(out, "pooler_output", None)
            if pooled is not None:
                return pooled.flatten(1)  # (B, C)
            return out.last_hidden_state  # (B, T, H)

    return FeatureModel


def wrap_features(backbone, folder: Path | str | None, batch: int = 1, source: str = "") -> Artifact:
    """A torch Artifact of a vision or audio backbone (`main_input_name` pixel_values, input_values or
    input_features) with a seeded example input: pictures (batch, channels, H, W) at the size its folder's
    preprocessor or config names (else 224), waveforms (batch, 1 s at its sampling rate), log-mel features
    (batch, mel bins, 2 × max_source_positions frames, Whisper's fixed window)."""
    import torch

    cfg = backbone.config
    name = backbone.main_input_name
    gen = torch.Generator().manual_seed(0)
    meta: dict = {}
    if name == "pixel_values":
        st = images.preprocessor(folder)
        size = getattr(cfg, "image_size", None)
        h, w = st.get("size") or ((size, size) if isinstance(size, int) else (images.DEFAULT_SIZE,) * 2)
        c = int(getattr(cfg, "num_channels", 0) or st.get("channels") or 3)
        shape: tuple = ("batch", c, h, w)
        task = "image-features"
    elif name == "input_values":
        st = speech.audio_settings(folder)
        sr = int(st.get("sampling_rate") or speech.SAMPLE_RATE)
        n = int(speech.DEFAULT_SECONDS * sr)
        shape = ("batch", n)
        meta.update(sampling_rate=sr, audio_samples=n)
        task = "audio-features"
    elif name == "input_features":
        st = speech.audio_settings(folder)
        bins = int(getattr(cfg, "num_mel_bins", 0) or st.get("feature_size") or 80)
        frames = 2 * int(getattr(cfg, "max_source_positions", 0) or 0) or int(st.get("nb_max_frames") or 3000)
        shape = ("batch", bins, frames)
        meta.update(sampling_rate=int(st.get("sampling_rate") or speech.SAMPLE_RATE))
        task = "audio-features"
    else:
        raise InputError(f"{source}: {type(backbone).__name__} takes {name!r}; supported: input_ids (with a "
                         "tokenizer or not), pixel_values, input_values, input_features")
    model = _features_class()(backbone, name).eval()
    example = {name: torch.randn((batch, *shape[1:]), generator=gen)}
    spec = InputSpec((TensorSpec(name, "float32", shape),))
    meta.update({
        "source": source,
        "hf_folder": str(folder) if folder else None,
        "family": getattr(cfg, "model_type", ""),
        "num_heads": int(getattr(cfg, "num_attention_heads", 0) or getattr(cfg, "encoder_attention_heads", 0) or 0),
        "hidden_size": int(getattr(cfg, "hidden_size", 0) or getattr(cfg, "d_model", 0) or 0),
        "task": task,
        "example_inputs": example,
        "input_names": [name],
        "output_names": ["features"],
    })
    return Artifact.from_module(model, spec, meta=meta)


def is_hf_folder(path: Path) -> bool:
    """A folder with a Hugging Face config.json."""
    return path.is_dir() and (path / "config.json").exists()


@register_format("hf-folder", is_hf_folder)
def load_hf_folder(path: Path, seq_len: int = 128, batch: int = 1) -> Artifact:
    """A local Hugging Face folder (config.json + safetensors weights) as a torch artifact: a text encoder as a
    sentence embedder, a vision or audio backbone as a feature extractor (`wrap_features`), a decoder-only LM
    (*ForCausalLM) as its logits (`edgeopt.zoo.llm.load_causal_lm`)."""
    import warnings

    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except Exception as e:
        raise InputError(f"{path}: unreadable Hugging Face config ({e.__class__.__name__})") from None
    weights = [p for p in path.iterdir() if p.suffix == ".safetensors"] if path.is_dir() else []
    if not weights:
        raise InputError(f"{path}: no .safetensors weights (pickled .bin weights are refused: they can run code)")
    from edgeopt.zoo.llm import is_causal_lm_config, load_causal_lm  # a decoder-only LM: its logits

    if is_causal_lm_config(config):
        return load_causal_lm(path, seq_len=seq_len, batch=batch)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            enc = AutoModel.from_pretrained(str(path), attn_implementation="eager", local_files_only=True,
                                            use_safetensors=True)
    except Exception as e:
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise InputError(f"{path}: cannot load model: {first[:200]}") from None
    enc.eval()
    if getattr(enc.config, "is_encoder_decoder", False) and hasattr(enc, "get_encoder"):
        enc = enc.get_encoder().eval()  # T5, BART, Whisper: the encoder alone (the decoder needs generated tokens)
    if getattr(enc, "main_input_name", "input_ids") != "input_ids":
        return wrap_features(enc, path, batch=batch, source=str(path))
    tok = path if (path / "tokenizer.json").exists() or (path / "vocab.txt").exists() else None
    return wrap_encoder(enc, tok, seq_len=seq_len, batch=batch, source=str(path))
