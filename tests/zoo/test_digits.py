"""zoo:digits data (fixed split, feeds with labels), the digits CNN architectures, and the trained-weights cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeopt.data import LABEL_KEY, resolve, split_labels
from edgeopt.errors import InputError
from edgeopt.zoo import digits as d


def test_split_is_fixed_balanced_and_normalized():
    xtr, ytr = d.load_split("train")
    xte, yte = d.load_split("test")
    assert xtr.shape == (1437, 1, 32, 32) and xte.shape == (360, 1, 32, 32) and xtr.dtype == np.float32
    assert ytr.dtype == np.int64 and set(np.unique(yte)) == set(range(10))
    assert np.bincount(yte).min() >= 34, "stratified: every class in the test split"
    assert -1.0 <= xtr.min() and xtr.max() <= 1.0
    d.load_split.cache_clear()
    assert np.array_equal(d.load_split("test")[1], yte), "the split does not move between calls"


def test_feeds_through_data_resolve():
    art = d.artifact(d.build(d.MobileNetSpec(width=0.25, blocks=((1, 8, 1, 2),), head=16)), "t")
    ev = resolve("zoo:digits[test][:10]", art, seq_len=1, batch=4, role="eval", default_slice=slice(None))
    assert [f["image"].shape[0] for f in ev] == [4, 4, 2], "the last, smaller batch is kept"
    feeds, labels = split_labels(ev)
    assert LABEL_KEY not in feeds[0] and np.array_equal(np.concatenate(labels), d.load_split("test")[1][:10])
    cal = resolve(None, art, seq_len=1, batch=64, role="calibration", default_slice=slice(0, 64))
    assert sum(len(f[LABEL_KEY]) for f in cal) == 1437, "calibration defaults to the train split"
    ev = resolve(None, art, seq_len=1, batch=64, role="eval", default_slice=slice(0, 64))
    assert sum(len(f[LABEL_KEY]) for f in ev) == 360, "eval defaults to the test split"
    with pytest.raises(InputError, match="zoo:digits"):
        resolve("zoo:digits[valid]", art, seq_len=1, batch=4, role="eval", default_slice=slice(None))


def test_mobilenet_is_mobilenet_v2_style_and_sized():
    from edgeopt.nn.blocks import InvertedResidual

    model = d.build(d.MobileNetSpec())
    n = sum(p.numel() for p in model.parameters())
    assert 500_000 <= n <= 2_000_000
    mods = list(model.modules())
    assert sum(isinstance(m, InvertedResidual) for m in mods) >= 10
    assert any(isinstance(m, torch.nn.Conv2d) and m.groups == m.in_channels > 1 for m in mods), "depthwise convs"
    assert any(isinstance(m, torch.nn.ReLU6) for m in mods) and any(isinstance(m, torch.nn.BatchNorm2d) for m in mods)
    assert model.eval()(torch.zeros(2, 1, 32, 32)).shape == (2, 10)


def test_teacher_is_plain_convolutions():
    model = d.build(d.ResNetSpec())
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.groups == 1 for c in convs) and sum(c.kernel_size == (3, 3) for c in convs) >= 8
    assert model.eval()(torch.zeros(1, 1, 32, 32)).shape == (1, 10)


def test_cache_trains_once_and_keys_on_config(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))
    assert d.cache_dir() == tmp_path
    spec = d.MobileNetSpec(width=0.25, blocks=((1, 8, 1, 2),), head=16)
    cfg = d._train_config(epochs=1, max_batches=2, patience=None, warmup_steps=0)
    m1, info1 = d.trained("tiny", spec, cfg)
    m2, info2 = d.trained("tiny", spec, cfg)
    assert not info1["cached"] and info2["cached"] and info1["key"] == info2["key"]
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    files = sorted(p.name for p in (tmp_path / "digits").iterdir())
    assert files == [f"tiny-{info1['key']}.json", f"tiny-{info1['key']}.safetensors"]
    assert json.loads((tmp_path / "digits" / files[0]).read_text())["spec"]["head"] == 16
    _, info3 = d.trained("tiny", spec, cfg.model_copy(update={"lr": 1e-3}))
    _, info4 = d.trained("tiny", spec.model_copy(update={"head": 24}), cfg)
    assert not info3["cached"] and not info4["cached"]
    assert len({info1["key"], info3["key"], info4["key"]}) == 3, "a change of training or architecture retrains"
    assert d.cache_key(spec, cfg.model_copy(update={"threads": 1})) == info1["key"], "threads do not change weights"


def test_unknown_digits_model():
    with pytest.raises(InputError, match="digits-cnn"):
        d.load_digits_model("digits-xl")


@pytest.mark.slow
def test_zoo_digits_cnn_reaches_97_percent():
    """Trains once (about a minute or two on 2 cores) and is cached; later runs load the weights."""
    from edgeopt import train as tr
    from edgeopt.load import load_model

    art = load_model("zoo:digits-cnn")
    acc = tr.evaluate(art.module, d.tensor_data("test"))
    assert acc >= 0.97 and art.meta["test_accuracy"] == pytest.approx(acc)
    assert art.meta["dataset"] == "digits" and art.input_spec.names == ["image"]
