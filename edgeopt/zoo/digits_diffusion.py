"""zoo:digits-diffusion — a class-conditional diffusers UNet2DModel trained on zoo:digits[train] (seeded, cached on
first use), plus the generic pieces it is made of: a resumable noise-prediction training loop (`train_denoiser`) and
a DDPM / DDIM sampling loop (`sample_images`, `sample_digits`) over diffusers' schedulers."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from edgeopt import train as tr
from edgeopt.artifact import Artifact, InputSpec, TensorSpec, write_bytes_atomic
from edgeopt.errors import InputError
from edgeopt.extras import require
from edgeopt.load import register_zoo
from edgeopt.zoo import digits

NAME = "digits-diffusion"
TRAINER_VERSION = 1  # bump when train_denoiser changes what it returns for the same config
STEPS_ENV = "EDGEOPT_DIGITS_DIFFUSION_STEPS"  # overrides the training budget of zoo:digits-diffusion (tests: tiny)
SCHEDULERS = ("ddim", "ddpm")
# 2400 steps of 16: 575 CPU-s on one thread; 500 samples, 50 steps: conditional accuracy 0.88 (DDIM) / 0.96 (DDPM),
# Fréchet distance to the test split 7.3 / 1.4 (train split vs test: 0.67); half the steps gave 0.86 at 200 samples
ZOO_STEPS = 2400

# the zoo model's architecture: 32×32×1 digits, 10 class embeddings, convolutions only. 16 channels at 32×32 (the
# digits are 8×8 upsampled): 90 M multiply-adds per image and step, 2.7× fewer than (32, 64, 64), so more training
# images fit the CPU budget; attention blocks at 8×8 made a training step about 3× slower on this CPU
UNET_CONFIG: dict[str, Any] = dict(
    sample_size=digits.IMAGE_SIZE, in_channels=1, out_channels=1, block_out_channels=(16, 32, 64), layers_per_block=1,
    down_block_types=("DownBlock2D", "DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D", "UpBlock2D"),
    add_attention=False, norm_num_groups=8, num_class_embeds=digits.NUM_CLASSES)


class DenoiserConfig(BaseModel):
    """How `train_denoiser` trains: frozen and validated at construction (a bad value names its field)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(default=2000, ge=1, description="optimizer steps")
    batch_size: int = Field(default=16, ge=1)
    lr: float = Field(default=2e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    warmup_steps: int = Field(default=100, ge=0)
    schedule: Literal["cosine", "constant"] = "cosine"
    grad_clip: float | None = Field(default=1.0, gt=0)
    ema_decay: float | None = Field(default=0.999, gt=0, lt=1, description="exponential moving average of the weights")
    num_train_timesteps: int = Field(default=1000, ge=2)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    snr_gamma: float | None = Field(default=5.0, gt=0, description="min-SNR-γ weighting of the loss per timestep "
                                    "(Hang et al. 2023); None: the plain mean squared error")
    scheduler_config: dict[str, Any] | None = Field(
        default=None, description="a diffusers DDPMScheduler config to noise by instead of num_train_timesteps and "
        "beta_schedule (a pretrained model's own schedule, e.g. Stable Diffusion's scaled_linear betas)")
    seed: int = 0
    checkpoint_every: int = Field(default=250, ge=1, description="steps between checkpoints")
    threads: int | None = Field(default=None, ge=1)

    def key(self) -> dict[str, Any]:
        """The fields that change the trained weights (cache keys, checkpoint checks); scheduler_config only when
        set, so that the keys of configs without one stay what they were."""
        unset = {"scheduler_config"} if self.scheduler_config is None else set()
        return self.model_dump(exclude={"threads", "checkpoint_every"} | unset)

    def noise_schedule(self) -> dict[str, Any]:
        """The diffusers scheduler config this training's noise levels follow (the sampler needs the same)."""
        if self.scheduler_config is not None:
            return dict(self.scheduler_config)
        return {"num_train_timesteps": self.num_train_timesteps, "beta_schedule": self.beta_schedule,
                "prediction_type": "epsilon"}


@dataclass
class DenoiseResult:
    """What `train_denoiser` did: steps done (in all runs), the loss of every step, where it resumed, time."""

    steps: int = 0
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        n = len(self.losses)
        head, tail = self.losses[: max(1, n // 10)], self.losses[-max(1, n // 10):]
        return {"steps": self.steps, "resumed_from": self.resumed_from, "seconds": round(self.seconds, 2),
                "loss_first_10pct": sum(head) / len(head) if n else None,
                "loss_last_10pct": sum(tail) / len(tail) if n else None}


# ---------------------------------------------------------------------------------------------- the step module
@lru_cache(maxsize=1)
def _step_class() -> type:
    """The wrapper class, defined on first use so that importing the zoo does not import torch."""
    import torch
    from torch import nn

    class DenoiserStep(nn.Module):
        """One denoising step of a diffusers UNet2DModel: (sample, timestep, class_labels) -> predicted noise."""

        def __init__(self, unet: nn.Module):
            super().__init__()
            self.unet = unet

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                    class_labels: torch.Tensor | None = None) -> torch.Tensor:
            return self.unet(sample, timestep, class_labels=class_labels, return_dict=False)[0]  # (B, C, H, W)

    return DenoiserStep


def build_denoiser(config: dict[str, Any] | None = None, seed: int = 0) -> Any:
    """An untrained `DenoiserStep` around a diffusers UNet2DModel of `config` (default UNET_CONFIG), seeded."""
    diffusers = require("diffusers", f"zoo:{NAME}")
    import torch

    torch.manual_seed(seed)
    return _step_class()(diffusers.UNet2DModel(**(config or UNET_CONFIG)))


# ---------------------------------------------------------------------------------------------- training
def _lr_at(cfg: DenoiserConfig, step: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant" or cfg.steps <= cfg.warmup_steps:
        return cfg.lr
    p = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, p)))


