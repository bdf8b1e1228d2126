"""Padding-aware batches for masked sequence models (BERT-style text encoders): batches cut to their longest
sequence, length-bucketed training batches, and predictions / scores computed that way.

Text feeds are padded to the measured sequence length (128 for MiniLM) while the generated sentences average
~60 tokens; an encoder that masks its padding gives the same outputs on a batch cut to the longest sequence in
it, so training and calibration on cut batches do the same work in about half the time. Written here because
`edgeopt.train` batches fixed-size tensors and knows nothing about masks; `BucketedData` plugs into its `fit`
through the `TensorData.batches` interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from edgeopt import train as tr
from edgeopt.artifact import Artifact
from edgeopt.errors import InputError, PassError
from edgeopt.passes.base import PassContext
from edgeopt.passes.compress._common import FineTune, _resolve_feeds, feeds_to_tensors, input_names, load_inputs
from edgeopt.train import TensorData


def mask_index(names: list[str]) -> int | None:
    """Position of the attention-mask input among the model's input names (None when there is none)."""
    for i, n in enumerate(names):
        if "attention_mask" in n.lower():
            return i
    return None


def _right_padded(mask: Any) -> bool:
    """True when every row of a 2-D 0/1 mask is ones then zeros (padding on the right only)."""
    return mask.dim() == 2 and mask.shape[1] > 0 and bool((mask[:, :-1] >= mask[:, 1:]).all())


def cut(xs: tuple[Any, ...], mask_at: int | None) -> tuple[Any, ...]:
    """The batch `xs` with every [batch, seq] input cut to the longest sequence its right-padded mask marks."""
    if mask_at is None:
        return xs
    m = xs[mask_at]
    if not _right_padded(m):
        return xs
    length = max(1, int(m.sum(1).max()))
    if length == m.shape[1]:
        return xs
    return tuple(t[:, :length] if t.dim() >= 2 and t.shape[:2] == m.shape else t for t in xs)


def length_order(data: TensorData, mask_at: int | None) -> Any:
    """Sample indices sorted by sequence length (stable); identity without a 2-D mask."""
    import torch

    if mask_at is None or data.inputs[mask_at].dim() != 2:
        return torch.arange(len(data))
    return torch.argsort(data.inputs[mask_at].sum(1), stable=True)


def cut_batches(data: TensorData, batch_size: int, mask_at: int | None, order: Any = None
                ) -> Iterator[tuple[tuple[Any, ...], Any]]:
    """(inputs, targets) batches of `data` in `order` (default: stored order), each cut by `cut`."""
    import torch

    order = torch.arange(len(data)) if order is None else order
    for i in range(0, len(data), batch_size):
        idx = order[i:i + batch_size]
        yield cut(tuple(t[idx] for t in data.inputs), mask_at), (None if data.targets is None else data.targets[idx])


@dataclass
class BucketedData(TensorData):
    """TensorData whose training batches hold sequences of similar length, cut to the longest of each: the samples
    are sorted by length once, split into batches, and the batches visited in a random order each epoch (when
    `fit` gives a generator), so every sample is still seen once per epoch."""

    mask_at: int | None = None

    def batches(self, batch_size: int, generator: Any = None) -> Iterator[tuple[tuple[Any, ...], Any]]:
        import torch

        order = length_order(self, self.mask_at)
        chunks = [order[i:i + batch_size] for i in range(0, len(self), batch_size)]
        visit = torch.randperm(len(chunks), generator=generator) if generator is not None else torch.arange(len(chunks))
        for c in visit.tolist():
            idx = chunks[c]
            yield cut(tuple(t[idx] for t in self.inputs), self.mask_at), (
                None if self.targets is None else self.targets[idx])


def predict(model: Any, data: TensorData, mask_at: int | None, batch_size: int = 64) -> Any:
    """`model`'s outputs on every sample of `data`, in stored order (eval mode, no gradients; the mode is restored),
    computed on length-sorted cut batches."""
    import torch

    order = length_order(data, mask_at)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for xs, _ in cut_batches(data, batch_size, mask_at, order):
                outs.append(model(*xs))
    finally:
        model.train(was_training)
    out = torch.cat(outs)
    result = torch.empty_like(out)
    result[order] = out
    return result


def evaluate(model: Any, data: TensorData, mask_at: int | None) -> float:
    """`edgeopt.train.score` (accuracy, or mean cosine to the reference outputs) of `model` on `data`, cut batches."""
    if data.targets is None:
        raise ValueError("evaluate needs data with targets (labels or reference outputs)")
    return tr.score(predict(model, data, mask_at), data.targets)


def with_reference(data: TensorData, reference: Any, mask_at: int | None) -> TensorData:
    """`data` with `reference`'s outputs as targets where it has no labels (computed on cut batches)."""
    if data.targets is not None:
        return data
    return TensorData(data.inputs, predict(reference, data, mask_at).detach())


def art_mask_index(art: Artifact) -> int | None:
    """The attention-mask input's position for an artifact (by its input names)."""
    return mask_index(input_names(art))

