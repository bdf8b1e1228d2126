"""Fine-tuning a diffusion model's UNet on a folder of images (e.g. your own photos): resumable, never touching
the input, the finished model written whole.

Two kinds of model, one training loop (`zoo.digits_diffusion.train_denoiser`: noise-prediction loss at random
timesteps, AdamW, seeded, safetensors checkpoints):

- a diffusers UNet2DModel that draws pixels: `zoo:digits-diffusion` (class-conditional: every image gets one
  `label`), a fresh small one from `new:SIZE` (zoo:digits-diffusion's architecture, RGB, unconditional), or a
  DDPM pipeline folder (unet/ + scheduler/, what this writes for such models). The result is a diffusers
  DDPMPipeline folder (`diffusers.DDPMPipeline.from_pretrained(OUT)`; it draws with the unconditional ones);
- Stable Diffusion 1.x (`zoo:sd-small`, `zoo:sd-1.4` or a local SD folder): the images are encoded once by the
  VAE into latents (the posterior mean times the VAE's scaling factor), the prompt once by the text encoder, and
  only the UNet trains, on the model's own noise schedule, as diffusers' train_text_to_image example does. The
  result is a complete SD folder (`edgeopt diffuse OUT -p PROMPT`).

Training runs on the CPU, so it is for small models: Stable Diffusion with real weights needs a GPU.

The output folder holds `finetune.json` (settings, then the losses) and `checkpoint.safetensors` while training;
an interrupted run continues from its last checkpoint with `resume=True` and ends with the same weights as an
uninterrupted one. When done, the model and the final `finetune.json` are written to a folder beside it that
then takes its place. diffusers ships fine-tuning only as example scripts, not as a library call, hence this
module.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from edgeopt import train as tr
from edgeopt.artifact import write_bytes_atomic
from edgeopt.errors import InputError, first_line
from edgeopt.extras import require
from edgeopt.zoo import digits_diffusion as dd

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
DEFAULT_PROMPT = "a photo"
MANIFEST = "finetune.json"
CHECKPOINT = "checkpoint.safetensors"
NEW_PREFIX = "new:"
UNET_ZOO = f"zoo:{dd.NAME}"
NEW_LEVELS = len(dd.UNET_CONFIG["block_out_channels"])  # new:SIZE halves the image NEW_LEVELS - 1 times
KNOWN = f"{UNET_ZOO}, zoo:sd-small, zoo:sd-1.4, {NEW_PREFIX}SIZE (a fresh RGB UNet) or a model folder"


# ---------------------------------------------------------------------------------------------- images
@dataclass
class ImageSet:
    """The readable images of one folder as one batch, the files they came from, and the files left out and why."""

    images: Any  # (N, C, size, size) float32 in [-1, 1]
    paths: list[Path]
    skipped: list[tuple[Path, str]]

    def sha256(self) -> str:
        """Hash of the pixels (a resumed run checks that it trains on the same images)."""
        return hashlib.sha256(self.images.numpy().tobytes()).hexdigest()[:16]


def _read_image(path: Path, size: int, mode: str) -> Any:
    """(size, size[, 3]) uint8: upright by its EXIF orientation, center-cropped to a square, resized (bicubic)."""
    import numpy as np
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im.draft(mode, (size, size))  # JPEG: decode at a reduced scale that still covers size x size
        upright = ImageOps.exif_transpose(im).convert(mode)
    return np.asarray(ImageOps.fit(upright, (size, size), Image.Resampling.BICUBIC), dtype=np.uint8)


def load_image_folder(folder: str | Path, size: int, channels: int = 3) -> ImageSet:
    """Every readable PNG, JPEG, BMP or WebP file directly in `folder` (in name order; hidden files and subfolders
    are left alone) as (N, channels, size, size) in [-1, 1]: RGB (3) or grayscale (1), center-cropped and
    resized. Other files and images Pillow cannot decode are skipped and listed with the reason; a folder with
    no readable image is an InputError naming it. Files are only read."""
    import numpy as np
    import torch

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder of images")
    if size < 1 or channels not in (1, 3):
        raise InputError(f"images need size >= 1 and 1 or 3 channels, got size={size}, channels={channels}")
    mode = "RGB" if channels == 3 else "L"
    arrays, used, skipped = [], [], []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append((path, f"not an image file (reads {', '.join(IMAGE_SUFFIXES)})"))
            continue
        try:
            arrays.append(_read_image(path, size, mode))
        except Exception as e:  # noqa: BLE001 - whatever the decoder raises: skip the file and say why
            skipped.append((path, f"cannot read: {first_line(e).replace(str(path), path.name)}"))
            continue
        used.append(path)
    if not arrays:
        why = f"; skipped {len(skipped)} file(s), e.g. {skipped[0][0].name}: {skipped[0][1]}" if skipped else ""
        raise InputError(f"{folder}: no readable image (PNG, JPEG, BMP or WebP){why}")
    x = torch.from_numpy(np.stack(arrays)).float() / 127.5 - 1  # (N, H, W) or (N, H, W, 3)
    x = x.unsqueeze(1) if channels == 1 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
    return ImageSet(x.contiguous(), used, skipped)


# ---------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """What a model name says before anything is built: its kind, the image size and channels it draws, and
    (UNet2DModel) how many classes it is conditioned on."""

    source: str
    kind: str  # "unet2d" or "stable-diffusion"
    size: int
    channels: int = 3
    num_classes: int | None = None
    multiple: int = 1  # image sides must be multiples of this (Stable Diffusion: the VAE's pixels per latent)


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read ({first_line(e)})") from None


def _square(size: Any, where: str) -> int:
    side = size if isinstance(size, int) else (size[0] if len(set(size)) == 1 else None)
    if not isinstance(side, int):
        raise InputError(f"{where}: sample_size {size} is not square; fine-tuning reads square images")
    return side


def _sd_spec(source: str, unet: dict[str, Any], vae: dict[str, Any]) -> ModelSpec:
    """An SD model's spec: the pixel side its UNet was configured for (latent side times the VAE's downsampling)."""
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    return ModelSpec(source, "stable-diffusion", _square(unet["sample_size"], "unet") * factor, multiple=factor)


def _folder_spec(folder: Path) -> ModelSpec:
    if not folder.is_dir():
        raise InputError(f"{folder}: no such model folder; known models: {KNOWN}")
    unet_config = folder / "unet" / "config.json"
    kind = _json(unet_config).get("_class_name") if unet_config.is_file() else None
    if kind == "UNet2DConditionModel":
        from edgeopt.diffusion.sd import check_folder

        check_folder(folder)
        return _sd_spec(str(folder), _json(unet_config), _json(folder / "vae" / "config.json"))
    if kind == "UNet2DModel":
        for need in ("unet/diffusion_pytorch_model.safetensors", "scheduler/scheduler_config.json"):
            if not (folder / need).is_file():
                raise InputError(f"{folder}: UNet2DModel folder without {need} (safetensors weights and a scheduler)")
        cfg = _json(unet_config)
        return ModelSpec(str(folder), "unet2d", _square(cfg["sample_size"], str(unet_config)), cfg["in_channels"],
                         cfg.get("num_class_embeds"))
    raise InputError(f"{folder}: not a Stable Diffusion or UNet2DModel (DDPM pipeline) folder: no unet/config.json "
                     "of either class")


def model_spec(model: str) -> ModelSpec:
    """The ModelSpec of `model` (zoo:digits-diffusion, zoo:sd-small, zoo:sd-1.4, new:SIZE or a folder), read from
    configs only; an unknown name or an unusable folder is an InputError."""
    if model == UNET_ZOO:
        cfg = dd.UNET_CONFIG
        return ModelSpec(model, "unet2d", cfg["sample_size"], cfg["in_channels"], cfg["num_class_embeds"])
    if model.startswith(NEW_PREFIX):
        step = 2 ** (NEW_LEVELS - 1)
        text = model.removeprefix(NEW_PREFIX)
        if not text.isdigit() or int(text) < 2 * step or int(text) % step:
            raise InputError(f"{model}: expected {NEW_PREFIX}SIZE with SIZE a multiple of {step} pixels, at least "
                             f"{2 * step}")
        return ModelSpec(model, "unet2d", int(text))
    if model.startswith("zoo:"):
        from edgeopt.diffusion.sd import SD_CONFIGS

        cfg = SD_CONFIGS.get(model.removeprefix("zoo:"))
        if cfg is None:
            raise InputError(f"{model}: unknown model to fine-tune; known: {KNOWN}")
        return _sd_spec(model, cfg["unet"], cfg["vae"])
    return _folder_spec(Path(model).expanduser())


def new_unet_config(size: int) -> dict[str, Any]:
    """The UNet2DModel of `new:SIZE`: zoo:digits-diffusion's convolutions, RGB, unconditional, SIZE pixels."""
    return dict(dd.UNET_CONFIG, sample_size=size, in_channels=3, out_channels=3, num_class_embeds=None)


