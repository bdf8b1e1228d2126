"""New weights into an existing LLM export: the fp32 .tflite of a model, rewritten for the same model with some of its
Linear weights changed (GPTQ), without converting it again.

Converting SmolLM2-135M with six signatures takes minutes; GPTQ changes nothing but weight values. So the weights
that differ between the re-authored model before and after are looked up by content among the file's constant
buffers (every copy of each, whatever signature uses it), overwritten in a copy of the file, and the copy is checked
against the new model's logits on the decode signature: a buffer the converter had folded or shared with an
unchanged weight fails the lookup or the check, and the caller converts instead (`SwapError`). Written here because
neither litert-torch nor ai-edge-quantizer replaces weights in a converted model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt.artifact import write_bytes_atomic
from edgeopt.errors import InputError
from edgeopt.llm.reauthor import generative_api, reauthor


class SwapError(InputError):
    """The export's buffers do not hold the old weights as plain copies (convert the new model instead)."""


def _buffers(data: bytearray) -> list[np.ndarray]:
    """Writable uint8 views of the constant buffers of the flatbuffer in `data` (inline or at a file offset)."""
    from ai_edge_litert import schema_py_generated as S  # lazy: optional extra

    model = S.Model.GetRootAsModel(data, 0)
    whole = np.frombuffer(data, dtype=np.uint8)
    views = []
    for i in range(model.BuffersLength()):
        b = model.Buffers(i)
        if b.Offset() > 1:  # stored after the flatbuffer (large models)
            views.append(whole[b.Offset():b.Offset() + b.Size()])
        elif b.DataLength() > 0:
            views.append(b.DataAsNumpy())
        else:
            views.append(whole[:0])
    return views


def _matches(view: np.ndarray, weight: np.ndarray) -> bool:
    got = np.frombuffer(view, dtype=np.float32)  # a view of the file's bytes (possibly unaligned: numpy copes)
    scale = float(np.abs(weight[:256]).max()) or 1.0
    if not np.allclose(got[:256], weight[:256], rtol=1e-5, atol=1e-6 * scale):
        return False
    return bool(np.allclose(got, weight, rtol=1e-5, atol=1e-6 * float(np.abs(weight).max() or 1.0)))


def swap_weights(src: Path, out: Path, before: Any, after: Any, kv_cache_max_len: int, kv_layout: str = "default",
                 rtol: float = 1e-4) -> dict[str, Any]:
    """Write to `out` the fp32 LLM export `src` of the HF causal LM `before` with the weights of `after` (the same
    architecture; only Linear weights may differ), checked against `after`'s re-authored logits (relative error
    <= `rtol`) on three tokens through the decode signature. Raises SwapError when a changed weight has no copy in
    `src`, shares a buffer with an unchanged one, or the check fails. Returns what was swapped and the check."""
    api = generative_api()
    old = {k: v.detach().float().contiguous().numpy() for k, v in reauthor(before, kv_cache_max_len, api).state_dict().items()}
    new_model = reauthor(after, kv_cache_max_len, api)
    new = {k: v.detach().float().contiguous().numpy() for k, v in new_model.state_dict().items()}
    if old.keys() != new.keys():
        raise SwapError("the two models have different weights (names); convert instead")
    if any(old[k].shape != new[k].shape for k in new):
        raise SwapError("a weight changed shape; convert instead")
    changed = [k for k in new if not np.array_equal(old[k], new[k])]
    data = bytearray(Path(src).read_bytes())
    views = _buffers(data)
    by_size: dict[int, list[int]] = {}
    for i, v in enumerate(views):
        if v.size >= 64:
            by_size.setdefault(int(v.size), []).append(i)
    targets: dict[int, str] = {}
    for k in changed:
        w = old[k].ravel()
        hits = [i for i in by_size.get(w.nbytes, []) if _matches(views[i], w)]
        if not hits:
            raise SwapError(f"{k} has no plain copy in {Path(src).name} (the converter folded it); convert instead")
        targets.update({i: k for i in hits})
    # a buffer the converter shared between a changed weight and an unchanged one with the same values
    for k in new:
        if k not in changed and any(_matches(views[i], old[k].ravel()) for i in by_size.get(old[k].nbytes, [])
                                    if i in targets):
            raise SwapError(f"{k} shares a buffer with a changed weight; convert instead")
    for i, k in targets.items():
        views[i][:] = np.frombuffer(new[k].tobytes(), dtype=np.uint8)
    check = _check(bytes(data), new_model, kv_cache_max_len, kv_layout, api)
    if check["rel_error"] > rtol:
        raise SwapError(f"the rewritten export does not compute the new model (relative logit error "
                        f"{check['rel_error']:.2e} > {rtol:.0e}); convert instead")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, bytes(data))
    return {"weights": len(changed), "buffers": len(targets), "verification": check}


def _check(content: bytes, model: Any, kv_cache_max_len: int, kv_layout: str, api: Any) -> dict[str, Any]:
    """The decode signature's logits for three single tokens at position 0 against the re-authored model's
    (`export.decode_check`); SwapError when LiteRT cannot load the rewritten file."""
    from edgeopt.llm.export import decode_check

    vocab = int(model.config.vocab_size)
    try:
        return decode_check(content, model, kv_cache_max_len, kv_layout, api, tokens=(13, 7932, vocab - 5),
                            signatures=["decode"])
    except InputError as e:
        raise SwapError(f"{e} in the rewritten export") from None


def gptq_into(model: Any, tokenizer: Any, src: Path, out: Path, facts: dict[str, Any], gptq: dict[str, str],
              sequences: int = 16, task: Callable[[str, int], Callable[[int], Any]] | None = None) -> dict[str, Any]:
    """The fp32 export `src` of the HF causal LM `model` (untouched here), re-weighted as `facts` (its llm.json)
    records (SmoothQuant, rotation: edgeopt.llm.calibrate.reweight, same order and calibration text), written to
    `out` with the weights GPTQ rounds onto `gptq`'s grid (variant / attention / feedforward) swapped in. When the
    file does not hold the re-weighted weights as plain copies (e.g. made from other calibration text), the GPTQ-ed
    model is converted instead with the export's settings. Returns GPTQ's facts and `gptq_export` (how: swap or
    convert, with the reason, and the logit check)."""
    import copy

    from edgeopt.llm.calibrate import reweight
    from edgeopt.llm.export import convert

    smooth = facts.get("smooth") or {}
    before = copy.deepcopy(model)
    reweight(before, tokenizer, smooth=smooth.get("alpha"), smooth_sequences=int(smooth.get("sequences", 16)),
             rotate=bool(facts.get("rotate")))
    after = copy.deepcopy(before)
    done = reweight(after, tokenizer, gptq=gptq, gptq_sequences=sequences, task=task)
    kv, layout = int(facts["kv_cache_max_len"]), facts.get("kv_layout", "default")
    try:
        done["gptq_export"] = {"method": "swap", **swap_weights(src, out, before, after, kv, layout)}
    except SwapError as e:
        made = convert(after, out, prefill_lens=facts["prefill_lens"], kv_cache_max_len=kv,
                       score_len=facts.get("score_len"), kv_layout=layout, decode_windows=facts.get("decode_windows", []))
        done["gptq_export"] = {"method": "convert", "reason": str(e), "verification": made["verification"]}
    return done
