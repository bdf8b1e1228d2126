"""Helpers the compression passes share: copying the input module, example inputs, the training data a pass
fine-tunes on (labelled when the data has labels, else the input model's own outputs), and new artifacts."""

from __future__ import annotations

import fnmatch
from typing import Any

from pydantic import Field, field_validator

from edgeopt import data as data_mod
from edgeopt import train as tr
from edgeopt.artifact import Artifact, register_builder
from edgeopt.errors import InputError, PassError
from edgeopt.passes.base import PassConfig, PassContext, torch_module_copy
from edgeopt.train import TensorData, TrainConfig


class FineTune(PassConfig):
    """Where a pass gets its training data and how it trains (shared by every pass that fine-tunes).

    `data`: a data spec (`zoo:digits[train]`, `zoo:sentences[320:640]`, an .npz ...); None means the model's
    own training data (`meta["train_data"]`, e.g. zoo:digits-cnn's train split), else the calibration data.
    A `val_fraction` of it is held out to score rounds and stop early (the eval data is never trained on).
    """

    data: str | None = None
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    limit: int | None = Field(default=None, ge=2, description="use at most this many training samples")
    train: TrainConfig = TrainConfig(epochs=3, patience=2, lr=1e-3)

    @field_validator("train", mode="before")
    @classmethod
    def _merge_train(cls, v: Any) -> Any:
        """A partial `train` mapping overrides only the fields it names; the pass's own defaults stay."""
        if isinstance(v, dict):
            return {**cls.model_fields["train"].default.model_dump(), **v}
        return v


def module_copy(art: Artifact, pass_name: str) -> Any:
    """A deep copy of the artifact's live module in eval mode (a pass never mutates its input)."""
    return torch_module_copy(art, pass_name).eval()


def input_names(art: Artifact) -> list[str]:
    return list(art.meta.get("input_names") or art.input_spec.names)


def example_args(art: Artifact, ctx: PassContext | None, pass_name: str) -> tuple[Any, ...]:
    """The model's example inputs as a positional tuple: meta["example_inputs"], else the first calibration feed."""
    ex = art.meta.get("example_inputs")
    if ex is not None:
        import torch

        if isinstance(ex, torch.Tensor):
            return (ex,)
        return tuple(ex.values()) if isinstance(ex, dict) else tuple(ex)
    if ctx is not None and ctx.calibration:
        return data_mod.to_torch_args(ctx.calibration[0], input_names(art))
    raise PassError(f"{pass_name}: needs example inputs (artifact meta 'example_inputs' or calibration data)")


def feeds_to_tensors(feeds: list[dict[str, Any]], names: list[str]) -> tuple[tuple[Any, ...], Any]:
    """Concatenate feeds along the batch axis: (input tensors in `names` order, labels or None)."""
    import numpy as np
    import torch

    xs = tuple(torch.from_numpy(np.ascontiguousarray(np.concatenate([f[n] for f in feeds]))) for n in names)
    labels = None
    if feeds and data_mod.LABEL_KEY in feeds[0]:
        labels = torch.from_numpy(np.concatenate([np.atleast_1d(f[data_mod.LABEL_KEY]) for f in feeds]).astype(np.int64))
    return xs, labels


def _resolve_feeds(spec: str, art: Artifact, ctx: PassContext) -> list[dict[str, Any]]:
    seq_len = int(getattr(ctx.measure, "seq_len", 0) or 0)
    if not seq_len:
        ex = art.meta.get("example_inputs")
        first = next(iter(ex.values())) if isinstance(ex, dict) else (ex[0] if ex is not None else None)
        seq_len = int(first.shape[-1]) if first is not None and first.dim() == 2 else 128
    return data_mod.resolve(spec, art, seq_len=seq_len, batch=32, role="calibration", default_slice=slice(None))


