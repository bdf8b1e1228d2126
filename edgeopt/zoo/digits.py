"""zoo:digits and the digits CNNs — scikit-learn's bundled 8×8 digits upscaled to 32×32 with a fixed split, a
MobileNetV2-style CNN (zoo:digits-cnn) and a ResNet-style plain-conv teacher (zoo:digits-teacher), trained on
CPU with a fixed seed and cached on disk (keyed by a hash of architecture + training config)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from edgeopt import train as tr
from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.errors import InputError
from edgeopt.load import register_zoo
from edgeopt.nn import blocks  # torch-free until a block is built (blocks resolves its classes lazily)

DATA_VERSION = 1  # bump when the images, the split or the normalization change (invalidates cached models)
TRAINER_VERSION = 2  # bump when edgeopt.train.fit changes what it returns for the same config
IMAGE_SIZE = 32
N_TEST = 360  # of 1797 samples; stratified, fixed seed
SPLIT_SEED = 0
INPUT_NAME = "image"
NUM_CLASSES = 10
VAL_FRACTION = 0.1  # of the train split, held out for early stopping (the test split is never trained on)


# ---------------------------------------------------------------------------------------------- data
@lru_cache(maxsize=2)
def load_split(split: Literal["train", "test"]) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 1, 32, 32) float32 in [-1, 1], labels (N,) int64) of the fixed train or test split."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    d = load_digits()
    x8 = d.images.astype(np.float32) / 16.0  # (N, 8, 8) in [0, 1]
    y = d.target.astype(np.int64)
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=N_TEST, random_state=SPLIT_SEED, stratify=y)
    idx = np.sort(idx_train if split == "train" else idx_test)
    x = torch.from_numpy(x8[idx]).unsqueeze(1)  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)  # (N, 1, 32, 32)
    x = (x - 0.5) / 0.5
    xs, ys = x.numpy().astype(np.float32), y[idx]
    xs.setflags(write=False)
    ys.setflags(write=False)
    return xs, ys


_SPEC = re.compile(r"^(?:\[(train|test)\])?(?:\[(-?\d*):(-?\d*)\])?$")


def parse_spec(rest: str, default_split: str) -> tuple[str, slice]:
    """`[train]`, `[test][:100]`, `[10:20]` (the default split) or '' -> (split, slice); ValueError otherwise."""
    m = _SPEC.match(rest.strip())
    if not m:
        raise ValueError(f"expected zoo:digits, zoo:digits[train|test] or zoo:digits[test][a:b], got 'zoo:digits{rest}'")
    split = m.group(1) or default_split
    a, b = m.group(2), m.group(3)
    return split, slice(int(a) if a else None, int(b) if b else None)


def samples(rest: str, role: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) a `zoo:digits<rest>` spec selects (edgeopt.data batches them into labelled feeds).

    Calibration defaults to the train split, evaluation to the test split.
    """
    split, sl = parse_spec(rest, "train" if role == "calibration" else "test")
    x, y = load_split(split)
    return x[sl], y[sl]


def tensor_data(split: Literal["train", "test"] = "train"):
    """The split as an edgeopt.train.TensorData (images, labels)."""
    import torch

    x, y = load_split(split)
    return tr.TensorData((torch.from_numpy(x.copy()),), torch.from_numpy(y.copy()))


# ---------------------------------------------------------------------------------------------- models
class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    in_channels: int = Field(default=1, ge=1)
    num_classes: int = Field(default=NUM_CLASSES, ge=2)


class MobileNetSpec(_Spec):
    """MobileNetV2-style: stem conv, inverted residual blocks (t, c, n, s), 1×1 head conv, pooling, linear."""

    kind: Literal["mobilenet"] = "mobilenet"
    width: float = Field(default=1.0, gt=0)
    stem: int = Field(default=32, ge=1)
    stem_stride: int = Field(default=2, ge=1)
    blocks: tuple[tuple[float, int, int, int], ...] = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 1), (6, 64, 3, 2),
                                                       (6, 96, 2, 1), (6, 160, 2, 2))
    head: int = Field(default=512, ge=1)
    dropout: float = Field(default=0.1, ge=0, lt=1)