def _check_data(images: Any, labels: Any) -> None:
    if images.dim() != 4 or images.shape[0] == 0 or not images.is_floating_point():
        raise InputError(f"training images must be a non-empty float batch (N, C, H, W), got shape {tuple(images.shape)}")
    n = images.shape[0]
    if labels is not None and (labels.shape[:1] != (n,) or (labels.dim() == 1 and labels.is_floating_point())):
        raise InputError(f"labels must be one per image ({n}): class labels (N,) as integers or per-image "
                         f"conditioning such as text states (N, T, D), got shape {tuple(labels.shape)}")


def _save_checkpoint(path: Path, model: Any, opt: Any, ema: dict[str, Any] | None, gen: Any, losses: list[float],
                     cfg: DenoiserConfig) -> None:
    """Model, optimizer, EMA weights, RNG state and loss history in one safetensors file, written atomically."""
    import torch
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    opt_state = opt.state_dict()
    for idx, state in opt_state["state"].items():
        tensors.update({f"optim.{idx}.{k}": torch.as_tensor(v).contiguous() for k, v in state.items()})
    tensors.update({f"ema.{k}": v.contiguous() for k, v in (ema or {}).items()})
    tensors["rng"] = gen.get_state()
    tensors["losses"] = torch.tensor(losses, dtype=torch.float32)
    meta = {"step": str(len(losses)), "config": json.dumps(cfg.key(), sort_keys=True),
            "param_groups": json.dumps(opt_state["param_groups"])}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(path, save(tensors, metadata=meta))


