"""distill: PKD layer maps, a CNN teacher → narrower student on digits, a 4 → 2 layer
BERT student with patient KD, feature adapters, and refusals (shape mismatch, two students)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from edgeopt import train as tr
from edgeopt.errors import PassError, RecipeError
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.compress import distill as ds
from edgeopt.passes.compress import losses
from edgeopt.zoo import digits as d


def test_pkd_layer_maps():
    assert ds.pick_layers(6, 3, "pkd-skip") == [1, 3] and ds.pick_layers(6, 3, "pkd-last") == [3, 4]
    assert ds.pick_layers(12, 6, "pkd-skip") == [1, 3, 5, 7, 9]
    assert ds.student_init_layers(6, 3, "pkd-skip") == [1, 3, 5] and ds.student_init_layers(6, 3, "pkd-last") == [3, 4, 5]


def test_cnn_teacher_to_narrower_student(tiny_digits_resnet, ctx):
    teacher = tiny_digits_resnet
    state = {k: v.clone() for k, v in teacher.module.state_dict().items()}
    out = build_pass("distill", {"student_width": 0.5, "train": {"epochs": 4, "lr": 1e-2}})(teacher, ctx)
    notes = ctx.notes["distill"]
    assert notes["loss"] == "kd" and notes["student"] == "width:0.5" and notes["metric"] == "accuracy"
    assert notes["student_params"] < 0.4 * notes["teacher_params"]
    assert out.module.features[0][0].out_channels < teacher.module.features[0][0].out_channels
    assert all(torch.equal(teacher.module.state_dict()[k], v) for k, v in state.items()), "teacher untouched"
    assert not teacher.module.training
    test = d.tensor_data("test")
    assert tr.evaluate(out.module, test) >= tr.evaluate(teacher.module, test) - 0.1
    assert notes["student_score"] > notes["student_score_before"]


def test_feature_distillation_learns_adapters(tiny_digits_resnet, ctx):
    build_pass("distill", {"student_arch": "digits-cnn-small", "features": [["features.3", "features.2"]],
                           "limit": 256, "train": {"epochs": 1, "max_batches": 2}})(tiny_digits_resnet, ctx)
    assert ctx.notes["distill"]["feature_pairs"] == [["features.3", "features.2"]]
    student = d.build(d.ARCHS["digits-cnn-small"]).eval()
    feat = losses.FeatureDistiller(student, tiny_digits_resnet.module, [("features.3", "features.2")],
                               (torch.zeros(1, 1, 32, 32),))
    assert isinstance(feat.adapters[0], torch.nn.Conv2d), "different widths: a learned 1×1 adapter"
    assert feat.adapters[0].in_channels != feat.adapters[0].out_channels
    feat.remove()


def _bert(layers: int):
    from transformers import BertConfig, BertModel

    from edgeopt.zoo.hf import wrap_encoder

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=layers, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    return wrap_encoder(BertModel(cfg).eval(), None, seq_len=16, source="tiny-bert")


def test_bert_layer_student_with_patient_kd(tmp_path):
    from edgeopt.data import random_feeds

    teacher = _bert(4)
    feeds = random_feeds(teacher.input_spec, 48, {"batch": 1, "sequence": 16}, seed=5, vocab=120)
    ctx = PassContext(stage_dir=tmp_path, calibration=feeds)
    out = build_pass("distill", {"student_layers": 2, "layer_map": "pkd-skip", "loss": "cosine",
                                 "train": {"epochs": 3, "lr": 1e-3, "batch_size": 8}})(teacher, ctx)
    notes = ctx.notes["distill"]
    assert len(out.module.encoder.encoder.layer) == 2 and len(teacher.module.encoder.encoder.layer) == 4
    assert notes["feature_pairs"] == [["encoder.encoder.layer.0", "encoder.encoder.layer.1"]]
    assert notes["metric"] == "cosine_to_teacher" and notes["student"].startswith("layers:2")
    assert notes["student_score"] >= notes["student_score_before"]
    ids = teacher.meta["example_inputs"]
    with torch.no_grad():
        cos = F.cosine_similarity(out.module(**ids), teacher.module(**ids)).min()
    assert cos > 0.9


def test_student_with_other_output_shape_is_refused(ctx):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 4)).eval()
    art = d.artifact(model, "four-classes")
    with pytest.raises(PassError, match=r"student output shape \(1, 10\) does not match the teacher's \(1, 4\)"):
        build_pass("distill", {"student_arch": "digits-cnn-small"})(art, ctx)


def test_two_students_or_unknown_arch_are_refused(tiny_digits_resnet, ctx):
    with pytest.raises(RecipeError, match="student_layers, student_width"):
        build_pass("distill", {"student_width": 0.5, "student_layers": 2})
    with pytest.raises(RecipeError, match="student_arch"):
        build_pass("distill", {"student_arch": "resnet-999"})(tiny_digits_resnet, ctx)
    with pytest.raises(RecipeError, match="alpha"):
        build_pass("distill", {"alpha": 1.5})


def _padded(n: int, seed: int) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        ids = np.zeros((1, 16), np.int64)
        length = int(rng.integers(4, 17))
        ids[0, :length] = rng.integers(1, 120, length)
        feeds.append({"input_ids": ids, "attention_mask": (ids != 0).astype(np.int64), "token_type_ids": 0 * ids})
    return feeds


def test_token_level_features_on_cut_batches(tmp_path):
    """feature_tokens all + trim_padding (the structural MiniLM recipe's distillation) on right-padded text."""
    teacher = _bert(4)
    ctx = PassContext(stage_dir=tmp_path, calibration=_padded(48, 5))
    build_pass("distill", {"student_layers": 2, "layer_map": "pkd-skip", "loss": "cosine", "beta": 1.0,
                           "feature_tokens": "all", "dropout": False,
                           "train": {"epochs": 2, "lr": 1e-3, "batch_size": 8}})(teacher, ctx)
    notes = ctx.notes["distill"]
    assert notes["trim_padding"] and notes["feature_tokens"] == "all" and notes["samples"] == 48
    assert notes["student_score"] >= notes["student_score_before"] and notes["cpu_seconds"] >= 0
    assert ds.layer_pairs(teacher.module, teacher.module, "same") == [
        (f"encoder.encoder.layer.{i}", f"encoder.encoder.layer.{i}") for i in range(4)]
    with pytest.raises(RecipeError, match="'same' needs as many student layers"):
        ds.layer_pairs(_bert(2).module, teacher.module, "same")


def test_all_token_feature_loss_ignores_padding():
    """tokens=all compares only the tokens the mask marks valid: garbage at padded positions changes nothing."""
    import numpy as np

    a, b = _bert(2).module, _bert(2).module
    with torch.no_grad():
        b.encoder.encoder.layer[0].output.dense.weight.mul_(1.1)
    feeds = _padded(4, 9)
    xs = tuple(torch.from_numpy(np.concatenate([f[n] for f in feeds])) for n in ("input_ids", "attention_mask",
                                                                               "token_type_ids"))
    assert not bool(xs[1].all()), "some padding"
    feat = losses.FeatureDistiller(a, b, [("encoder.encoder.layer.0", "encoder.encoder.layer.0")], xs, "all", 1)
    loss_fn = losses.make_loss(b, losses.DistillLoss("cosine", beta=1.0), feat)
    loss_fn(a, xs, None)  # fills the hooks' store and the mask
    clean = float(feat.loss().detach())
    valid = xs[1].bool()[..., None]
    s0 = feat.store["s0"]
    feat.store["s0"] = torch.where(valid, s0, s0 + 100.0)
    assert float(feat.loss().detach()) == pytest.approx(clean, rel=1e-6)
    feat.store["s0"] = torch.where(valid, s0 + 1.0, s0)
    assert float(feat.loss().detach()) > clean + 1e-3
    feat.remove()
