"""losses: the KD loss itself, the typed loss spec, and each loss kind against its formula."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeopt.passes.compress import losses


def test_kd_loss_is_kl_times_t_squared():
    s, t = torch.randn(5, 10), torch.randn(5, 10)
    manual = (F.softmax(t / 3, -1) * (F.log_softmax(t / 3, -1) - F.log_softmax(s / 3, -1))).sum(-1).mean() * 9
    assert torch.allclose(losses.kd_loss(s, t, 3.0), manual, atol=1e-6)
    assert float(losses.kd_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-6)


def test_make_loss_follows_the_spec():
    torch.manual_seed(0)
    teacher, student = losses.freeze(torch.nn.Linear(4, 3)), torch.nn.Linear(4, 3)
    x, y = (torch.randn(8, 4),), torch.randint(0, 3, (8,))
    with torch.no_grad():
        t, s = teacher(*x), student(*x)
        kd = losses.make_loss(teacher, losses.DistillLoss("kd", 2.0, 0.25))(student, x, y)
        cos = losses.make_loss(teacher, losses.DistillLoss.for_outputs(labelled=False))(student, x, None)
        mse = losses.make_loss(teacher, losses.DistillLoss("mse"))(student, x, None)
    assert torch.allclose(kd, 0.25 * losses.kd_loss(s, t, 2.0) + 0.75 * F.cross_entropy(s, y))
    assert torch.allclose(cos, (1 - F.cosine_similarity(s, t)).mean()) and torch.allclose(mse, F.mse_loss(s, t))
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


@pytest.mark.parametrize("field,kwargs", [("kind", {"kind": "kl"}), ("temperature", {"temperature": 0.0}),
                                          ("alpha", {"alpha": 1.5}), ("beta", {"beta": -1.0})])
def test_bad_spec_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=field):
        losses.DistillLoss(**kwargs)