def load_inputs(art: Artifact, ctx: PassContext, cfg: FineTune, pass_name: str) -> TensorData:
    """The samples a pass trains or calibrates on (`cfg.data`, else the model's training data, else the
    calibration data; at most `cfg.limit`), with their labels as targets when the data has labels, else none
    (see `with_reference`)."""
    spec = cfg.data or art.meta.get("train_data")
    try:
        feeds = _resolve_feeds(spec, art, ctx) if spec else list(ctx.calibration)
    except InputError as e:
        raise PassError(f"{pass_name}: field 'data': {e}") from None
    if not feeds:
        raise PassError(f"{pass_name}: no training data: set 'data' or give calibration data")
    xs, labels = feeds_to_tensors(feeds, input_names(art))
    data = TensorData(xs, labels)
    if cfg.limit is not None and len(data) > cfg.limit:
        data = data.subset(slice(0, cfg.limit))
    return data


def task_data(art: Artifact, ctx: PassContext, cfg: FineTune, reference: Any, pass_name: str) -> TensorData:
    """The samples a pass fine-tunes and scores on, as TensorData.

    Targets are the labels when the data has them; otherwise `reference`'s outputs on the inputs (the
    pass then recovers agreement with the model it started from, and scores by cosine to it).
    """
    data = load_inputs(art, ctx, cfg, pass_name)
    if data.targets is None:
        data = TensorData(data.inputs, tr.predict(reference, data).detach())
    return data


def matches(name: str, patterns: tuple[str, ...]) -> bool:
    """True when a module name matches one of the fnmatch patterns (or equals it / starts with it + '.')."""
    return any(fnmatch.fnmatchcase(name, p) or name == p or name.startswith(p + ".") for p in patterns)


def derived(module: Any, art: Artifact, rebuild: tuple[str, dict[str, Any]] | None, **meta: Any) -> Artifact:
    """A new torch artifact of `module` with the input's spec and meta (updated by `meta`).

    `rebuild`: (builder name, JSON args) that rebuild `module`'s architecture from `art` (see
    edgeopt.artifact.register_builder), so a pipeline can save the stage and resume it; None: not resumable.
    """
    module.eval()
    return Artifact.from_module(module, art.input_spec, meta={**art.meta, **meta}, rebuild=rebuild)


@register_builder("copy")
def copy_of_parent(parent: Artifact, args: dict[str, Any], ctx: Any) -> Any:
    """Rebuild for passes that keep the architecture (only weights change): a copy of the input module."""
    return module_copy(parent, "copy")


def param_count(module: Any) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def forward_with_hooks(model: Any, example: tuple[Any, ...], kinds: tuple[type, ...], make_hook: Any) -> None:
    """One no-grad forward of `model` on `example` with `make_hook(name)` as a forward hook on every module
    of one of `kinds`; the hooks are removed afterwards, also when the forward fails."""
    import torch

    handles = [m.register_forward_hook(make_hook(name)) for name, m in model.named_modules() if isinstance(m, kinds)]
    try:
        with torch.no_grad():
            model(*example)
    finally:
        for h in handles:
            h.remove()


def layer_macs(model: Any, example: tuple[Any, ...]) -> dict[str, int]:
    """Multiply-accumulates per sample of every Conv / Linear module (by name) on `example`, from forward hooks."""
    import torch
    from torch import nn

    macs: dict[str, int] = {}

    def hook(name):
        def fn(mod, _inp, out):
            if not isinstance(out, torch.Tensor) or out.dim() == 0:
                return
            per_sample = out.numel() // max(1, out.shape[0])
            if isinstance(mod, nn.modules.conv._ConvNd):
                k = 1
                for d in mod.kernel_size:
                    k *= d
                macs[name] = macs.get(name, 0) + per_sample * (mod.in_channels // mod.groups) * k
            else:
                macs[name] = macs.get(name, 0) + per_sample * mod.in_features
        return fn

    forward_with_hooks(model, example, (nn.modules.conv._ConvNd, nn.Linear), hook)
    return macs
