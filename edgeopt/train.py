"""Training helper shared by every pass that fine-tunes: a small, seeded, deterministic CPU loop with a rich
progress bar, early stopping on a validation score, and evaluation (accuracy or cosine to reference outputs).

The loop knows nothing about pruning or distillation: a pass hands it a model, a `TensorData` and, where the
plain task loss is not what it wants, a `loss_fn(model, inputs, targets) -> loss` (distillation closes over
its frozen teacher there). Targets are either class labels (int64, shape (N,)) or reference outputs (float,
e.g. the unpruned model's outputs when the data carries no labels).
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field


class TrainConfig(BaseModel):
    """How to train: frozen and validated at construction (a bad value names its field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=10, ge=0)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    schedule: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(default=0, ge=0)
    patience: int | None = Field(default=None, ge=1, description="epochs without a better validation score before stopping")
    min_delta: float = Field(default=0.0, ge=0)
    max_batches: int | None = Field(default=None, ge=1, description="batches per epoch at most (quick recoveries, tests)")
    grad_clip: float | None = Field(default=None, gt=0)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    augment_shift: float = Field(default=0.0, ge=0, lt=1, description="images: random translation, fraction of the size")
    seed: int = 0
    threads: int | None = Field(default=None, ge=1)

    def key(self) -> dict[str, Any]:
        """The fields that change the trained weights (for cache keys): everything but threads."""
        return self.model_dump(exclude={"threads"})


@dataclass
class TensorData:
    """Samples as tensors: `inputs` (one tensor per model input, first axis = samples) and `targets`."""

    inputs: tuple[Any, ...]
    targets: Any = None

    def __post_init__(self) -> None:
        n = {int(t.shape[0]) for t in self.inputs}
        if self.targets is not None:
            n.add(int(self.targets.shape[0]))
        if len(n) != 1:
            raise ValueError(f"inputs and targets disagree on the number of samples: {sorted(n)}")

    def __len__(self) -> int:
        return int(self.inputs[0].shape[0])

    @property
    def labelled(self) -> bool:
        """True when the targets are class labels (integers), False for reference outputs or none."""
        return self.targets is not None and not self.targets.is_floating_point()

    def subset(self, idx: Any) -> TensorData:
        return TensorData(tuple(t[idx] for t in self.inputs), None if self.targets is None else self.targets[idx])

    def split(self, val_fraction: float, seed: int = 0) -> tuple[TensorData, TensorData]:
        """(fit, validation) parts by a seeded permutation; the validation part is never trained on."""
        import torch

        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(self), generator=g)
        n_val = max(1, int(round(len(self) * val_fraction)))
        return self.subset(perm[n_val:]), self.subset(perm[:n_val])

    def batches(self, batch_size: int, generator: Any = None) -> Iterator[tuple[tuple[Any, ...], Any]]:
        """(inputs, targets) batches; shuffled when a torch.Generator is given, in order otherwise."""
        import torch

        n = len(self)
        order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            yield tuple(t[idx] for t in self.inputs), (None if self.targets is None else self.targets[idx])


@dataclass
class FitResult:
    """What `fit` did: epochs and steps run, the best validation score and when, why it stopped."""

    epochs: int = 0
    steps: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    stopped_early: bool = False
    seconds: float = 0.0
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "steps": self.steps, "best_score": self.best_score,
                "best_epoch": self.best_epoch, "stopped_early": self.stopped_early,
                "seconds": round(self.seconds, 2), "history": self.history}


LossFn = Callable[[Any, tuple[Any, ...], Any], Any]


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run a block with `n` intra-op threads (unchanged when None), restoring the previous count after."""
    import torch

    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def task_loss(model: Any, inputs: tuple[Any, ...], targets: Any, label_smoothing: float = 0.0) -> Any:
    """Cross-entropy against labels, or MSE against reference outputs (float targets)."""
    import torch.nn.functional as F

    out = model(*inputs)
    if targets.is_floating_point():
        return F.mse_loss(out, targets)
    return F.cross_entropy(out, targets, label_smoothing=label_smoothing)


def predict(model: Any, data: TensorData | tuple[Any, ...], batch_size: int = 256) -> Any:
    """The model's outputs on every sample, in order, in eval mode without gradients (mode restored after)."""
    import torch

    inputs = data.inputs if isinstance(data, TensorData) else tuple(data)
    was_training = model.training
    model.eval()
    outs = []
    try:
        with torch.no_grad():
            for i in range(0, int(inputs[0].shape[0]), batch_size):
                outs.append(model(*(t[i:i + batch_size] for t in inputs)))
    finally:
        model.train(was_training)
    return torch.cat(outs)


def score(outputs: Any, targets: Any) -> float:
    """Top-1 accuracy (0..1) against labels, or mean cosine similarity against reference outputs."""
    import torch.nn.functional as F

    if targets.is_floating_point():
        return float(F.cosine_similarity(outputs.flatten(1).double(), targets.flatten(1).double(), dim=1).mean())
    return float((outputs.argmax(-1) == targets).double().mean())


