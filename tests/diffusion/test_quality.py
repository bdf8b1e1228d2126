"""Image quality metrics: conditional accuracy and Fréchet distance through a digits classifier, PSNR and SSIM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgeopt.diffusion import quality as q
from edgeopt.errors import InputError
from edgeopt.zoo import digits


@pytest.fixture(scope="module")
def classifier():
    """A small ResNet-style digits CNN trained for a few seconds (zoo:digits-cnn trains for minutes)."""
    from edgeopt import train as tr

    torch.manual_seed(0)
    model = digits.build(digits.ResNetSpec(stem=8, stages=((8, 1, 2), (16, 1, 2), (32, 1, 2))))
    fit, val = digits.tensor_data("train").split(0.1)
    tr.fit(model, fit, tr.TrainConfig(epochs=3, lr=1e-2), val=val, progress=False)
    return model.eval()


@pytest.fixture(scope="module")
def test_split():
    x, y = digits.load_split("test")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


def _test_8x8() -> np.ndarray:
    """The test split as sklearn ships it: (N, 8, 8) scaled to [-1, 1], before zoo:digits upsamples it."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    _, idx = train_test_split(np.arange(len(d.target)), test_size=digits.N_TEST, random_state=digits.SPLIT_SEED,
                              stratify=d.target)
    return d.images[np.sort(idx)].astype(np.float32) / 8.0 - 1.0


def _noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 1, 32, 32, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_conditional_accuracy_of_real_digits_is_high_and_of_noise_low(classifier, test_split):
    x, y = test_split
    real = q.conditional_accuracy(x, y, classifier)
    assert real.accuracy > 0.9 and real.n == 360 and sorted(real.per_class) == list(range(10))
    assert min(real.per_class.values()) > 0.7
    assert real.accuracy == pytest.approx(float((classifier(x).argmax(-1) == y).double().mean()))
    noise = q.conditional_accuracy(_noise(360), y, classifier)
    assert noise.accuracy < 0.3
    assert q.conditional_accuracy(_test_8x8(), y.numpy(), classifier) == real, "8×8 digits are upsampled as zoo:digits"
    three = q.conditional_accuracy(x[y == 3], y[y == 3], classifier)
    assert list(three.per_class) == [3] and three.to_dict()["per_class"]["3"] == three.accuracy


def test_frechet_distance_is_zero_on_itself_and_large_for_noise(classifier, test_split):
    x, _ = test_split
    train = torch.from_numpy(digits.load_split("train")[0][:360].copy())
    itself = q.frechet_distance(x, x, classifier)
    other_digits = q.frechet_distance(train, x, classifier)
    noise = q.frechet_distance(_noise(360), x, classifier)
    assert itself < 1e-6 * noise
    assert other_digits < 0.2 * noise, (other_digits, noise)
    assert q.frechet_distance(x[:100], None, classifier) == pytest.approx(q.frechet_distance(x[:100], x, classifier))
    assert q.features(x[:5], classifier).shape == (5, 32), "the penultimate (pooled) features"


def test_psnr_and_ssim_are_perfect_on_identical_images_and_fall_with_noise(test_split):
    x = test_split[0][:16]
    assert q.psnr(x, x) == math.inf and q.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    g = torch.Generator().manual_seed(0)
    noisy = [x + s * torch.randn(x.shape, generator=g) for s in (0.01, 0.1, 0.5)]
    psnrs, ssims = [q.psnr(x, n) for n in noisy], [q.ssim(x, n) for n in noisy]
    assert psnrs[0] > psnrs[1] > psnrs[2] and ssims[0] > ssims[1] > ssims[2]
    assert psnrs[0] == pytest.approx(10 * math.log10(4 / 0.01 ** 2), abs=0.3), "sigma 0.01 on a range of 2: ~46 dB"
    assert 0.9 < ssims[0] <= 1 and ssims[2] < 0.5
    rgb = np.random.default_rng(0).uniform(0, 255, (2, 3, 16, 16))
    assert q.psnr(rgb, rgb + 1, data_range=255) == pytest.approx(20 * math.log10(255), abs=1e-5)
    assert q.ssim(rgb, rgb, data_range=255) == pytest.approx(1.0)


def test_bad_input_is_one_line(classifier, test_split):
    x, y = test_split
    cases = [
        (lambda: q.psnr(x[:4], x[:5]), "differ in shape"),
        (lambda: q.ssim(x[:4], x[:4, :, :8, :8]), "differ in shape"),
        (lambda: q.ssim(x[:2, :, :8, :8], x[:2, :, :8, :8]), "at least 11×11"),
        (lambda: q.psnr(x[:0], x[:0]), "non-empty"),
        (lambda: q.conditional_accuracy(x[:0], y[:0], classifier), "non-empty"),
        (lambda: q.conditional_accuracy(x[:4], y[:3], classifier), "4 images but 3 labels"),
        (lambda: q.conditional_accuracy(x[:4].repeat(1, 3, 1, 1), y[:4], classifier), "one channel"),
        (lambda: q.frechet_distance(x[:1], x, classifier), "at least 2 images"),
        (lambda: q.psnr(torch.full((1, 1, 4, 4), float("nan")), torch.zeros(1, 1, 4, 4)), "NaN"),
        (lambda: q.ssim(torch.zeros(2, 2), torch.zeros(2, 2)), "image batch"),
    ]
    for call, message in cases:
        with pytest.raises(InputError, match=message) as e:
            call()
        assert "\n" not in str(e.value)


@pytest.mark.slow
def test_zoo_digits_cnn_is_the_default_classifier(test_split):
    """Uses zoo:digits-cnn (trained on first use, a few minutes on 2 cores, then cached)."""
    x, y = test_split
    assert q.conditional_accuracy(x, y).accuracy > 0.97
    assert q.frechet_distance(x) < 1e-6