def ddpm_schedule(config: Any) -> dict[str, Any]:
    """A scheduler config (any diffusers scheduler's) reduced to DDPMScheduler's own settings: the noise levels."""
    diffusers = require("diffusers", "fine-tuning a diffusion model")
    sched = diffusers.DDPMScheduler.from_config(dict(config))
    own = inspect.signature(diffusers.DDPMScheduler.__init__).parameters
    return {k: v for k, v in sched.config.items() if k in own}


@dataclass
class _Job:
    """A model made ready for `train_denoiser`: the module it trains, the samples and per-sample conditioning,
    the noise schedule, and how to write the finished model to a new folder."""

    module: Any
    samples: Any
    labels: Any
    schedule: dict[str, Any]
    write: Callable[[Path], Any]
    warnings: list[str] = field(default_factory=list)


def _unet2d_job(spec: ModelSpec, images: Any, label: int | None, seed: int, progress: Any) -> _Job:
    diffusers = require("diffusers", "fine-tuning a diffusion model")
    import torch

    if spec.source == UNET_ZOO:
        module, info = dd.train_digits_diffusion(progress=progress)
        schedule = info["noise_schedule"]
    elif spec.source.startswith(NEW_PREFIX):
        module = dd.build_denoiser(new_unet_config(spec.size), seed=seed)
        schedule = dd.DenoiserConfig().noise_schedule()
    else:
        from safetensors.torch import load_file

        folder = Path(spec.source).expanduser()
        config = _json(folder / "unet" / "config.json")
        try:
            module = dd.build_denoiser({k: v for k, v in config.items() if not k.startswith("_")})
            module.unet.load_state_dict(load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors")))
        except Exception as e:  # noqa: BLE001 - a corrupt or mismatched file: one line naming it
            raise InputError(f"{folder / 'unet'}: cannot load: {first_line(e)}") from None
        schedule = _json(folder / "scheduler" / "scheduler_config.json")
    schedule = ddpm_schedule(schedule)
    labels = None if label is None else torch.full((int(images.shape[0]),), label, dtype=torch.int64)

    def write(folder: Path) -> None:
        pipe = diffusers.DDPMPipeline(unet=module.unet, scheduler=diffusers.DDPMScheduler.from_config(schedule))
        pipe.save_pretrained(str(folder), safe_serialization=True)

    return _Job(module, images, labels, schedule, write)


def _sd_job(spec: ModelSpec, images: Any, prompt: str, batch: int, progress: Any) -> _Job:
    import torch

    from edgeopt.diffusion.sd import UNetStep, load_sd, save_sd
    from edgeopt.diffusion.text2img import tokenize

    sd = load_sd(spec.source)  # zoo names: the same random weights as `edgeopt diffuse` builds
    ids, warning = tokenize(sd, prompt)
    chunks = images.split(batch)
    latents = []
    with torch.no_grad(), tr.progress_task(progress, "encoding images with the VAE", len(chunks)) as update:
        text = sd.encode_text(ids)  # (1, T, D)
        for chunk in chunks:
            latents.append(sd.vae.encode(chunk).latent_dist.mean * sd.vae.config.scaling_factor)  # (b, 4, h, w)
            update(1)
    samples = torch.cat(latents)
    return _Job(UNetStep(sd.unet), samples, text.expand(samples.shape[0], -1, -1), ddpm_schedule(sd.scheduler.config),
                lambda folder: save_sd(sd, folder), [warning] if warning else [])


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class FinetuneResult:
    """What a fine-tuning run did: the model, the images used and skipped, the loss of every step (all runs)."""

    model: str
    kind: str
    out: Path
    size: int
    prompt: str | None  # Stable Diffusion: the prompt the images were trained under
    images: list[Path]
    skipped: list[tuple[Path, str]]
    steps: int
    resumed_from: int
    losses: list[float]
    seconds: float
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        n = len(self.losses)
        head, tail = self.losses[: max(1, n // 10)], self.losses[-max(1, n // 10):]
        return {"model": self.model, "kind": self.kind, "out": str(self.out), "size": self.size,
                "prompt": self.prompt, "images": [p.name for p in self.images],
                "skipped": [{"file": str(p), "reason": r} for p, r in self.skipped],
                "steps": self.steps, "resumed_from": self.resumed_from, "seconds": round(self.seconds, 2),
                "loss_first_10pct": sum(head) / len(head) if n else None,
                "loss_last_10pct": sum(tail) / len(tail) if n else None, "warnings": self.warnings}


def _check_settings(steps: int, lr: float, batch: int, size: int | None, threads: int | None,
                    checkpoint_every: int) -> None:
    for name, value in (("steps", steps), ("batch", batch), ("checkpoint_every", checkpoint_every)):
        if value < 1:
            raise InputError(f"{name} must be > 0, got {value}")
    if not lr > 0:
        raise InputError(f"lr must be > 0, got {lr}")
    if size is not None and size < 1:
        raise InputError(f"size must be > 0 pixels, got {size}")
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")


def _check_conditioning(spec: ModelSpec, prompt: str | None, label: int | None) -> None:
    if spec.kind == "stable-diffusion":
        if label is not None:
            raise InputError(f"{spec.source}: a Stable Diffusion model is conditioned on a prompt, not a class label")
        return
    if prompt is not None:
        raise InputError(f"{spec.source}: a UNet2DModel takes no prompt (prompts are for Stable Diffusion models)")
    if spec.num_classes and label is None:
        raise InputError(f"{spec.source} is class-conditional ({spec.num_classes} classes): give the class of these "
                         f"images as label 0..{spec.num_classes - 1}")
    if label is not None and not (spec.num_classes and 0 <= label < spec.num_classes):
        why = f"classes are 0..{spec.num_classes - 1}" if spec.num_classes else "the model is unconditional"
        raise InputError(f"{spec.source}: label {label} does not apply: {why}")


def _image_size(spec: ModelSpec, size: int | None) -> int:
    if spec.kind == "unet2d":
        if size is not None and size != spec.size:
            raise InputError(f"{spec.source} draws {spec.size}x{spec.size} images; size {size} does not fit "
                             f"({NEW_PREFIX}{size} makes a fresh model of that size)")
        return spec.size
    size = spec.size if size is None else size
    if size % spec.multiple:
        raise InputError(f"size must be a multiple of {spec.multiple} pixels for {spec.source} (one latent pixel per "
                         f"{spec.multiple}x{spec.multiple} image pixels), got {size}")
    return size


def _check_out(out: Path, images_folder: Path, resume: bool) -> dict[str, Any] | None:
    """The manifest of the run `out` holds when resuming (None for a new run); InputError when `out` cannot be
    used: it exists without `resume`, is not a fine-tuning folder, or overlaps the images folder."""
    o, i = out.resolve(), images_folder.resolve()
    if o == i or i in o.parents:
        raise InputError(f"{out}: the output folder is inside the images folder {images_folder} (inputs are never "
                         "written)")
    if o in i.parents:
        raise InputError(f"{images_folder}: the images folder is inside the output folder {out}")
    if not out.parent.is_dir():
        raise InputError(f"{out.parent}: no such folder (the output folder's parent must exist)")
    if not out.exists():
        return None
    if not resume:
        raise InputError(f"{out}: already exists; pass --resume to continue the fine-tuning run there, or choose a "
                         "new output folder")
    if not (out / MANIFEST).is_file():
        raise InputError(f"{out}: not a fine-tuning output folder (no {MANIFEST}); choose a new output folder")
    return _json(out / MANIFEST)


def _write_manifest(path: Path, manifest: dict[str, Any]) -> None:
    write_bytes_atomic(path, (json.dumps(manifest, indent=2) + "\n").encode())


def _finish(out: Path, write: Callable[[Path], Any], manifest: dict[str, Any]) -> None:
    """Write the model and its manifest to a new folder beside `out`, then swap it in (the checkpoint leaves with
    the old folder); `out` holds the training state or the whole result, never a part of the result."""
    final, old = (out.with_name(f".{out.name}.{os.getpid()}.{tag}") for tag in ("final", "old"))
    for p in (final, old):
        shutil.rmtree(p, ignore_errors=True)
    try:
        write(final)
        _write_manifest(final / MANIFEST, manifest)
        out.rename(old)
        try:
            final.rename(out)
        except OSError:
            old.rename(out)
            raise
    finally:
        shutil.rmtree(final, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def _result(spec: ModelSpec, out: Path, settings: dict[str, Any], imgs: ImageSet, losses: list[float],
            resumed_from: int, seconds: float, warnings: list[str]) -> FinetuneResult:
    return FinetuneResult(spec.source, spec.kind, out, settings["size"], settings["prompt"], imgs.paths, imgs.skipped,
                          len(losses), resumed_from, losses, seconds, warnings)


def finetune_diffusion(model: str, images_folder: str | Path, out: str | Path, *, steps: int = 500, lr: float = 1e-4,
                       batch: int = 4, size: int | None = None, seed: int = 0, resume: bool = False,
                       prompt: str | None = None, label: int | None = None, threads: int | None = None,
                       checkpoint_every: int = 25, progress: Any = None) -> FinetuneResult:
    """Fine-tune `model`'s UNet on the images in `images_folder` for `steps` steps and write it to `out`.

    `model`: zoo:digits-diffusion (with `label`, the class of the images), new:SIZE, zoo:sd-small, zoo:sd-1.4, or
    a DDPM-pipeline or Stable Diffusion folder. `size`: the image side in pixels (default the model's; SD: a
    multiple of 8). `prompt` (SD only, default "a photo") is what the images show. Each step trains on `batch`
    images drawn with replacement (AdamW at constant `lr`, gradients clipped to norm 1, plain MSE to the noise);
    `seed` decides the draws, the noise and timesteps (and new:SIZE's initial weights). A checkpoint is written
    every `checkpoint_every` steps; `resume` continues the run in `out` from its last one (it must have the same
    settings and images) and returns a finished run's result as is. Runs on the CPU: small models only.
    """
    _check_settings(steps, lr, batch, size, threads, checkpoint_every)
    spec = model_spec(model)
    _check_conditioning(spec, prompt, label)
    if spec.kind == "stable-diffusion" and prompt is None:
        prompt = DEFAULT_PROMPT
    size = _image_size(spec, size)
    images_folder, out = Path(images_folder).expanduser(), Path(out).expanduser()
    manifest = _check_out(out, images_folder, resume)
    imgs = load_image_folder(images_folder, size, spec.channels)
    settings = {"model": spec.source, "kind": spec.kind, "images_sha256": imgs.sha256(), "size": size, "steps": steps,
                "lr": lr, "batch": batch, "seed": seed, "prompt": prompt, "label": label}
    if manifest is not None:
        before = manifest.get("settings", {})
        changed = sorted(k for k in settings if before.get(k) != settings[k])
        if changed:
            raise InputError(f"{out}: the run there has other settings ({', '.join(changed)}); resume with the same "
                             "ones or choose a new output folder")
        if manifest.get("status") == "finished":
            losses = [float(v) for v in manifest["losses"]]
            return _result(spec, out, settings, imgs, losses, len(losses), 0.0, manifest.get("warnings", []))
    with tr.torch_threads(threads):
        job = (_sd_job(spec, imgs.images, prompt, batch, progress) if prompt is not None  # set for SD models only
               else _unet2d_job(spec, imgs.images, label, seed, progress))
    cfg = dd.DenoiserConfig(steps=steps, batch_size=batch, lr=lr, weight_decay=1e-2, warmup_steps=0,
                            schedule="constant", grad_clip=1.0, ema_decay=None, snr_gamma=None, seed=seed,
                            checkpoint_every=checkpoint_every, threads=threads, scheduler_config=job.schedule)
    run = {"status": "training", "settings": settings, "images_folder": str(images_folder.resolve())}
    if manifest is None:
        out.mkdir()
        _write_manifest(out / MANIFEST, run)
    fit = dd.train_denoiser(job.module, job.samples, job.labels, cfg, checkpoint=out / CHECKPOINT, progress=progress,
                            description=f"fine-tuning {spec.source}")
    result = _result(spec, out, settings, imgs, fit.losses, fit.resumed_from, fit.seconds, job.warnings)
    _finish(out, job.write, {**run, "status": "finished", "result": result.to_dict(), "losses": fit.losses,
                             "warnings": job.warnings, "noise_schedule": job.schedule})
    return result
