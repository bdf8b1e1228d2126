"""What every converter from PyTorch shares: example inputs to trace with, PyTorch's reference outputs, held-out
feeds, and the error measures an export is validated with (relative max error, lowest cosine)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgeopt.artifact import Artifact
from edgeopt.data import random_feeds
from edgeopt.measure.fidelity import cosine_rows
from edgeopt.measure.runners import _to_numpy_list
from edgeopt.passes.base import PassContext

FP32_REL_TOL = 1e-4  # an fp32 export: max |converted - torch| over max |torch|, per output


def example_args(art: Artifact, ctx: PassContext, batch: int = 1) -> list[Any]:
    """Torch tensors to trace with, one per input in input_spec order, with `batch` samples: the artifact's
    example inputs (their first sample, repeated) or, without them, random inputs shaped by the spec."""
    import torch  # lazy: torch only when a conversion runs

    names = art.input_spec.names
    example = art.meta.get("example_inputs")
    if isinstance(example, dict) and all(n in example for n in names):
        tensors = [example[n] for n in names]
    elif isinstance(example, (tuple, list)) and len(example) == len(names):
        tensors = list(example)
    else:
        seq = int(getattr(ctx.measure, "seq_len", 0) or 128)
        feed = random_feeds(art.input_spec, 1, {"batch": 1, "sequence": seq}, seed=0)[0]
        tensors = [torch.from_numpy(np.ascontiguousarray(feed[n])) for n in names]
    return [t[:1].repeat(batch, *([1] * (t.dim() - 1))).contiguous() for t in tensors]


def contiguous_weights(module: Any) -> Any:
    """`module` with every parameter and buffer that is a strided view (e.g. a transposed weight) copied into its own
    contiguous memory, in place; returns it. litert-torch 0.10 exports some such weights with the wrong layout: a
    MiniLM whose Linear weights were transposed views converted 0.8 relative off in fp32, with no error of its own."""
    import torch  # lazy: torch only when a conversion runs

    with torch.no_grad():
        for t in (*module.parameters(), *module.buffers()):
            if not t.is_contiguous():
                t.data = t.data.contiguous()
    return module


def torch_outputs(module: Any, args: list[Any]) -> list[np.ndarray]:
    """The module's outputs on `args` as a flat list of numpy arrays (the order runners return)."""
    import torch  # lazy: torch only when a conversion runs

    with torch.inference_mode():
        return _to_numpy_list(module(*args))


def held_out(art: Artifact, ctx: PassContext, args: list[Any], limit: int = 4) -> list[dict[str, np.ndarray]]:
    """Feeds to validate an export on: up to `limit` evaluation feeds (else calibration feeds), else the example."""
    feeds = [f for f in (ctx.evaluation or ctx.calibration)[:limit] if all(n in f for n in art.input_spec.names)]
    if feeds:
        return [{n: np.asarray(f[n]) for n in art.input_spec.names} for f in feeds]
    return [{n: a.numpy() for n, a in zip(art.input_spec.names, args)}]


def relative_error(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """The worst, over outputs, of max |got - ref| / max |ref| (NaN or a shape mismatch: inf)."""
    worst = 0.0
    for r, g in zip(ref, got):
        if r.shape != g.shape:
            return float("inf")
        r64, g64 = r.astype(np.float64), g.astype(np.float64)
        err = float(np.max(np.abs(r64 - g64))) / max(float(np.max(np.abs(r64))), 1e-12) if r.size else 0.0
        worst = max(worst, err if np.isfinite(err) else float("inf"))
    return worst


def min_cosine(ref: list[np.ndarray], got: list[np.ndarray]) -> float:
    """The lowest per-sample cosine over all outputs."""
    return float(min(np.min(cosine_rows(r, g)) for r, g in zip(ref, got)))
