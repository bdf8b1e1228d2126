"""Per-layer measurement of a kernel swap: latency, throughput, peak intermediate memory and error, before vs after.

The kernel passes record one such record per swapped layer in the ledger (`ctx.notes[<pass>]["per_layer"]`):
the layer's inputs are captured from one run of the model on its example input, then the untouched layer
("before") and its replacement ("after") are called on those same inputs:

- latency: median of interleaved calls (`edgeopt.measure.latency.measure_interleaved`, rotated order, pinned
  intra-op threads), so noise hits both alike; throughput = batch items per second at that median.
- peak intermediate memory: bytes of the tensors the call allocates and does not return, replayed op by op
  from a TorchDispatchMode (`peak_intermediate_bytes`). Workspace an ATen kernel keeps inside itself
  (oneDNN's convolution buffers, SDPA's blocks) is invisible to it: "before" of a library kernel reads 0.
- error: norm-wise relative error ||after - before|| / ||before|| and the largest absolute deviation.

The helpers below are what every kernel measurement shares (the Winograd tuner, the attention pass, the
micro-benchmarks of `edgeopt.measure.kernels`): `relative_error`, `time_interleaved` of zero-argument
callables and `call_with` an example input.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import torch
from torch import nn

from edgeopt.measure.latency import measure_interleaved


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _tensors(obj: Any) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def first_tensor(out: Any) -> torch.Tensor:
    """The first tensor of a module's output (a tensor, a tuple/list, a dict or a dataclass output)."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "to_tuple"):  # diffusers / transformers output dataclasses
        out = out.to_tuple()
    ts = _tensors(out)
    if not ts:
        raise ValueError(f"output of type {type(out).__name__} holds no tensor")
    return ts[0]


def relative_error(y: torch.Tensor, ref: torch.Tensor) -> float:
    """Norm-wise relative error ||y - ref||₂ / ||ref||₂, computed in float64.

    Norm-wise rather than element-wise: the largest single deviation grows with the number of outputs
    looked at, the norm-wise error is what the error analyses of Winograd convolution bound.
    """
    y64, r64 = y.detach().to(torch.float64), ref.detach().to(torch.float64)
    return float(torch.linalg.vector_norm(y64 - r64) / torch.linalg.vector_norm(r64).clamp_min(1e-300))


def call_with(module: Any, example: Any) -> Any:
    """Call `module` on an example input: a tensor, a tuple/list of tensors, or a dict of named inputs in order.

    A dict's values are passed positionally, as edgeopt's runners and convert.onnx pass named inputs.
    """
    if isinstance(example, dict):
        return module(*example.values())
    if isinstance(example, (tuple, list)):
        return module(*example)
    return module(example)


class CallRunner:
    """Adapter: a zero-argument callable as a runner for edgeopt.measure.latency.measure_interleaved."""

    def __init__(self, name: str, fn: Callable[[], Any], threads: int):
        self.name, self.fn, self.threads = name, fn, threads

    def run(self, feed: Any) -> Any:
        return self.fn()

    def close(self) -> None:
        pass