class ResNetSpec(_Spec):
    """ResNet-style plain-conv teacher: 3×3 stem, stages of BasicBlocks (channels, blocks, stride), pooling, linear."""

    kind: Literal["resnet"] = "resnet"
    stem: int = Field(default=32, ge=1)
    stages: tuple[tuple[int, int, int], ...] = ((32, 1, 1), (64, 1, 2), (128, 1, 2), (256, 1, 2))


def build(spec: MobileNetSpec | ResNetSpec) -> Any:
    """An untrained model of `spec` (seeded by the caller)."""
    from torch import nn  # lazy: torch loads on first use, not with the zoo registry

    BasicBlock, ConvBNAct, InvertedResidual = blocks.BasicBlock, blocks.ConvBNAct, blocks.InvertedResidual
    make_divisible = blocks.make_divisible
    if isinstance(spec, MobileNetSpec):
        w = spec.width
        stem = make_divisible(spec.stem * w)
        layers: list[nn.Module] = [ConvBNAct(spec.in_channels, stem, 3, spec.stem_stride)]
        c_in = stem
        for t, c, n, s in spec.blocks:
            c_out = make_divisible(c * w)
            for i in range(n):
                layers.append(InvertedResidual(c_in, c_out, s if i == 0 else 1, t))
                c_in = c_out
        head = make_divisible(spec.head * max(1.0, w))
        layers.append(ConvBNAct(c_in, head, 1))
        return _Classifier(nn.Sequential(*layers), head, spec.num_classes, spec.dropout)
    layers = [ConvBNAct(spec.in_channels, spec.stem, 3, 1, act="relu")]
    c_in = spec.stem
    for c, n, s in spec.stages:
        for i in range(n):
            layers.append(BasicBlock(c_in, c, s if i == 0 else 1))
            c_in = c
    return _Classifier(nn.Sequential(*layers), c_in, spec.num_classes, 0.0)


def _classifier_class():
    from torch import nn

    class DigitsCNN(nn.Module):
        """features → global average pooling → (dropout) → linear classifier; returns logits (B, classes)."""

        def __init__(self, features: nn.Module, width: int, num_classes: int, dropout: float):
            super().__init__()
            self.features = features
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.dropout = nn.Dropout(dropout)
            self.classifier = nn.Linear(width, num_classes)

        def forward(self, x):
            h = self.pool(self.features(x)).flatten(1)  # (B, C)
            return self.classifier(self.dropout(h))  # (B, classes)

    return DigitsCNN


def _Classifier(*args: Any) -> Any:  # noqa: N802 - builds the one model class lazily (torch import stays lazy)
    return _classifier_class()(*args)


# ---------------------------------------------------------------------------------------------- training + cache
def _train_config(**kw: Any):
    base = dict(epochs=15, batch_size=64, lr=3e-3, weight_decay=5e-4, schedule="cosine", patience=6,
                label_smoothing=0.05, augment_shift=0.08, seed=0, warmup_steps=20)
    return tr.TrainConfig(**{**base, **kw})


# architectures by name (untrained builds: distill's student_arch, tests)
ARCHS: dict[str, Any] = {
    "digits-cnn": MobileNetSpec(),
    "digits-cnn-small": MobileNetSpec(width=0.5, blocks=((1, 16, 1, 1), (6, 24, 1, 2), (6, 32, 2, 1), (6, 64, 2, 2),
                                                          (6, 96, 1, 1)), head=256),
    "digits-teacher": ResNetSpec(),
}

# name -> (description, architecture, training config factory)
MODELS: dict[str, tuple[str, Any, Any]] = {
    "digits-cnn": ("MobileNetV2-style CNN on zoo:digits (inverted residuals, depthwise convs, BN, ReLU6)",
                   MobileNetSpec(), lambda: _train_config()),
    "digits-teacher": ("ResNet-style plain 3×3-conv teacher CNN on zoo:digits",
                       ResNetSpec(), lambda: _train_config(epochs=12)),
}


