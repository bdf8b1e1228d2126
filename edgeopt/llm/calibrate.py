"""Run calibration token sequences through a Hugging Face causal LM with hooks installed (SmoothQuant, GPTQ)."""

from __future__ import annotations

from typing import Any, Sequence


def feed(model: Any, sequences: Sequence[Sequence[int]], hooks: Sequence[Any]) -> None:
    """Run each of `sequences` (token ids) through `model` without a KV cache, then remove `hooks` (the handles
    of the hooks that collect what the caller needs), also when a forward pass fails."""
    import torch  # lazy: heavy

    try:
        with torch.inference_mode():
            for ids in sequences:
                model(input_ids=torch.as_tensor([list(ids)], dtype=torch.long), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
