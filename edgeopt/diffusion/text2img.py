"""Text to image with Stable Diffusion 1.x: tokenize, encode, denoise with classifier-free guidance, decode, timed
per component.

The loop is written by hand over diffusers' components rather than run by `StableDiffusionPipeline`, so that each
of its three calls (`sd.encode_text`, `sd.unet_step`, `sd.decode_latents`) can be swapped for an optimized or
LiteRT version and timed on its own.
"""

from __future__ import annotations

import io
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from edgeopt.artifact import write_bytes_atomic
from edgeopt.diffusion.sd import StableDiffusion
from edgeopt.errors import InputError
from edgeopt.measure.memory import maxrss_mb

SCHEDULERS = {"ddim": "DDIMScheduler", "pndm": "PNDMScheduler", "euler": "EulerDiscreteScheduler"}
SIZE_MULTIPLE = 8  # SD-1.x's VAE makes one latent pixel of 8x8 image pixels


@dataclass
class Text2ImageStats:
    """What one text-to-image run cost, per component, and what it had to warn about.

    `text_encoder_ms` covers the prompt and the negative prompt (two calls of batch 1 when guided);
    `unet_step_ms` is the median of the `unet_calls` UNet calls (batch `unet_batch`); `peak_rss_mb` is this
    process's peak resident memory so far (VmHWM), loading the model included."""

    text_encoder_ms: float
    unet_step_ms: float
    unet_total_ms: float
    vae_decode_ms: float
    total_ms: float
    peak_rss_mb: float
    unet_calls: int
    unet_batch: int
    scheduler: str
    height: int
    width: int
    threads: int
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_size(size: str) -> tuple[int, int]:
    """"HxW" (e.g. "512x512") -> (height, width), or an InputError."""
    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise InputError(f"size {size!r}: expected HEIGHTxWIDTH in pixels, e.g. 512x512") from None
    return h, w


def check_settings(steps: int, guidance: float, scheduler: str, height: int | None = None,
                   width: int | None = None, multiple: int = SIZE_MULTIPLE) -> None:
    """InputError naming the first bad setting of a text-to-image run (checked before any model is built)."""
    if steps <= 0:
        raise InputError(f"steps must be > 0, got {steps}")
    if guidance < 0:
        raise InputError(f"guidance must be >= 0, got {guidance}")
    check_scheduler(scheduler)
    for name, v in (("height", height), ("width", width)):
        if v is not None and (v <= 0 or v % multiple):
            raise InputError(f"{name} must be a positive multiple of {multiple} pixels, got {v}")


def check_scheduler(name: str) -> str:
    """`name` if SCHEDULERS has it, else an InputError naming the known ones."""
    if name not in SCHEDULERS:
        raise InputError(f"unknown scheduler {name!r}; known: {', '.join(SCHEDULERS)}")
    return name


def check_png_path(path: str | Path) -> Path:
    """`path` as a Path if a PNG can be written there (its folder exists), else an InputError."""
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(f"{path}: folder {path.parent} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an image file name")
    return path


def tokenize(sd: StableDiffusion, text: str, what: str = "prompt") -> tuple[torch.Tensor, str | None]:
    """Token ids (1, max_tokens) of `text`, padded, and a warning when the text was longer than the encoder reads
    (it is truncated, as SD-1.x always did)."""
    tok = sd.tokenizer
    ids = tok(text, padding="max_length", max_length=sd.max_tokens, truncation=True, return_tensors="pt").input_ids
    full = tok(text, truncation=False, verbose=False).input_ids  # verbose=False: no "longer than" log line
    if len(full) <= sd.max_tokens:
        return ids, None
    dropped = tok.decode(full[sd.max_tokens - 1:-1])
    return ids, (f"{what} is {len(full)} tokens, the text encoder reads {sd.max_tokens}: truncated, dropping "
                 f"{dropped[:80]!r}{'…' if len(dropped) > 80 else ''}")


