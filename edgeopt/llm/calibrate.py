"""Calibration-driven re-weighting of a Hugging Face causal LM before export: the token feed with hooks installed
(SmoothQuant, GPTQ) and the one order and calibration text in which SmoothQuant, rotation and GPTQ are applied."""

from __future__ import annotations

from typing import Any, Callable, Sequence


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


def reweight(model: Any, tokenizer: Any, *, smooth: float | None = None, smooth_sequences: int = 16,
             rotate: bool = False, gptq: dict[str, str] | None = None, gptq_sequences: int = 16,
             task: Callable[[str, int], Callable[[int], Any]] | None = None) -> dict[str, Any]:
    """SmoothQuant (alpha `smooth`), rotation and GPTQ (onto the grid of `gptq`'s variant / attention /
    feedforward) on `model` in place, in that order, each calibrated on zoo:sentences text from 0 (the held-out
    text an LLM is judged on starts at 20000; random ids without a tokenizer). `task(description, total)` returns
    a progress callable `advance(n)` (e.g. PassContext.task). Returns what each did."""
    from edgeopt.llm.measure import heldout_sequences

    vocab = int(model.config.vocab_size)
    out: dict[str, Any] = {}
    if smooth is not None:
        from edgeopt.llm.smooth import smooth as smooth_model

        out["smooth"] = smooth_model(model, heldout_sequences(tokenizer, smooth_sequences, 128, vocab, start=0, seed=7),
                                     smooth)
    if rotate:
        from edgeopt.llm.rotate import rotate as rotate_model

        out["rotate"] = rotate_model(model)
    if gptq:
        from edgeopt.llm import gptq as g

        grids = g.plan(model, gptq["variant"], gptq.get("attention", "same"), gptq.get("feedforward", "same"))
        cal = heldout_sequences(tokenizer, gptq_sequences, 128, vocab, start=0, seed=11)
        out["gptq"] = g.gptq(model, cal, grids, advance=task("GPTQ", len(grids)) if task else None)
    return out