def _load_checkpoint(path: Path, model: Any, opt: Any, ema: dict[str, Any] | None, gen: Any,
                     cfg: DenoiserConfig) -> list[float]:
    """Restore what `_save_checkpoint` wrote (strict) and return the loss history; InputError when it does not fit."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: say which
        raise InputError(f"{path}: not a readable training checkpoint ({type(e).__name__})") from None
    if json.loads(meta.get("config", "null")) != json.loads(json.dumps(cfg.key(), sort_keys=True)):
        raise InputError(f"{path}: checkpoint was written with other training settings; remove it or use the same ones")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, idx, name = k.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": json.loads(meta["param_groups"])})
        if ema is not None:
            for k in ema:
                ema[k] = tensors[f"ema.{k}"].clone()
    except (KeyError, RuntimeError, ValueError) as e:
        raise InputError(f"{path}: checkpoint does not fit this model ({str(e).splitlines()[0][:120]})") from None
    gen.set_state(tensors["rng"])
    return [float(x) for x in tensors["losses"].tolist()]


def train_denoiser(model: Any, images: Any, labels: Any = None, cfg: DenoiserConfig | None = None, *,
                   checkpoint: str | Path | None = None, stop_at: int | None = None, progress: Any = None,
                   description: str = "training denoiser") -> DenoiseResult:
    """Train `model(noisy, timestep, labels) -> predicted noise` in place with the noise-prediction loss.

    Each step draws a batch of `images` ((N, C, H, W): pixels in [-1, 1], or a VAE's latents) with replacement,
    Gaussian noise and uniform timesteps from one seeded generator, noises the batch with diffusers'
    `DDPMScheduler.add_noise` (the schedule of `cfg.noise_schedule()`) and minimizes the MSE to the noise (AdamW,
    warm-up then cosine). `labels` is the model's third input per image: class labels (N,) int, any other
    conditioning with one row per image (e.g. Stable Diffusion's text states (N, T, D)), or None. With `checkpoint`
    (a .safetensors path), the model, optimizer, EMA weights, generator state and losses are saved every
    `cfg.checkpoint_every` steps and at the end, and a run finds its checkpoint and resumes from it, giving the
    same weights as an uninterrupted run. `stop_at` ends this run after that step (the schedule still spans
    `cfg.steps`). With `cfg.ema_decay` the model ends holding the EMA weights (when it reached `cfg.steps`).
    """
    diffusers = require("diffusers", "training a diffusion model")
    import torch
    import torch.nn.functional as F

    cfg = cfg or DenoiserConfig()
    _check_data(images, labels)
    end = cfg.steps if stop_at is None else max(0, min(cfg.steps, stop_at))
    noise_sched = diffusers.DDPMScheduler.from_config(cfg.noise_schedule())
    if noise_sched.config.prediction_type != "epsilon":
        raise InputError(f"the noise schedule predicts {noise_sched.config.prediction_type!r}; this loop trains "
                         "noise prediction (epsilon) only")
    timesteps = int(noise_sched.config.num_train_timesteps)
    snr = noise_sched.alphas_cumprod / (1 - noise_sched.alphas_cumprod)  # (T,)
    weight = snr.clamp(max=cfg.snr_gamma) / snr if cfg.snr_gamma else torch.ones_like(snr)  # (T,) min-SNR-γ
    params = [p for p in model.parameters() if p.requires_grad]
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema = {n: p.detach().clone() for n, p in zip(names, params)} if cfg.ema_decay else None
    gen = torch.Generator().manual_seed(cfg.seed)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    losses: list[float] = []
    if ckpt is not None and ckpt.exists():
        losses = _load_checkpoint(ckpt, model, opt, ema, gen, cfg)
    result = DenoiseResult(resumed_from=len(losses))
    t0 = time.perf_counter()
    n = int(images.shape[0])
    with tr.torch_threads(cfg.threads), tr.progress_task(progress, description, cfg.steps) as update:
        update(len(losses), info="(resumed)" if losses else "")
        model.train()
        for step in range(len(losses), end):
            idx = torch.randint(n, (cfg.batch_size,), generator=gen)
            x0 = images[idx]  # (B, C, H, W)
            noise = torch.randn(x0.shape, generator=gen)
            t = torch.randint(0, timesteps, (cfg.batch_size,), generator=gen)
            for g in opt.param_groups:
                g["lr"] = _lr_at(cfg, step)
            opt.zero_grad(set_to_none=True)
            pred = model(noise_sched.add_noise(x0, noise, t), t, None if labels is None else labels[idx])
            loss = (F.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3)) * weight[t]).mean()
            loss.backward()
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            opt.step()
            if ema is not None:
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                with torch.no_grad():
                    for name, p in zip(names, params):
                        ema[name].lerp_(p.detach(), 1 - decay)
            losses.append(float(loss.detach()))
            update(1, info=f"loss {losses[-1]:.4f}")
            if ckpt is not None and (step + 1) % cfg.checkpoint_every == 0:
                _save_checkpoint(ckpt, model, opt, ema, gen, losses, cfg)
        if ckpt is not None and len(losses) > result.resumed_from:
            _save_checkpoint(ckpt, model, opt, ema, gen, losses, cfg)
    if ema is not None and len(losses) == cfg.steps:
        with torch.no_grad():
            for name, p in zip(names, params):
                p.copy_(ema[name])
    model.eval()
    result.steps, result.losses, result.seconds = len(losses), losses, time.perf_counter() - t0
    return result


# ---------------------------------------------------------------------------------------------- sampling
def _step_module(model: Any) -> Any:
    module = model.module if isinstance(model, Artifact) else model
    if module is None or not callable(module):
        raise InputError("sampling needs a torch denoiser (a module or a torch Artifact)")
    return module


def sample_images(model: Any, n: int, shape: tuple[int, int, int], labels: Any = None, *, steps: int = 50,
                  scheduler: str = "ddim", seed: int = 0, noise_schedule: dict[str, Any] | None = None,
                  progress: Any = None, step_fn: Any = None) -> Any:
    """`n` images (n, *shape) in [-1, 1] drawn by the denoiser `model(sample, timestep, labels)` (a module or torch
    Artifact) from seeded Gaussian noise through `steps` steps of diffusers' DDIM (deterministic, eta 0) or DDPM
    scheduler, configured by `noise_schedule` (the training's `DenoiserConfig.noise_schedule()`). `step_fn`, a
    callable of the same signature returning a torch tensor (e.g. the model converted to LiteRT), runs each step
    instead of the model."""
    diffusers = require("diffusers", "sampling a diffusion model")
    import torch

    if scheduler not in SCHEDULERS:
        raise InputError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULERS)}")
    if steps <= 0 or n <= 0:
        raise InputError(f"sampling needs steps > 0 and at least one image, got steps={steps}, n={n}")
    module = step_fn if step_fn is not None else _step_module(model)
    sched_cls = diffusers.DDIMScheduler if scheduler == "ddim" else diffusers.DDPMScheduler
    sched = sched_cls.from_config(noise_schedule or DenoiserConfig().noise_schedule())
    if steps > sched.config.num_train_timesteps:
        raise InputError(f"steps={steps} exceeds the {sched.config.num_train_timesteps} training timesteps")
    sched.set_timesteps(steps)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((n, *shape), generator=gen)  # (n, C, H, W)
    with torch.no_grad(), tr.progress_task(progress, f"sampling ({scheduler}, {steps} steps)", steps) as update:
        for t in sched.timesteps:
            eps = module(x, t.expand(n), labels)  # (n, C, H, W)
            x = sched.step(eps, t, x, generator=gen).prev_sample if scheduler == "ddpm" else sched.step(eps, t, x).prev_sample
            update(1)
    return x.clamp(-1, 1)


def sample_digits(model: Any, labels: Sequence[int] | Any, steps: int = 50, scheduler: str = "ddim", seed: int = 0,
                  progress: Any = None, step_fn: Any = None) -> Any:
    """Digits (N, 1, 32, 32) in [-1, 1], one per class label in `labels`, from zoo:digits-diffusion's denoiser (the
    model gives the noise schedule; `step_fn`, when given, runs the steps: see `sample_images`)."""
    import torch

    y = torch.as_tensor(labels, dtype=torch.int64).reshape(-1)
    if y.numel() == 0 or int(y.min()) < 0 or int(y.max()) >= digits.NUM_CLASSES:
        raise InputError(f"labels must be digits 0..{digits.NUM_CLASSES - 1}, at least one")
    schedule = model.meta.get("noise_schedule") if isinstance(model, Artifact) else None
    return sample_images(model, len(y), (1, digits.IMAGE_SIZE, digits.IMAGE_SIZE), y, steps=steps,
                         scheduler=scheduler, seed=seed, noise_schedule=schedule, progress=progress, step_fn=step_fn)


# ---------------------------------------------------------------------------------------------- the zoo model
def _train_config(steps: int | None = None) -> DenoiserConfig:
    """The zoo model's training: ZOO_STEPS steps of 16 images unless `steps` or $EDGEOPT_DIGITS_DIFFUSION_STEPS say."""
    env = os.environ.get(STEPS_ENV)
    if steps is None and env:
        try:
            steps = int(env)
        except ValueError:
            raise InputError(f"{STEPS_ENV}={env!r}: expected a whole number of training steps") from None
    steps = ZOO_STEPS if steps is None else steps
    return DenoiserConfig(steps=steps, batch_size=16, lr=4e-3, snr_gamma=5.0, warmup_steps=min(100, steps // 10))


def cache_key(unet_config: dict[str, Any], cfg: DenoiserConfig) -> str:
    """Hash of everything that decides the trained weights: architecture, training config, data, trainer."""
    blob = json.dumps({"unet": unet_config, "train": cfg.key(), "data": digits.DATA_VERSION,
                       "trainer": TRAINER_VERSION}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _load_cached(folder: Path) -> tuple[Any, dict[str, Any]] | None:
    from safetensors.torch import load_file

    try:
        config = json.loads((folder / "config.json").read_text())
        info = json.loads((folder / "info.json").read_text())
        model = build_denoiser({k: v for k, v in config.items() if not k.startswith("_")})
        model.unet.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")))
    except (OSError, ValueError, KeyError, RuntimeError):  # a torn or stale folder: train again
        return None
    return model.eval(), info


def train_digits_diffusion(steps: int | None = None, *, cache: bool = True, unet_config: dict[str, Any] | None = None,
                           progress: Any = None) -> tuple[Any, dict[str, Any]]:
    """(DenoiserStep in eval mode, info) trained on zoo:digits[train] (the test split stays held out).

    `steps` (or $EDGEOPT_DIGITS_DIFFUSION_STEPS) sets the training budget, default `DenoiserConfig().steps`. With
    `cache`, the model comes from `digits.cache_dir()/digits-diffusion/<name>-<key>/` (an ordinary diffusers
    folder: config.json + diffusion_pytorch_model.safetensors, plus info.json) when there, otherwise it is trained
    (resuming from the checkpoint an interrupted build left beside it) and written through a temporary folder.
    """
    import torch

    cfg = _train_config(steps)
    config = dict(unet_config or UNET_CONFIG)
    key = cache_key(config, cfg)
    root = digits.cache_dir() / NAME
    final = root / f"{NAME}-{key}"
    if cache and (hit := _load_cached(final)) is not None:
        model, info = hit
        return model, {**info, "cache": str(final), "cached": True}
    model = build_denoiser(config, seed=cfg.seed)
    x, y = digits.load_split("train")
    ckpt = root / f"{NAME}-{key}.checkpoint.safetensors" if cache else None
    result = train_denoiser(model, torch.from_numpy(x.copy()), torch.from_numpy(y.copy()), cfg, checkpoint=ckpt,
                            progress=progress, description=f"training zoo:{NAME}")
    info = {"name": NAME, "key": key, "unet": config, "train": cfg.key(), "noise_schedule": cfg.noise_schedule(),
            "fit": result.to_dict(), "params": int(sum(p.numel() for p in model.parameters())),
            "torch": torch.__version__}
    if not cache:
        return model, {**info, "cache": None, "cached": False}
    tmp = root / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.unet.save_pretrained(str(tmp), safe_serialization=True)
    (tmp / "info.json").write_text(json.dumps(info, indent=2))
    try:
        shutil.rmtree(final, ignore_errors=True)  # a stale or torn folder that did not load
        tmp.rename(final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if ckpt is not None:
        ckpt.unlink(missing_ok=True)
    return model, {**info, "cache": str(final), "cached": False}


def artifact(model: Any, info: dict[str, Any], batch: int = 1) -> Artifact:
    """A torch Artifact of the denoiser: inputs sample (batch, 1, 32, 32), timestep (batch,), class_labels (batch,)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    size = digits.IMAGE_SIZE
    example = {"sample": torch.randn(batch, 1, size, size, generator=gen), "timestep": torch.full((batch,), 500),
               "class_labels": torch.arange(batch) % digits.NUM_CLASSES}
    spec = InputSpec((TensorSpec("sample", "float32", ("batch", 1, size, size)),
                      TensorSpec("timestep", "int64", ("batch",)), TensorSpec("class_labels", "int64", ("batch",))))
    meta = {"source": f"zoo:{NAME}", "family": "unet", "task": "class-conditional-image-generation",
            "dataset": "digits", "num_classes": digits.NUM_CLASSES, "train_data": "zoo:digits[train]",
            "noise_schedule": info["noise_schedule"], "arch": info["unet"], "train": info["train"],
            "weights": info["cache"], "example_inputs": example, "input_names": list(example),
            "output_names": ["noise"], "batch_example": batch}
    return Artifact.from_module(model.eval(), spec, meta=meta)


@register_zoo(NAME, "class-conditional diffusers UNet2DModel drawing 32×32 digits (DDPM/DDIM); trained on "
                    "zoo:digits on first use, then cached (needs the diffusion extra)")
def _zoo_digits_diffusion(name: str, *, seq_len: int, batch: int) -> Artifact:
    model, info = train_digits_diffusion()
    return artifact(model, info, batch=batch)