def classifier_free_guidance(noise_uncond: torch.Tensor, noise_cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """uncond + guidance · (cond − uncond): 1 gives the conditional prediction, 0 the unconditional one."""
    return noise_uncond + guidance * (noise_cond - noise_uncond)


def make_scheduler(sd: StableDiffusion, name: str) -> Any:
    """A fresh diffusers scheduler of kind `name` with the model's own schedule (its betas and offsets)."""
    import diffusers

    return getattr(diffusers, SCHEDULERS[check_scheduler(name)]).from_config(sd.scheduler.config)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """The decoder's (1, 3, H, W) image in about [-1, 1] -> (H, W, 3) uint8."""
    x = ((image[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)  # (3, H, W)
    return x.permute(1, 2, 0).contiguous().numpy()


def _timed(fn: Callable[..., torch.Tensor], *args: torch.Tensor) -> tuple[torch.Tensor, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, (time.perf_counter() - t0) * 1e3


def text_to_image(sd: StableDiffusion, prompt: str, steps: int, *, guidance: float = 7.5, seed: int = 0,
                  height: int | None = None, width: int | None = None, negative_prompt: str = "",
                  scheduler: str = "ddim", progress: Callable[[int, int], None] | None = None,
                  threads: int | None = None) -> tuple[np.ndarray, Text2ImageStats]:
    """(image as (H, W, 3) uint8, Text2ImageStats) for `prompt` after `steps` scheduler steps.

    Classifier-free guidance runs the UNet on a batch of 2 (negative prompt, prompt) and mixes the two
    predictions by `guidance`; at guidance 1 that mix is the conditional prediction, so the unconditional half is
    skipped (batch 1). The initial latents come from `seed` alone, so a seed gives the same image on every run.
    `height`/`width` default to the model's size (512 for SD-1.x). `progress(done, total)` is called after each
    UNet call; `threads` sets torch's intra-op threads for the run.
    """
    h0, w0 = sd.default_size
    height, width = height or h0, width or w0
    check_settings(steps, guidance, scheduler, height, width, sd.vae_scale_factor)
    if threads is not None and threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    sched = make_scheduler(sd, scheduler)
    guided = guidance != 1.0
    prev_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        t_start = time.perf_counter()
        with torch.inference_mode():
            ids, warning = tokenize(sd, prompt)
            warnings = [warning] if warning else []
            cond, te_ms = _timed(sd.encode_text, ids)  # (1, T, D)
            if guided:
                ids, warning = tokenize(sd, negative_prompt, "negative prompt")
                warnings += [warning] if warning else []
                uncond, ms = _timed(sd.encode_text, ids)
                te_ms += ms
                text = torch.cat([uncond, cond])  # (2, T, D)
            else:
                text = cond
            latents, unet_ms = _denoise(sd, sched, text, steps, guidance, seed, height, width, progress)
            image, vae_ms = _timed(sd.decode_latents, latents)  # (1, 3, H, W)
            pixels = to_uint8(image)
        total_ms = (time.perf_counter() - t_start) * 1e3
    finally:
        torch.set_num_threads(prev_threads)
    stats = Text2ImageStats(
        text_encoder_ms=te_ms, unet_step_ms=statistics.median(unet_ms), unet_total_ms=sum(unet_ms),
        vae_decode_ms=vae_ms, total_ms=total_ms, peak_rss_mb=maxrss_mb(), unet_calls=len(unet_ms),
        unet_batch=text.shape[0], scheduler=scheduler, height=height, width=width,
        threads=threads or prev_threads, warnings=warnings)
    return pixels, stats


def _denoise(sd: StableDiffusion, sched: Any, text: torch.Tensor, steps: int, guidance: float, seed: int,
             height: int, width: int, progress: Callable[[int, int], None] | None) -> tuple[torch.Tensor, list[float]]:
    """The denoising loop: (final latents (1, 4, h, w), milliseconds of each UNet call)."""
    f = sd.vae_scale_factor
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, sd.latent_channels, height // f, width // f, generator=gen)  # (1, 4, h, w)
    sched.set_timesteps(steps)
    latents = latents * sched.init_noise_sigma
    batch = text.shape[0]
    times: list[float] = []
    for i, t in enumerate(sched.timesteps):
        x = sched.scale_model_input(torch.cat([latents] * batch), t)  # (B, 4, h, w)
        noise, ms = _timed(sd.unet_step, x, t.expand(batch), text)  # (B, 4, h, w)
        times.append(ms)
        if batch == 2:
            noise = classifier_free_guidance(noise[:1], noise[1:], guidance)
        latents = sched.step(noise, t, latents).prev_sample
        if progress is not None:
            progress(i + 1, len(sched.timesteps))
    return latents, times


def save_png(image: np.ndarray, path: str | Path) -> Path:
    """Write an (H, W, 3) uint8 image as PNG through a temporary file beside `path` and a rename."""
    from PIL import Image  # lazy: Pillow comes with diffusers

    path = check_png_path(path)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"image must be (H, W, 3) uint8, got {image.shape} {image.dtype}")
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    write_bytes_atomic(path, buf.getvalue())
    return path
