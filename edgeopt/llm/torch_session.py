"""PyTorch reference runtime for LLMs: a Hugging Face causal LM and its KV cache as an LlmSession (fp32 or dynamic int8)."""

from __future__ import annotations

import inspect
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeopt.errors import InputError
from edgeopt.llm.session import check_prompt


def quantize_int8(model: Any) -> Any:
    """The model with every nn.Linear replaced by PyTorch's dynamic int8 Linear (int8 weights per tensor, activations
    quantized per call; fbgemm / onednn kernels on x86), through `torch.ao.quantization.quantize_dynamic`.

    torch 2.13 still ships it (with a deprecation warning pointing at torchao, silenced here); torchao's
    replacement (`Int8DynamicActivationInt8WeightConfig`) targets torch.compile and CUDA first, so the eager CPU
    path that a reference row needs stays on the original API while it exists. The embedding stays fp32.
    Measured on SmolLM2-135M (torch 2.13, torchao 0.18, 2 threads): torchao's int8 (per-token activation scales)
    kept logits at cosine 0.9993 but decoded at ~1.6 s/token in eager mode (no fast CPU kernel), so it is not
    used. The cost of this one: activations get one scale per tensor, so over a whole prompt a token with huge
    activations (SmolLM2's first tokens) coarsens every other row; teacher-forced logits of a 128-token text
    prompt fell to cosine 0.45 (mean) against fp32, while one-token decode steps stay close (greedy text agreed).
    """
    import torch  # lazy: torch is only needed when a torch session is built

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice, once per call
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class TorchLlm:
    """A Hugging Face `*ForCausalLM` driven through its own KV cache (a DynamicCache, passed as `cache`; as
    `past_key_values` before transformers 5.24).

    `prefill` drops the cache and runs the prompt (logits of its last token only, `logits_to_keep=1`), `decode`
    appends one token to the cache, `score` runs one forward without a cache. Everything runs under
    `torch.inference_mode` with `threads` intra-op threads (torch's setting is process-wide: it is set before every
    call and restored by `close`). `int8=True` applies dynamic int8 quantization to the nn.Linear layers
    (`quantize_int8`, on a copy: `model` stays fp32); the session is then named "torch-int8", else "torch".
    `max_cache` is capped by the model's `max_position_embeddings`; `max_prompt` equals it (no fixed prefill size).
    """

    def __init__(self, model: Any, *, threads: int = 2, max_cache: int = 2048, int8: bool = False,
                 name: str | None = None):
        import torch  # lazy: torch is only needed when a torch session is built

        if int(threads) < 1:
            raise InputError(f"threads must be >= 1, got {threads}")
        if int(max_cache) < 1:
            raise InputError(f"max_cache must be >= 1, got {max_cache}")
        cfg = getattr(model, "config", None)
        if cfg is None or not hasattr(cfg, "vocab_size"):
            raise InputError(f"{type(model).__name__} is not a Hugging Face causal LM (it has no config.vocab_size)")
        self.threads = int(threads)
        self._threads_before = torch.get_num_threads()
        model = model.eval()
        self.model: Any = quantize_int8(model) if int8 else model
        self.int8 = bool(int8)
        self.name = name or ("torch-int8" if int8 else "torch")
        self.vocab_size = int(cfg.vocab_size)
        limit = int(getattr(cfg, "max_position_embeddings", 0) or max_cache)
        self.max_cache = min(int(max_cache), limit)
        self.max_prompt = self.max_cache
        self._cache: Any = None
        self._n = 0
        # transformers 5.24 renamed forward's `past_key_values` to `cache` (the old name warns until 5.40)
        params = inspect.signature(self.model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"

    def _forward(self, ids: Sequence[int], **kw: Any) -> Any:
        import torch  # lazy: torch is only needed when a torch session is built

        if self.model is None:
            raise InputError(f"{self.name}: the session is closed")
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        x = torch.as_tensor(np.asarray(ids, dtype=np.int64).reshape(1, -1))
        with torch.inference_mode():
            return self.model(input_ids=x, **kw)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """Reset the cache, run the prompt, return the logits (vocab,) of the token after it."""
        check_prompt(self, len(ids))
        from transformers import DynamicCache  # lazy: transformers imports torch

        self._cache, self._n = None, 0
        cache = DynamicCache(config=self.model.config)  # filled in place by the forward
        out = self._forward(ids, use_cache=True, logits_to_keep=1, **{self._cache_kw: cache})
        self._cache, self._n = cache, len(ids)
        return out.logits[0, -1].float().numpy()

    def decode(self, token: int) -> np.ndarray:
        """Append one token to the cache, return the next token's logits (vocab,)."""
        if self._cache is None:
            raise InputError(f"{self.name}: decode before prefill (no prompt in the cache)")
        if self._n + 1 > self.max_cache:
            raise InputError(f"{self.name}: the KV cache is full ({self.max_cache} tokens)")
        out = self._forward([int(token)], use_cache=True, **{self._cache_kw: self._cache})
        self._n += 1
        return out.logits[0, -1].float().numpy()

    def score(self, ids: Sequence[int]) -> np.ndarray:
        """Teacher-forced logits (len(ids), vocab), float32, from one forward without a cache."""
        check_prompt(self, len(ids))
        out = self._forward(ids, use_cache=False)
        return out.logits[0].float().numpy()

    def close(self) -> None:
        import torch  # lazy: torch is only needed when a torch session is built

        if self.model is not None:
            self.model, self._cache = None, None
            torch.set_num_threads(self._threads_before)

    def __enter__(self) -> TorchLlm:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def load_torch_llm(folder: str | Path, *, attn_implementation: str = "sdpa", **kw: Any) -> TorchLlm:
    """A TorchLlm of a local Hugging Face causal-LM folder (config.json + safetensors; nothing is downloaded).

    `kw` go to TorchLlm (threads, max_cache, int8, name). The weights load in float32.
    """
    import torch  # lazy: torch is only needed when a torch session is built
    from transformers import AutoModelForCausalLM  # lazy: transformers imports torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars on every load
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise InputError(f"{folder}: not a Hugging Face model folder (no config.json)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True, use_safetensors=True,
                                                         dtype=torch.float32, attn_implementation=attn_implementation)
    except Exception as e:
        raise InputError(f"{folder}: cannot load the causal LM: {(str(e).strip().splitlines() or [''])[0][:200]}") from None
    return TorchLlm(model, **kw)