def time_interleaved(fns: dict[str, Callable[[], Any]], runs: int = 5, warmup: int = 1,
                     threads: int | None = None) -> dict[str, float]:
    """Median milliseconds of each zero-argument callable, timed interleaved (rotated order) with `threads`."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        n = torch.get_num_threads()
        with torch.inference_mode():
            stats = measure_interleaved({k: CallRunner(k, f, n) for k, f in fns.items()}, feed={},
                                        warmup=warmup, runs=runs)
    finally:
        torch.set_num_threads(before)
    return {k: s.p50 for k, s in stats.items()}


def peak_intermediate_bytes(fn: Callable[[], Any], keep: Any = ()) -> int:
    """Peak bytes of the tensors `fn()` allocates and does not return, measured op by op.

    A TorchDispatchMode sees every tensor each ATen op creates; a storage counts from its creation until the
    last tensor viewing it dies, replayed afterwards without the storages of what `fn` returns. Tensors in
    `keep` (the inputs) and storages that existed before the call are never counted. Workspace an op keeps
    inside itself is invisible.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    events: list[tuple[int, int]] = []  # (allocation id, +bytes | -bytes) in time order
    known = {_storage_key(t) for t in _tensors(keep)}

    class _Track(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.live: dict[int, list[int]] = {}  # storage ptr -> [allocation id, bytes, tensors alive]
            self.next_id = 0

        def _release(self, ptr: int, alloc_id: int) -> None:
            rec = self.live.get(ptr)
            if rec is None or rec[0] != alloc_id:
                return
            rec[2] -= 1
            if rec[2] == 0:
                events.append((alloc_id, -rec[1]))
                del self.live[ptr]

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in _tensors(out):
                ptr = _storage_key(t)
                if ptr == 0 or ptr in known:
                    continue
                rec = self.live.get(ptr)
                if rec is None:
                    if any(ptr == _storage_key(a) for a in _tensors((args, kwargs))):
                        continue  # an in-place op or a view of an existing tensor: nothing new allocated
                    rec = self.live[ptr] = [self.next_id, t.untyped_storage().nbytes(), 0]
                    events.append((rec[0], rec[1]))
                    self.next_id += 1
                rec[2] += 1
                weakref.finalize(t, self._release, ptr, rec[0])
            return out

    with torch.inference_mode(), _Track() as track:
        out = fn()
    returned = {track.live[k][0] for k in {_storage_key(t) for t in _tensors(out)} if k in track.live}
    cur = peak = 0
    for alloc_id, delta in events:
        if alloc_id not in returned:
            cur += delta
            peak = max(peak, cur)
    del out
    return int(peak)


def capture_inputs(model: nn.Module, names: list[str], example: Any) -> dict[str, tuple[tuple, dict]]:
    """{name: (args, kwargs)} each named submodule received on its first call while `model` runs `example`.

    Tensors are cloned, so later in-place changes by the model do not alter them. Names never reached are
    missing from the result.
    """
    from torch.utils._pytree import tree_map

    captured: dict[str, tuple[tuple, dict]] = {}
    hooks = []
    for name in names:
        def hook(mod, args, kwargs, name=name):
            if name not in captured:
                captured[name] = tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t,
                                          (tuple(args), dict(kwargs)))
        hooks.append(model.get_submodule(name).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with torch.inference_mode():
            call_with(model, example)
    finally:
        for h in hooks:
            h.remove()
    return captured


def _batch_of(args: tuple, kwargs: dict) -> int:
    ts = _tensors((args, kwargs))
    return int(ts[0].shape[0]) if ts and ts[0].dim() > 0 else 1


def compare_layers(items: dict[str, dict[str, Any]], runs: int = 5, warmup: int = 1,
                   threads: int | None = None) -> dict[str, dict[str, Any]]:
    """Measure, for every named layer, the untouched layer against its replacement on the same inputs.

    `items`: {name: {"before": callable, "after": callable, "args": tuple, "kwargs": dict,
    "label_before": str, "label_after": str}}. All 2·len(items) calls are timed in one interleaved session
    (one warm-up and garbage-collection pause for the lot). Returns {name: {before, after (labels),
    input_shapes, batch, latency_ms {before, after}, speedup, throughput_per_s {before, after} (batch items
    per second), peak_intermediate_bytes {before, after}, rel_error, max_abs_error, threads, runs}}, JSON-ready.
    """
    out: dict[str, dict[str, Any]] = {}
    fns: dict[tuple[str, str], Callable[[], Any]] = {}
    for name, it in items.items():
        before, after, args, kwargs = it["before"], it["after"], tuple(it.get("args", ())), dict(it.get("kwargs") or {})
        with torch.inference_mode():
            y0 = first_tensor(before(*args, **kwargs))
            y1 = first_tensor(after(*args, **kwargs))
        if y0.shape != y1.shape:
            raise ValueError(f"{name}: output shape {tuple(y1.shape)} differs from the untouched {tuple(y0.shape)}")
        max_abs = float((y1.detach().double() - y0.detach().double()).abs().max()) if y0.numel() else 0.0
        rel = relative_error(y1, y0)
        del y0, y1
        mem = {k: peak_intermediate_bytes(lambda f=f: f(*args, **kwargs), keep=(args, kwargs))
               for k, f in (("before", before), ("after", after))}
        for k, f in (("before", before), ("after", after)):
            fns[(name, k)] = lambda f=f, args=args, kwargs=kwargs: f(*args, **kwargs)
        out[name] = {"before": it.get("label_before", ""), "after": it.get("label_after", ""),
                     "input_shapes": [list(t.shape) for t in _tensors((args, kwargs))],
                     "batch": _batch_of(args, kwargs), "peak_intermediate_bytes": mem, "rel_error": rel,
                     "max_abs_error": max_abs}
    if not fns:
        return out
    keys = list(fns)
    lat = time_interleaved({f"{i}": fns[k] for i, k in enumerate(keys)}, runs=runs, warmup=warmup, threads=threads)
    ms = {k: lat[f"{i}"] for i, k in enumerate(keys)}
    n_threads = int(threads or torch.get_num_threads())
    for name, rec in out.items():
        b, a = ms[(name, "before")], ms[(name, "after")]
        rec["latency_ms"] = {"before": b, "after": a}
        rec["speedup"] = b / a if a > 0 else None
        rec["throughput_per_s"] = {k: (1000.0 * rec["batch"] / v if v > 0 else None) for k, v in
                                   (("before", b), ("after", a))}
        rec["threads"], rec["runs"] = n_threads, runs
    return out


def compare_layer(before: Callable[..., Any], after: Callable[..., Any], args: tuple = (),
                  kwargs: dict | None = None, runs: int = 5, warmup: int = 1, threads: int | None = None,
                  label_before: str = "", label_after: str = "") -> dict[str, Any]:
    """`compare_layers` for one layer: the record of `before` (untouched) against `after` on `args`, `kwargs`."""
    item = {"before": before, "after": after, "args": args, "kwargs": kwargs, "label_before": label_before,
            "label_after": label_after}
    return compare_layers({"layer": item}, runs=runs, warmup=warmup, threads=threads)["layer"]


__all__ = ["relative_error", "call_with", "CallRunner", "time_interleaved", "first_tensor", "peak_intermediate_bytes",
           "capture_inputs", "compare_layers", "compare_layer"]
