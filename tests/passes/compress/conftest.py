"""Fixtures for the compression-pass tests: tiny digits CNNs trained for a few seconds, shared per session."""

from __future__ import annotations

import pytest

TINY_MOBILE = dict(width=0.25, stem=16, blocks=((1, 16, 1, 2), (4, 24, 1, 2), (4, 32, 1, 2)), head=64, dropout=0.0)
TINY_RESNET = dict(stem=16, stages=((16, 1, 2), (32, 1, 2)))


def _trained(spec, epochs: int = 3):
    import torch

    from edgeopt import train as tr
    from edgeopt.zoo import digits as d

    torch.manual_seed(0)
    model = d.build(spec)
    fit, val = d.tensor_data("train").split(0.1)
    tr.fit(model, fit, tr.TrainConfig(epochs=epochs, lr=1e-2), val=val, progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_digits_cnn():
    """A ~3k-parameter MobileNetV2-style digits CNN (inverted residuals, depthwise convs), ~90% test accuracy."""
    from edgeopt.zoo import digits as d

    return d.artifact(_trained(d.MobileNetSpec(**TINY_MOBILE)), "tiny-digits-cnn")


@pytest.fixture(scope="session")
def tiny_digits_resnet():
    """A ~20k-parameter ResNet-style digits CNN (plain 3×3 convs), ~90% test accuracy."""
    from edgeopt.zoo import digits as d

    return d.artifact(_trained(d.ResNetSpec(**TINY_RESNET)), "tiny-digits-resnet")


@pytest.fixture()
def ctx(tmp_path):
    from edgeopt.passes.base import PassContext

    return PassContext(stage_dir=tmp_path / "stage")
