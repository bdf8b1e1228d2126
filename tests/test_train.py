"""The shared training loop: seeded determinism, early stopping that restores the best weights, evaluation."""

from __future__ import annotations

import pytest
import torch

from edgeopt import train as tr


def _toy(n: int = 256, seed: int = 0):
    """Two Gaussian blobs in 8-D: linearly separable, labels 0/1."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 8, generator=g) + (y.float() * 2 - 1).unsqueeze(1) * 1.5
    return tr.TensorData((x,), y)


def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))


def test_fit_learns_and_is_deterministic():
    data = _toy()
    fit, val = data.split(0.25, seed=0)
    cfg = tr.TrainConfig(epochs=4, batch_size=32, lr=1e-2, seed=3)
    a, b, c = _mlp(), _mlp(), _mlp()
    ra = tr.fit(a, fit, cfg, val=val, progress=False)
    tr.fit(b, fit, cfg, val=val, progress=False)
    tr.fit(c, fit, cfg.model_copy(update={"seed": 4}), val=val, progress=False)
    assert ra.best_score >= 0.95 and tr.evaluate(a, val) == ra.best_score
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters())), "same seed, same weights"
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters())), "the seed matters"
    assert ra.steps == 4 * 6 and len(ra.history) == 4 and not a.training


def test_early_stop_restores_best_weights():
    model = _mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scores = iter([0.9, 0.5, 0.4, 0.3, 0.2, 0.1])  # epoch 0 (untrained) is the best; it only gets worse
    res = tr.fit(model, _toy(64), tr.TrainConfig(epochs=6, patience=2, lr=1e-2), score_fn=lambda m: next(scores),
                 progress=False)
    assert res.stopped_early and res.epochs == 2 and res.best_epoch == 0 and res.best_score == 0.9
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items()), "best (initial) weights restored"


def test_max_batches_and_custom_loss():
    seen = []

    def loss_fn(m, x, y):
        seen.append(x[0].shape[0])
        return torch.nn.functional.cross_entropy(m(*x), y)

    res = tr.fit(_mlp(), _toy(256), tr.TrainConfig(epochs=2, batch_size=16, max_batches=3), loss_fn=loss_fn, progress=False)
    assert res.steps == 6 and seen == [16] * 6


def test_score_accuracy_and_cosine():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert tr.score(logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    ref = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert tr.score(ref * 3, ref) == pytest.approx(1.0)
    assert tr.score(torch.tensor([[0.0, 1.0], [0.0, 2.0]]), ref) == pytest.approx(0.5)


def test_split_is_disjoint_and_seeded():
    data = tr.TensorData((torch.arange(100).float().unsqueeze(1),), torch.arange(100))
    fit, val = data.split(0.2, seed=1)
    again, _ = data.split(0.2, seed=1)
    assert len(val) == 20 and len(fit) == 80
    assert set(fit.targets.tolist()).isdisjoint(val.targets.tolist())
    assert torch.equal(fit.targets, again.targets)


def test_shift_augmentation_keeps_shape_and_moves_pixels():
    x = torch.zeros(4, 1, 8, 8)
    x[:, :, 3:5, 3:5] = 1.0
    out = tr._shift_images(x, 0.25, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)


@pytest.mark.parametrize("field,value", [("lr", 0), ("epochs", -1), ("optimizer", "lion"), ("augment_shift", 1.5)])
def test_bad_config_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tr.TrainConfig(**{field: value})


def test_mismatched_data_is_refused():
    with pytest.raises(ValueError, match="disagree"):
        tr.TensorData((torch.zeros(3, 2),), torch.zeros(4))
