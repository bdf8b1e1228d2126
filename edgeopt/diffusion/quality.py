"""Offline image quality: conditional accuracy and Fréchet distance of generated digits through zoo:digits-cnn,
and PSNR / SSIM between two image batches (fidelity of an optimized pipeline's images to the baseline's)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from edgeopt.errors import InputError
from edgeopt.zoo import digits

CLASSIFIER = "zoo:digits-cnn"
SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03  # Wang et al. 2004


@dataclass(frozen=True)
class ConditionalAccuracy:
    """How often the classifier sees the class a sample was drawn for: overall, per class, and out of how many."""

    accuracy: float
    per_class: dict[int, float]
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {"accuracy": self.accuracy, "per_class": {str(k): v for k, v in self.per_class.items()}, "n": self.n}


# ---------------------------------------------------------------------------------------------- inputs
def _as_images(x: Any, what: str) -> Any:
    """A float32 torch batch (N, C, H, W) from a torch tensor or numpy array of (N, C, H, W) or (N, H, W)."""
    import torch

    t = x.detach().cpu() if isinstance(x, torch.Tensor) else torch.from_numpy(np.array(x, dtype=np.float32))
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() != 4 or min(t.shape) == 0:
        raise InputError(f"{what}: expected a non-empty image batch (N, C, H, W) or (N, H, W), got shape {tuple(t.shape)}")
    t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise InputError(f"{what}: images contain NaN or infinite values")
    return t


def _pair(a: Any, b: Any) -> tuple[Any, Any]:
    a, b = _as_images(a, "first batch"), _as_images(b, "second batch")
    if a.shape != b.shape:
        raise InputError(f"image batches differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    return a, b


def _for_classifier(images: Any) -> Any:
    """Generated images as the digits CNN is fed: one channel, 32×32 (bilinear, as zoo:digits upsamples), [-1, 1]."""
    import torch.nn.functional as F

    x = _as_images(images, "images")
    if x.shape[1] != 1:
        raise InputError(f"digits images have one channel, got {x.shape[1]}")
    if tuple(x.shape[2:]) != (digits.IMAGE_SIZE, digits.IMAGE_SIZE):
        x = F.interpolate(x, size=(digits.IMAGE_SIZE, digits.IMAGE_SIZE), mode="bilinear", align_corners=False)
    return x.clamp(-1, 1)


@lru_cache(maxsize=1)
def _default_classifier() -> Any:
    from edgeopt.load import load_model

    return load_model(CLASSIFIER).module.eval()


def _run(classifier: Any, images: Any, batch_size: int = 256) -> tuple[Any, Any]:
    """(logits (N, classes), penultimate features (N, D)): the features are the input of the last Linear layer."""
    import torch

    model = classifier if classifier is not None else _default_classifier()
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not last:
        raise InputError("the classifier has no Linear layer to take penultimate features from")
    feats: list[Any] = []
    hook = last[-1].register_forward_pre_hook(lambda _m, inp: feats.append(inp[0].detach().flatten(1)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    finally:
        hook.remove()
        model.train(was_training)
    return logits, torch.cat(feats)


# ---------------------------------------------------------------------------------------------- digits metrics
def conditional_accuracy(images: Any, labels: Any, classifier: Any = None) -> ConditionalAccuracy:
    """Share of `images` that `classifier` (default zoo:digits-cnn, trained on first use) assigns to the label
    they were generated for, overall and per class (classes present in `labels` only)."""
    x = _for_classifier(images)
    y = np.asarray(labels.cpu() if hasattr(labels, "cpu") else labels).reshape(-1)
    if len(y) != len(x):
        raise InputError(f"{len(x)} images but {len(y)} labels")
    if not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"labels must be integers, got {y.dtype}")
    pred = _run(classifier, x)[0].argmax(-1).numpy()
    hit = pred == y
    per_class = {int(c): float(hit[y == c].mean()) for c in np.unique(y)}
    return ConditionalAccuracy(float(hit.mean()), per_class, int(len(y)))


def features(images: Any, classifier: Any = None) -> np.ndarray:
    """Penultimate features (N, D) float64 of the digits classifier (default zoo:digits-cnn) on `images`."""
    return _run(classifier, _for_classifier(images))[1].double().numpy()


def frechet_distance(images: Any, reference: Any = None, classifier: Any = None) -> float:
    """Fréchet distance between Gaussians fitted to the classifier's penultimate features of `images` and of
    `reference` (default: the zoo:digits test split): |mu1 - mu2|² + Tr(S1 + S2 - 2 (S1 S2)^½). FID's formula on a
    digits classifier's features; lower is closer, 0 for identical sets."""
    import scipy.linalg

    if reference is None:
        reference = digits.load_split("test")[0]
    f1, f2 = features(images, classifier), features(reference, classifier)
    if len(f1) < 2 or len(f2) < 2:
        raise InputError("the Fréchet distance needs at least 2 images on each side")
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # singular product: offset both covariances slightly (as pytorch-fid does)
        offset = np.eye(len(s1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + offset) @ (s2 + offset))
    d = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))
    return max(d, 0.0)


# ---------------------------------------------------------------------------------------------- image fidelity
def psnr(a: Any, b: Any, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB of batch `b` against `a` over all pixels (inf when identical);
    `data_range` is max - min of the pixel scale (2 for [-1, 1], 255 for 8-bit)."""
    a, b = _pair(a, b)
    mse = float(((a.double() - b.double()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(data_range ** 2 / mse))


def ssim(a: Any, b: Any, data_range: float = 2.0) -> float:
    """Mean structural similarity of two image batches (1 when identical), per channel with an 11×11 Gaussian
    window (sigma 1.5, K1 0.01, K2 0.03, population statistics, valid region only) as in Wang et al. 2004; written
    here because scikit-image is not a dependency (its `structural_similarity(gaussian_weights=True)` differs only
    by a 121/120 sample-covariance factor and its border handling)."""
    import torch
    import torch.nn.functional as F

    a, b = _pair(a, b)
    n, c, h, w = a.shape
    if min(h, w) < SSIM_WINDOW:
        raise InputError(f"SSIM needs images of at least {SSIM_WINDOW}×{SSIM_WINDOW}, got {h}×{w}")
    r = torch.arange(SSIM_WINDOW, dtype=torch.float64) - SSIM_WINDOW // 2
    g = torch.exp(-(r ** 2) / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(c, 1, SSIM_WINDOW, SSIM_WINDOW)  # (C, 1, k, k) depthwise
    a, b = a.double(), b.double()

    def blur(x: Any) -> Any:
        return F.conv2d(x, window, groups=c)  # (N, C, H-k+1, W-k+1)

    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b, cov = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2, blur(a * b) - mu_a * mu_b
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return float(s.mean())
