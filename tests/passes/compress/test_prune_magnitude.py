"""prune.magnitude: the sparsity reached, what stays untouched, and the compressed-size note."""

from __future__ import annotations

import pytest
import torch

from edgeopt.errors import RecipeError
from edgeopt.passes.base import build_pass


def _weights(model):
    return {n: m.weight for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def test_global_sparsity_reached_and_survivors_unchanged(tiny_digits_cnn, ctx):
    before = {k: v.clone() for k, v in tiny_digits_cnn.module.state_dict().items()}
    out = build_pass("prune.magnitude", {"sparsity": 0.6})(tiny_digits_cnn, ctx)
    notes = ctx.notes["prune.magnitude"]
    total = sum(w.numel() for w in _weights(out.module).values())
    zeros = sum(int((w == 0).sum()) for w in _weights(out.module).values())
    assert zeros / total == pytest.approx(0.6, abs=1 / total) and notes["sparsity"] == pytest.approx(zeros / total)
    assert len(set(notes["layers"].values())) > 1, "global ranking: layers end up with different sparsities"
    sd = out.module.state_dict()
    for k, w in before.items():
        kept = sd[k] != 0
        assert torch.equal(sd[k][kept], w[kept]), f"{k}: surviving weights keep their values"
        if not k.endswith("weight") or "bn" in k or w.dim() == 1:
            assert torch.equal(sd[k], w), f"{k}: biases and norms untouched"
    assert all(torch.equal(tiny_digits_cnn.module.state_dict()[k], v) for k, v in before.items()), "input untouched"
    assert notes["zipped_bytes_after"] < 0.8 * notes["zipped_bytes_before"]
    assert "no speed-up" in notes["runtime_note"]
    assert not any(hasattr(m, "weight_mask") for m in out.module.modules()), "made permanent: no masks left"


def test_layer_scope_prunes_every_layer_alike(tiny_digits_cnn, ctx):
    out = build_pass("prune.magnitude", {"sparsity": 0.5, "scope": "layer", "exclude": ["classifier"]})(tiny_digits_cnn, ctx)
    layers = ctx.notes["prune.magnitude"]["layers"]
    assert "classifier" not in layers and torch.count_nonzero(out.module.classifier.weight) == out.module.classifier.weight.numel()
    for name, w in _weights(out.module).items():
        if name != "classifier":
            assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=1 / w.numel() + 1e-9), name


def test_zero_sparsity_is_the_same_model(tiny_digits_cnn, ctx):
    out = build_pass("prune.magnitude", {"sparsity": 0.0})(tiny_digits_cnn, ctx)
    x = tiny_digits_cnn.meta["example_inputs"]["image"]
    with torch.no_grad():
        assert torch.equal(out.module(x), tiny_digits_cnn.module(x))


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5])
def test_sparsity_outside_range_is_refused(value):
    with pytest.raises(RecipeError, match="sparsity"):
        build_pass("prune.magnitude", {"sparsity": value})
