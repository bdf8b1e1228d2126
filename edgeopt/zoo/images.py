"""zoo:images — real pictures for image models without data: scikit-learn's bundled 8×8 digits, tiled, tinted and
resized to the model's size and channels, then normalized as its preprocessor says (else ImageNet's mean/std).

The digits ship with scikit-learn (no download). Image i tiles a k×k grid of consecutive digits (k grows with the
size, so a 224×224 picture holds 4×4 digits of 56 px rather than one blurred blob) and, for colour models, paints
them with a foreground and background colour drawn from a generator seeded by i: pictures have edges, flat areas
and colour, the statistics a vision model's early layers respond to, which random noise has not.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

N_IMAGES = 1797  # one composite picture per digit in scikit-learn's set (slices index into these)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224


def parse_slice(spec: str | None, default: slice, what: str) -> slice:
    """The slice written like `[64:320]` after a zoo data name ('' or None: `default`); ValueError otherwise."""
    if not spec:
        return default
    body = spec.strip()
    parts = body[1:-1].split(":") if body.startswith("[") and body.endswith("]") else []
    if len(parts) != 2:
        raise ValueError(f"expected a slice like {what}[0:64], got {what}{spec!r}")
    try:
        a, b = (int(p) if p.strip() else None for p in parts)
    except ValueError:
        raise ValueError(f"expected a slice like {what}[0:64], got {what}{spec!r}") from None
    return slice(a, b)


@lru_cache(maxsize=1)
def _digits() -> np.ndarray:
    """scikit-learn's 1797 digits, (N, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits  # lazy: scikit-learn loads only when pictures are drawn

    d = load_digits().images.astype(np.float32) / 16.0
    d.setflags(write=False)
    return d


def _resize(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Bilinear resize of (N, H0, W0) to (N, h, w) (half-pixel centres, as torch's align_corners=False)."""
    n, h0, w0 = x.shape

    def axis(out: int, inp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip((np.arange(out) + 0.5) * inp / out - 0.5, 0, inp - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, inp - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    ylo, yhi, fy = axis(h, h0)
    xlo, xhi, fx = axis(w, w0)
    rows = x[:, ylo, :] * (1 - fy)[None, :, None] + x[:, yhi, :] * fy[None, :, None]  # (N, h, W0)
    return rows[:, :, xlo] * (1 - fx)[None, None, :] + rows[:, :, xhi] * fx[None, None, :]  # (N, h, w)


def grid_for(height: int, width: int) -> int:
    """Digits per side of a picture: about one per 56 px of the shorter side, 1 to 4."""
    return int(min(4, max(1, round(min(height, width) / 56))))


def pictures(indices: range | list[int], height: int, width: int, channels: int) -> np.ndarray:
    """Pictures `indices` (N, channels, height, width) float32 in [0, 1], before normalization."""
    digits = _digits()
    k = grid_for(height, width)
    out = np.empty((len(indices), channels, height, width), np.float32)
    ys = np.linspace(0, height, k + 1).round().astype(int)
    xs = np.linspace(0, width, k + 1).round().astype(int)
    resized: dict[tuple[int, int], np.ndarray] = {}  # every digit at each tile size (at most 4 sizes), once
    for n, i in enumerate(indices):
        canvas = np.zeros((height, width), np.float32)
        for r in range(k):
            for c in range(k):
                th, tw = ys[r + 1] - ys[r], xs[c + 1] - xs[c]
                if (th, tw) not in resized:
                    resized[th, tw] = _resize(digits, th, tw)
                canvas[ys[r]:ys[r + 1], xs[c]:xs[c + 1]] = resized[th, tw][(i * k * k + r * k + c) % len(digits)]
        if channels == 1:
            out[n, 0] = canvas
        else:
            rng = np.random.default_rng(i)
            fg, bg = rng.uniform(0.45, 1.0, channels), rng.uniform(0.0, 0.35, channels)
            if rng.random() < 0.3:  # some pictures are dark digits on a light ground
                fg, bg = bg, fg
            out[n] = bg[:, None, None] + (fg - bg)[:, None, None] * canvas[None]
    return out


def preprocessor(folder: str | Path | None) -> dict[str, Any]:
    """The image settings of a Hugging Face folder's preprocessor_config.json (and config.json): image_mean,
    image_std, do_normalize, rescale, size and channels; {} when the folder has neither."""
    if folder is None:
        return {}
    folder = Path(folder)
    out: dict[str, Any] = {}
    for name in ("config.json", "preprocessor_config.json"):  # the preprocessor's settings win
        p = folder / name
        if not p.is_file():
            continue
        try:
            cfg = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(cfg, dict):
            continue
        if isinstance(cfg.get("image_size"), int):
            out["size"] = (cfg["image_size"], cfg["image_size"])
        if isinstance(cfg.get("num_channels"), int):
            out["channels"] = cfg["num_channels"]
        for key in ("crop_size", "size"):
            s = cfg.get(key)
            if isinstance(s, int):
                out["size"] = (s, s)
            elif isinstance(s, dict) and isinstance(s.get("height"), int) and isinstance(s.get("width"), int):
                out["size"] = (s["height"], s["width"])
            elif isinstance(s, dict) and isinstance(s.get("shortest_edge"), int):
                out["size"] = (s["shortest_edge"], s["shortest_edge"])
            else:
                continue
            break  # the crop size, where there is one, is what the model sees
        for key in ("image_mean", "image_std"):
            v = cfg.get(key)
            if isinstance(v, (int, float)):
                v = [v]
            if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v):
                out[key] = tuple(float(x) for x in v)
        if isinstance(cfg.get("do_normalize"), bool):
            out["do_normalize"] = cfg["do_normalize"]
    return out


def normalize(x: np.ndarray, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None) -> np.ndarray:
    """(x - mean) / std per channel of (N, C, H, W); ImageNet's mean/std when none are given (one value for
    grey pictures: the mean of the three)."""
    c = x.shape[1]
    mean = tuple(mean) if mean else (IMAGENET_MEAN if c == 3 else (float(np.mean(IMAGENET_MEAN)),) * c)
    std = tuple(std) if std else (IMAGENET_STD if c == 3 else (float(np.mean(IMAGENET_STD)),) * c)
    m = np.resize(np.asarray(mean, np.float32), c)[None, :, None, None]
    s = np.resize(np.asarray(std, np.float32), c)[None, :, None, None]
    out = np.array(x, dtype=np.float32)  # a copy, normalized in place (no temporaries of the full batch)
    out -= m
    out /= s
    return out


def samples(rest: str | None, default: slice, height: int, width: int, channels: int,
            settings: dict[str, Any] | None = None, layout: str = "NCHW") -> np.ndarray:
    """The pictures a `zoo:images<rest>` spec selects, normalized, as (N, C, H, W) or (N, H, W, C) float32."""
    sl = parse_slice(rest, default, "zoo:images")
    idx = range(N_IMAGES)[sl]
    x = pictures(idx, height, width, channels)
    st = settings or {}
    if st.get("do_normalize", True):
        x = normalize(x, st.get("image_mean"), st.get("image_std"))
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1)) if layout == "NHWC" else x