def evaluate(model: Any, data: TensorData, batch_size: int = 256) -> float:
    """`score` of the model's outputs on `data` (accuracy with labels, mean cosine with reference outputs)."""
    if data.targets is None:
        raise ValueError("evaluate needs data with targets (labels or reference outputs)")
    return score(predict(model, data, batch_size), data.targets)


def _shift_images(x: Any, fraction: float, generator: Any) -> Any:
    """Random per-sample translation of a (B, C, H, W) batch by up to `fraction` of its size (zeros fill in)."""
    import torch
    import torch.nn.functional as F

    b = x.shape[0]
    t = (torch.rand(b, 2, generator=generator) * 2 - 1) * (2 * fraction)  # normalized coords span 2
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = t
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or total <= cfg.warmup_steps:
        return cfg.lr
    p = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


@contextlib.contextmanager
def progress_task(progress: Any, description: str, total: int):
    """Yields `update(n, info)`: a task on `progress` (a rich Progress, e.g. the pipeline's), on a transient
    bar of our own when progress is True (or None and stderr is a terminal), or nothing when it is False."""
    own = None
    if progress is None or progress is True:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        if progress is True or console.is_terminal:
            own = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                           console=console, transient=True)
            own.start()
        progress = own
    if not progress:
        yield lambda n=1, info="": None
        return
    task = progress.add_task(description, total=total)
    try:
        yield lambda n=1, info="": progress.update(task, advance=n, description=f"{description} {info}".rstrip())
    finally:
        if own is not None:
            own.stop()
        else:
            with contextlib.suppress(Exception):
                progress.remove_task(task)


def fit(model: Any, data: TensorData, cfg: TrainConfig | None = None, *, loss_fn: LossFn | None = None,
        val: TensorData | None = None, score_fn: Callable[[Any], float] | None = None,
        params: Iterable[Any] | None = None, progress: Any = None, description: str = "training") -> FitResult:
    """Train `model` in place on `data` (seeded, deterministic on CPU) and return what happened.

    `loss_fn(model, inputs, targets)` defaults to `task_loss`. After each epoch the model is scored by
    `score_fn(model)` (higher is better), or by `evaluate(model, val)` when `val` is given; the best-scoring
    weights are restored at the end (on a tie, the later ones), and with `cfg.patience` training stops after
    that many epochs without improvement. `params` are the tensors to optimize (default: the model's parameters; pass extra
    ones, e.g. distillation adapters, here). The model is left in eval mode.
    """
    import torch

    cfg = cfg or TrainConfig()
    if len(data) == 0:
        raise ValueError("no training samples")
    if loss_fn is None:
        if data.targets is None:
            raise ValueError("training data has no targets and no loss_fn was given")
        loss_fn = lambda m, x, y: task_loss(m, x, y, cfg.label_smoothing)  # noqa: E731
    if score_fn is None and val is not None:
        score_fn = lambda m: evaluate(m, val, batch_size=max(256, cfg.batch_size))  # noqa: E731
    params = [p for p in (params if params is not None else model.parameters()) if p.requires_grad]
    result = FitResult()
    t0 = time.perf_counter()
    per_epoch = math.ceil(len(data) / cfg.batch_size)
    if cfg.max_batches is not None:
        per_epoch = min(per_epoch, cfg.max_batches)
    total = per_epoch * cfg.epochs
    with torch_threads(cfg.threads):
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed)
        if cfg.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
        else:
            opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        best_state = None
        if score_fn is not None and cfg.epochs > 0:
            result.best_score, result.best_epoch = float(score_fn(model)), 0
            best_state = copy.deepcopy(model.state_dict())
        since_best = 0
        with progress_task(progress, description, total) as update:
            for epoch in range(1, cfg.epochs + 1):
                model.train()
                losses = []
                for b, (x, y) in enumerate(data.batches(cfg.batch_size, gen)):
                    if b >= per_epoch:
                        break
                    if cfg.augment_shift > 0 and x[0].dim() == 4 and x[0].is_floating_point():
                        x = (_shift_images(x[0], cfg.augment_shift, gen), *x[1:])
                    for g in opt.param_groups:
                        g["lr"] = _lr_at(cfg, result.steps, total)
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model, x, y)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    result.steps += 1
                    losses.append(float(loss.detach()))
                    update(1, info=f"loss {losses[-1]:.4f}")
                model.eval()
                rec = {"epoch": epoch, "loss": sum(losses) / max(1, len(losses))}
                result.epochs = epoch
                if score_fn is not None:
                    s = float(score_fn(model))
                    rec["score"] = s
                    if s > result.best_score + cfg.min_delta:
                        result.best_score, result.best_epoch, since_best = s, epoch, 0
                        best_state = copy.deepcopy(model.state_dict())
                    else:
                        since_best += 1
                        if s >= result.best_score:  # a tie: keep the later (further annealed) weights
                            result.best_score, result.best_epoch = s, epoch
                            best_state = copy.deepcopy(model.state_dict())
                    update(0, info=f"loss {rec['loss']:.4f} score {s:.4f}")
                result.history.append(rec)
                if cfg.patience is not None and since_best >= cfg.patience and epoch < cfg.epochs:
                    result.stopped_early = True
                    break
        if best_state is not None:
            model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - t0
    return result