def cache_dir() -> Path:
    """Where trained zoo weights live: $EDGEOPT_CACHE, else ~/.cache/edgeopt."""
    env = os.environ.get("EDGEOPT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "edgeopt"


def cache_key(spec: Any, train_cfg: Any) -> str:
    """Hash of everything that decides the trained weights: architecture, training config, data version."""
    blob = json.dumps({"spec": spec.model_dump(mode="json"), "train": train_cfg.key(), "data": DATA_VERSION,
                       "trainer": TRAINER_VERSION, "val_fraction": VAL_FRACTION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def trained(name: str, spec: Any, train_cfg: Any, cache: Path | None = None, progress: Any = None
            ) -> tuple[Any, dict[str, Any]]:
    """(model in eval mode, info) for `spec` trained with `train_cfg` on the train split; loaded from the cache
    when a file with the same key exists, otherwise trained (seeded) and saved there atomically."""
    import torch
    from safetensors.torch import load_file, save_file

    folder = (cache or cache_dir()) / "digits"
    key = cache_key(spec, train_cfg)
    weights, info_path = folder / f"{name}-{key}.safetensors", folder / f"{name}-{key}.json"
    torch.manual_seed(train_cfg.seed)
    model = build(spec)
    if weights.exists() and info_path.exists():
        try:
            model.load_state_dict(load_file(str(weights)))
            info = json.loads(info_path.read_text())
            return model.eval(), {**info, "cache": str(weights), "cached": True}
        except Exception:  # a torn or stale file: train again and overwrite it
            pass
    data = tensor_data("train")
    fit_data, val = data.split(VAL_FRACTION, seed=SPLIT_SEED)
    result = tr.fit(model, fit_data, train_cfg, val=val, progress=progress, description=f"training zoo:{name}")
    test_acc = tr.evaluate(model, tensor_data("test"))
    info = {"name": name, "key": key, "spec": spec.model_dump(mode="json"), "train": train_cfg.key(),
            "test_accuracy": test_acc, "val_accuracy": result.best_score, "fit": result.to_dict(),
            "params": int(sum(p.numel() for p in model.parameters())), "torch": torch.__version__}
    folder.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_name(weights.name + f".{os.getpid()}.tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp))
    tmp.replace(weights)
    tmp_info = info_path.with_name(info_path.name + f".{os.getpid()}.tmp")
    tmp_info.write_text(json.dumps(info, indent=2))
    tmp_info.replace(info_path)
    return model.eval(), {**info, "cache": str(weights), "cached": False}


def artifact(module: Any, source: str, extra_meta: dict[str, Any] | None = None, batch: int = 1) -> Artifact:
    """A torch Artifact of a digits classifier: input `image` (batch, 1, 32, 32), output `logits` (batch, 10)."""
    import torch

    x, _ = load_split("test")
    example = {INPUT_NAME: torch.from_numpy(x[:batch].copy())}
    spec = InputSpec((TensorSpec(INPUT_NAME, "float32", ("batch", 1, IMAGE_SIZE, IMAGE_SIZE)),))
    meta = {"source": source, "family": "cnn", "task": "image-classification", "dataset": "digits",
            "num_classes": NUM_CLASSES, "train_data": "zoo:digits[train]", "eval_data": "zoo:digits[test]",
            "example_inputs": example, "input_names": [INPUT_NAME], "output_names": ["logits"],
            "batch_example": batch, **(extra_meta or {})}
    return Artifact.from_module(module.eval(), spec, meta=meta)


def load_digits_model(name: str, batch: int = 1, progress: Any = None) -> Artifact:
    """zoo:digits-cnn / zoo:digits-teacher as a torch Artifact (trained on first use, then from the cache)."""
    if name not in MODELS:
        raise InputError(f"zoo:{name}: unknown digits model; known: {', '.join('zoo:' + k for k in MODELS)}")
    _, spec, cfg = MODELS[name]
    model, info = trained(name, spec, cfg(), progress=progress)
    meta = {"test_accuracy": info["test_accuracy"], "arch": info["spec"], "weights": info["cache"]}
    return artifact(model, f"zoo:{name}", meta, batch=batch)


def _zoo_digits(name: str, *, seq_len: int, batch: int) -> Artifact:
    return load_digits_model(name, batch=batch)


for _name, (_description, _, _) in MODELS.items():
    register_zoo(_name, f"{_description} (trained on first use, then cached)")(_zoo_digits)
