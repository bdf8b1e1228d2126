"""nn.distill: the PKD layer maps, the KD and PKD losses against hand computations, the trainer on tiny MLPs
and a tiny Hugging Face BERT (4 → 2 layers), and config refusals naming the field."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeopt.nn import distill as ds


# ---------------------------------------------------------------------------------------------- layer maps
def test_skip_and_last_layer_maps():
    assert ds.teacher_layer_indices(12, 6, "skip") == [2, 4, 6, 8, 10]
    assert ds.teacher_layer_indices(12, 6, "last") == [7, 8, 9, 10, 11]
    assert ds.teacher_layer_indices(6, 3, "skip") == [2, 4]
    assert ds.teacher_layer_indices(6, 3, "last") == [4, 5]
    assert ds.teacher_layer_indices(4, 2) == [2] and ds.teacher_layer_indices(4, 2, "last") == [3]
    assert ds.teacher_layer_indices(4, 1) == [] and ds.teacher_layer_indices(3, 3) == [1, 2]
    pkd = ds.PatientDistillationLoss(ds.DistillationConfig(strategy="pkd", pkd_variant="last"))
    assert pkd.teacher_layer_indices(12, 6) == [7, 8, 9, 10, 11]
    with pytest.raises(ValueError, match="more layers"):
        ds.teacher_layer_indices(2, 4)
    with pytest.raises(ValueError, match="variant"):
        ds.teacher_layer_indices(12, 6, "first")


# ---------------------------------------------------------------------------------------------- losses
def test_kd_term_matches_a_hand_computation():
    s, t, temp = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]], [[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]], 2.0

    def softmax(v):
        e = [math.exp(x / temp) for x in v]
        return [x / sum(e) for x in e]

    kl = sum(sum(p * (math.log(p) - math.log(q)) for p, q in zip(softmax(tv), softmax(sv)))
             for sv, tv in zip(s, t)) / 2
    st, tt = torch.tensor(s), torch.tensor(t)
    assert float(ds.kd_loss(st, tt, temp)) == pytest.approx(kl * temp ** 2, rel=1e-5)
    assert float(ds.kd_loss(tt, tt, temp)) == pytest.approx(0.0, abs=1e-6)
    y = torch.tensor([1, 2])
    ce = -(math.log(math.exp(2.0) / sum(math.exp(x) for x in s[0]))
           + math.log(math.exp(3.0) / sum(math.exp(x) for x in s[1]))) / 2
    cfg = ds.DistillationConfig(temperature=temp, alpha=0.25)
    assert float(ds.output_loss(st, tt, cfg, y)) == pytest.approx(0.25 * kl * temp ** 2 + 0.75 * ce, rel=1e-5)
    assert float(ds.output_loss(st, tt, cfg)) == pytest.approx(kl * temp ** 2, rel=1e-5), "no labels: soft term"


def test_the_passes_use_the_same_kd_implementation():
    from edgeopt.passes.compress import losses

    assert losses.kd_loss is ds.kd_loss and losses.freeze is ds.freeze


def _states(*layers):
    """Hugging Face layout: the embeddings, then one state per layer."""
    return [torch.zeros_like(layers[0])] + list(layers)


def test_pkd_loss_is_zero_for_same_normalized_states_and_positive_otherwise():
    torch.manual_seed(0)
    t = [torch.randn(3, 5, 8) for _ in range(4)]  # 4 teacher layers, (B, S, H)
    pkd = ds.PatientDistillationLoss(ds.DistillationConfig(strategy="pkd"))
    # a 2-layer student learns teacher layer 2 on its layer 1: same direction, other scale, other later tokens
    same = t[1].clone() * 3.0
    same[:, 1:] = torch.randn(3, 4, 8)
    assert float(pkd.hidden_loss(_states(same, torch.randn(3, 5, 8)), _states(*t))) == pytest.approx(0, abs=1e-12)
    other = torch.randn(3, 5, 8)
    loss = pkd.hidden_loss(_states(other, t[3]), _states(*t))
    hand = ((F.normalize(other[:, 0], dim=-1) - F.normalize(t[1][:, 0], dim=-1)) ** 2).mean()
    assert float(loss) > 0 and float(loss) == pytest.approx(float(hand), rel=1e-6)
    # 2-D states; layer lists counted by the config (no embeddings entry)
    pkd_last = ds.PatientDistillationLoss(ds.DistillationConfig(strategy="pkd", pkd_variant="last", student_layers=3,
                                                                num_teacher_layers=6))
    t2 = [torch.randn(4, 8) for _ in range(6)]
    assert float(pkd_last.hidden_loss([t2[3] * 2, t2[4] * 0.5, torch.randn(4, 8)], t2)) == pytest.approx(0, abs=1e-12)
    assert float(pkd_last.hidden_loss([t2[1], t2[2], t2[3]], t2)) > 0


def test_combined_loss_adds_beta_times_pkd():
    torch.manual_seed(0)
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    sh, th = _states(torch.randn(4, 8), torch.randn(4, 8)), _states(*[torch.randn(4, 8) for _ in range(4)])
    cfg = ds.DistillationConfig(temperature=2.0, alpha=0.6, strategy="pkd", beta=50.0)
    pkd = ds.PatientDistillationLoss(cfg)
    expect = (0.4 * F.cross_entropy(s, y) + 0.6 * ds.kd_loss(s, t, 2.0)) + 50.0 * pkd.hidden_loss(sh, th)
    assert torch.allclose(pkd(s, t, sh, th, y), expect)


def test_width_mismatch_gets_a_registered_projection_or_a_clear_error():
    torch.manual_seed(0)
    sh, th = _states(torch.randn(4, 6), torch.randn(4, 6)), _states(*[torch.randn(4, 10) for _ in range(4)])
    pkd = ds.PatientDistillationLoss(ds.DistillationConfig(strategy="pkd"))
    assert list(pkd.parameters()) == []
    loss = pkd.hidden_loss(sh, th)
    assert isinstance(pkd.projection, nn.Linear) and (pkd.projection.in_features, pkd.projection.out_features) == (6, 10)
    assert [p.shape for p in pkd.parameters()] == [torch.Size([10, 6])]
    loss.backward()
    assert pkd.projection.weight.grad is not None
    with pytest.raises(ValueError, match="hidden width 6 differs from the teacher's 10 and projection=False"):
        ds.PatientDistillationLoss(ds.DistillationConfig(strategy="pkd"), projection=False).hidden_loss(sh, th)


# ---------------------------------------------------------------------------------------------- trainer
def _mlp(width: int, hidden_out: bool = False) -> nn.Module:
    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.head = nn.Linear(8, width), nn.Linear(width, width), nn.Linear(width, 3)

        def forward(self, x, return_hidden=False):
            h1 = torch.relu(self.l1(x))
            h2 = torch.relu(self.l2(h1))
            out = self.head(h2)
            return (out, [x, h1, h2]) if return_hidden else out

    return MLP()


def _data(seed: int, n: int = 128):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 8, generator=g)


def _agreement(student, teacher, x) -> float:
    with torch.no_grad():
        return float((student(x).argmax(-1) == teacher(x).argmax(-1)).float().mean())


def test_train_steps_move_the_student_to_a_frozen_teacher():
    torch.manual_seed(0)
    teacher, student = _mlp(32), _mlp(8)
    before_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    x, x_test = _data(1), _data(2, 256)
    with torch.no_grad():
        y = teacher(x).argmax(-1)  # separable by construction: the teacher's own decisions
    trainer = ds.create_distillation_trainer(teacher, student, ds.DistillationConfig(temperature=2.0), lr=1e-2)
    agree0 = _agreement(student, teacher, x_test)
    batches = [(x[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)]
    first = trainer.evaluate(batches)
    losses = trainer.fit(batches, epochs=15)
    last = trainer.evaluate(batches)
    assert len(losses) == 15 and losses[-1] < losses[0] and last["loss"] < 0.8 * first["loss"]
    assert last["agreement"] > first["agreement"] and last["accuracy"] == last["agreement"]
    assert _agreement(student, teacher, x_test) > max(0.8, agree0 + 0.2)
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in before_state.items()), "teacher unchanged"
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert trainer.steps == 60 and not student.training


def test_pkd_on_plain_modules_through_hidden_states_fn_trains_the_projection():
    torch.manual_seed(0)
    teacher, student = _mlp(16), _mlp(6)
    x = _data(3, 64)
    cfg = ds.DistillationConfig(strategy="pkd", beta=10.0)
    with pytest.raises(ValueError, match="hidden_states_fn"):
        ds.create_distillation_trainer(teacher, student, cfg).train_step(x)
    trainer = ds.create_distillation_trainer(teacher, student, cfg, lr=1e-2,
                                             hidden_states_fn=lambda m, inp: m(inp, return_hidden=True))
    first = trainer.train_step(x)
    proj = trainer.criterion.projection
    assert isinstance(proj, nn.Linear) and any(p is proj.weight for g in trainer.optimizer.param_groups
                                               for p in g["params"])
    w0 = proj.weight.detach().clone()
    for _ in range(20):
        last = trainer.train_step(x)
    assert last < first and not torch.equal(proj.weight, w0), "the projection is optimized"


def _bert(layers: int, seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, intermediate_size=64,
                     vocab_size=100, max_position_embeddings=32, num_labels=3)
    return BertForSequenceClassification(cfg)


def test_pkd_on_a_tiny_hugging_face_bert():
    teacher, student = _bert(4, 0), _bert(2, 1)
    state = {k: v.clone() for k, v in teacher.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(1, 100, (8, 12), generator=g),
                "attention_mask": torch.ones(8, 12, dtype=torch.long),
                "labels": torch.randint(0, 3, (8,), generator=g)} for _ in range(2)]
    cfg = ds.DistillationConfig(strategy="pkd", temperature=2.0, alpha=0.5, beta=100.0)
    trainer = ds.create_distillation_trainer(teacher, student, cfg, lr=1e-3)
    pkd = ds.PatientDistillationLoss(cfg)
    student.eval()
    with torch.no_grad():
        ids = {k: v for k, v in batches[0].items() if k != "labels"}
        hs = lambda m: m(**ids, output_hidden_states=True).hidden_states  # noqa: E731
        pkd0 = float(pkd.hidden_loss(hs(student), hs(teacher)))
    before = trainer.evaluate(batches)
    losses = trainer.fit(batches, epochs=8)
    after = trainer.evaluate(batches)
    assert len(losses) == 8 and losses[-1] < losses[0] and after["loss"] < before["loss"]
    with torch.no_grad():
        assert float(pkd.hidden_loss(hs(student), hs(teacher))) < pkd0, "student layer 1 moves toward teacher layer 2"
    assert trainer.criterion.projection is None, "same width: no projection"
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in state.items())


# ---------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("field,kwargs", [
    ("temperature", {"temperature": 0}), ("alpha", {"alpha": 1.5}), ("strategy", {"strategy": "fitnet"}),
    ("num_teacher_layers", {"num_teacher_layers": 0}), ("pkd_variant", {"pkd_variant": "first"}),
    ("beta", {"beta": -1.0}), ("student_layers", {"student_layers": 0}),
    ("student_layers", {"student_layers": 8, "num_teacher_layers": 4})])
def test_bad_config_names_the_field(field, kwargs):
    with pytest.raises(ValueError, match=f"DistillationConfig: field '{field}'"):
        ds.DistillationConfig(**kwargs)


def test_temperature_message():
    with pytest.raises(ValueError, match=r"^DistillationConfig: field 'temperature': must be > 0, got 0$"):
        ds.DistillationConfig(temperature=0)


def test_module_import_stays_torch_free():
    code = ("import sys, edgeopt.nn.distill, edgeopt.passes.compress.losses; "
            "print([m for m in ('torch', 'transformers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
