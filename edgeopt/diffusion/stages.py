"""The pipeline's measurement of diffusion stages: every stage draws the same images from the same seeds (digits:
`samples` per class; Stable Diffusion: the recipe's prompts), per-component latency timed round-robin across the
stages, tensor and weight memory apart, image fidelity to the baseline (PSNR, SSIM; for digits conditional
accuracy and Fréchet distance), gates, and the first images saved as PNG — written into each Stage's `diffusion`,
`fidelity`, `accuracy`, `gate` and `latency_ms` (one whole run: noise to image).

Also the Stable Diffusion source: `load_sd_artifact` makes one torch Artifact of SD's three models (an nn.Module
container, so the kernel passes rewrite UNet, VAE and text encoder alike; calling it runs one UNet step).
"""

from __future__ import annotations

import base64
import re
import shutil
import statistics
import time
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.diffusion import quality
from edgeopt.errors import InputError
from edgeopt.ledger import Gate, Latency, Stage
from edgeopt.measure import fidelity as fid
from edgeopt.measure.latency import LatencyStats
from edgeopt.zoo import digits
from edgeopt.zoo import digits_diffusion as dd

TaskFn = Callable[[str, int], Callable[[], None]]
DIGITS_TASK, SD_TASK = "class-conditional-image-generation", "text-to-image"
SD_ZOO = ("zoo:sd-small", "zoo:sd-1.4")
SD_SUBFOLDERS = ("text_encoder", "unet", "vae")
DIGITS_SCHEDULERS, SD_SCHEDULERS = ("ddim", "ddpm"), ("ddim", "pndm", "euler")
PSNR_CAP = 100.0  # dB: identical images give infinity; the ledger (JSON) keeps this cap instead
PREVIEW_PX = 128  # longest side of one image in a stage's preview grid
PREVIEW_COLUMNS = 10
MB = 2**20


def is_diffusion(art: Any) -> bool:
    """A diffusion model: zoo:digits-diffusion's denoiser or a Stable Diffusion container (meta task)."""
    return art.meta.get("task") in (DIGITS_TASK, SD_TASK)


# ---------------------------------------------------------------------------------------------- the SD source
def is_sd_source(source: Any) -> bool:
    """`zoo:sd-small`, `zoo:sd-1.4`, or a local folder laid out as a diffusers Stable Diffusion model."""
    if not isinstance(source, (str, Path)):
        return False
    if str(source) in SD_ZOO:
        return True
    p = Path(source).expanduser()
    return p.is_dir() and ((p / "model_index.json").is_file() or all((p / c).is_dir() for c in SD_SUBFOLDERS))


@lru_cache(maxsize=1)
def _components_class() -> type:
    """The container class, defined on first use so that importing this module does not import torch."""
    import torch
    from torch import nn

    from edgeopt.diffusion.sd import StableDiffusion  # lazy: imports torch

    class SDComponents(nn.Module):
        """Stable Diffusion's text encoder, UNet and VAE as submodules (the kernel passes rewrite all three), the
        tokenizer and scheduler as plain attributes. Calling it runs one UNet step — the example run kernel passes
        measure layers on."""

        def __init__(self, sd: Any):
            super().__init__()
            self.text_encoder, self.unet, self.vae = sd.text_encoder, sd.unet, sd.vae
            self.tokenizer, self.scheduler, self.source = sd.tokenizer, sd.scheduler, sd.source

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor,
                    encoder_hidden_states: torch.Tensor) -> torch.Tensor:
            return self.unet(sample, timestep, encoder_hidden_states, return_dict=False)[0]  # (B, 4, h, w)

        def stable_diffusion(self) -> Any:
            """A StableDiffusion over these (possibly rewritten) components, for the text-to-image loop."""
            return StableDiffusion(self.tokenizer, self.text_encoder, self.unet, self.vae, self.scheduler, self.source)

    return SDComponents


def load_sd_artifact(source: str | Path, size: str | None = None, seed: int = 0) -> Artifact:
    """A Stable Diffusion model (zoo:sd-small, zoo:sd-1.4 or a local SD-1.x folder) as one torch Artifact whose
    module holds its three models; the example inputs are one UNet step at `size` ("HxW"; default the model's)."""
    import torch

    from edgeopt.diffusion.sd import load_sd  # lazy: imports torch
    from edgeopt.diffusion.text2img import check_settings, parse_size  # lazy: imports torch

    sd = load_sd(source, seed)
    height, width = parse_size(size) if size else sd.default_size
    check_settings(1, 0.0, "ddim", height, width, sd.vae_scale_factor)
    f, te = sd.vae_scale_factor, sd.text_encoder.config
    gen = torch.Generator().manual_seed(seed)
    example = {"sample": torch.randn(1, sd.latent_channels, height // f, width // f, generator=gen),
               "timestep": torch.tensor([500]),
               "encoder_hidden_states": torch.randn(1, sd.max_tokens, te.hidden_size, generator=gen)}
    spec = InputSpec((TensorSpec("sample", "float32", ("batch", sd.latent_channels, height // f, width // f)),
                      TensorSpec("timestep", "int64", ("batch",)),
                      TensorSpec("encoder_hidden_states", "float32", ("batch", sd.max_tokens, te.hidden_size))))
    meta = {"source": str(source), "family": "stable-diffusion", "task": SD_TASK, "size": [height, width],
            "example_inputs": example, "input_names": list(example), "output_names": ["noise"]}
    return Artifact.from_module(_components_class()(sd).eval(), spec, meta=meta)


def check_spec(art: Artifact, spec: Any) -> None:
    """InputError naming the first setting of `spec` (recipe measure.diffusion) this model cannot run with —
    checked before any pass runs."""
    if art.meta.get("task") == DIGITS_TASK:
        if spec.scheduler not in DIGITS_SCHEDULERS:
            raise InputError(f"measure.diffusion.scheduler {spec.scheduler!r}: digits models sample with "
                             f"{' or '.join(DIGITS_SCHEDULERS)}")
        steps_max = int((art.meta.get("noise_schedule") or {}).get("num_train_timesteps", 1000))
        if spec.steps > steps_max:
            raise InputError(f"measure.diffusion.steps {spec.steps} exceeds the model's {steps_max} training timesteps")
    elif spec.scheduler not in SD_SCHEDULERS:
        raise InputError(f"measure.diffusion.scheduler {spec.scheduler!r}: Stable Diffusion runs with "
                         f"{', '.join(SD_SCHEDULERS)}")


# ---------------------------------------------------------------------------------------------- the two kinds
class _TimedCalls:
    """A callable that forwards to `fn` and records each call's milliseconds (the UNet steps of one run)."""

    def __init__(self, fn: Callable[..., Any]):
        self.fn, self.ms = fn, []

    def __call__(self, *args: Any) -> Any:
        t0 = time.perf_counter()
        out = self.fn(*args)
        self.ms.append((time.perf_counter() - t0) * 1e3)
        return out


def _to_pixels(images: Any, lo: float, hi: float) -> list[np.ndarray]:
    """(N, C, H, W) images in [lo, hi] -> N arrays (H, W, 3) uint8 (one channel repeated)."""
    import torch

    x = ((images.float() - lo) / (hi - lo)).clamp(0, 1).mul(255).round().to(torch.uint8)  # (N, C, H, W)
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    return [a for a in x.permute(0, 2, 3, 1).contiguous().numpy()]


class _Digits:
    """zoo:digits-diffusion: `samples` images per class from one seeded batch; a timed run draws one digit."""

    kind = "digits"
    shape = (1, digits.IMAGE_SIZE, digits.IMAGE_SIZE)

    def __init__(self, spec: Any, base: Artifact):
        import torch

        self.spec, self.schedule = spec, base.meta.get("noise_schedule")
        self.labels = torch.arange(digits.NUM_CLASSES).repeat(spec.samples)  # (N,) 0..9, `samples` times

    def _sample(self, fn: Callable[..., Any], labels: Any) -> Any:
        s = self.spec
        return dd.sample_images(fn, len(labels), self.shape, labels, steps=s.steps, scheduler=s.scheduler, seed=s.seed,
                                noise_schedule=self.schedule, progress=False)

    def images(self, module: Any) -> tuple[Any, list[str]]:
        return self._sample(module, self.labels), []  # (N, 1, 32, 32) in [-1, 1]

    def pixels(self, images: Any) -> list[np.ndarray]:
        return _to_pixels(images, -1.0, 1.0)

    def run(self, module: Any, i: int) -> dict[str, float]:
        import torch

        timer = _TimedCalls(module)
        t0 = time.perf_counter()
        self._sample(timer, torch.tensor([i % digits.NUM_CLASSES]))
        return {"whole_run_ms": (time.perf_counter() - t0) * 1e3, "unet_step_ms": statistics.median(timer.ms)}

    def calls(self, module: Any) -> dict[str, tuple[Callable[..., Any], tuple]]:
        import torch

        x = torch.randn(1, *self.shape, generator=torch.Generator().manual_seed(self.spec.seed))
        return {"unet_step": (module, (x, torch.tensor([500]), torch.tensor([0])))}

    def shapes(self) -> dict[str, list[int]]:
        return {"sample": [1, *self.shape]}

    def weights_mb(self, module: Any) -> float:
        return weights_mb(module)

    def quality(self, images: Any, base: Any) -> dict[str, float]:
        from scipy.linalg import LinAlgWarning  # lazy: scipy is needed for the FD only

        acc = quality.conditional_accuracy(images, self.labels)
        with warnings.catch_warnings():  # fewer images than feature dimensions: a singular covariance, handled there
            warnings.simplefilter("ignore", LinAlgWarning)
            fd = quality.frechet_distance(images)
        return {"psnr": min(quality.psnr(base, images, 2.0), PSNR_CAP), "ssim": quality.ssim(base, images, 2.0),
                "accuracy": acc.accuracy, "fd": fd}

    def settings(self) -> dict[str, Any]:
        s = self.spec
        return {"model": self.kind, "steps": s.steps, "scheduler": s.scheduler, "seed": s.seed,
                "samples_per_class": s.samples, "images": len(self.labels),
                "timed_run": "one digit (batch 1), the class rotating over rounds"}


class _StableDiffusion:
    """Stable Diffusion: one image per prompt (the fidelity set); a timed run draws the first prompt's image."""

    kind = "text-to-image"

    def __init__(self, spec: Any, base: Artifact):
        self.spec = spec
        self._sds: dict[int, Any] = {}
        sd = self._sd(base.module)
        self.size = tuple(base.meta.get("size") or sd.default_size)  # (H, W) pixels
        f = sd.vae_scale_factor
        # the UNet's batch (2 with classifier-free guidance), latent channels, latent height and width
        self.dims = (2 if spec.guidance != 1.0 else 1, sd.latent_channels, self.size[0] // f, self.size[1] // f)

    def _sd(self, module: Any) -> Any:
        if id(module) not in self._sds:
            self._sds[id(module)] = module.stable_diffusion()
        return self._sds[id(module)]

    def _draw(self, module: Any, prompt: str) -> tuple[np.ndarray, Any]:
        from edgeopt.diffusion.text2img import text_to_image  # lazy: imports torch

        s = self.spec
        return text_to_image(self._sd(module), prompt, s.steps, guidance=s.guidance, seed=s.seed, height=self.size[0],
                             width=self.size[1], scheduler=s.scheduler)

    def images(self, module: Any) -> tuple[Any, list[str]]:
        import torch

        drawn = [self._draw(module, p) for p in self.spec.prompts]
        warnings = sorted({w for _, st in drawn for w in st.warnings})
        return torch.from_numpy(np.stack([img for img, _ in drawn])).permute(0, 3, 1, 2), warnings  # (P, 3, H, W)

    def pixels(self, images: Any) -> list[np.ndarray]:
        return [a for a in images.permute(0, 2, 3, 1).contiguous().numpy()]

    def run(self, module: Any, i: int) -> dict[str, float]:
        _, st = self._draw(module, self.spec.prompts[0])
        return {"whole_run_ms": st.total_ms, "unet_step_ms": st.unet_step_ms, "text_encoder_ms": st.text_encoder_ms,
                "vae_decode_ms": st.vae_decode_ms}

    def calls(self, module: Any) -> dict[str, tuple[Callable[..., Any], tuple]]:
        import torch

        sd = self._sd(module)
        b, c, h, w = self.dims
        gen = torch.Generator().manual_seed(self.spec.seed)
        ids = torch.zeros(1, sd.max_tokens, dtype=torch.int64)
        text = torch.randn(b, sd.max_tokens, sd.text_encoder.config.hidden_size, generator=gen)
        latents = torch.randn(b, c, h, w, generator=gen)
        return {"text_encoder": (sd.encode_text, (ids,)),
                "unet_step": (sd.unet_step, (latents, torch.tensor([500] * b), text)),
                "vae_decode": (sd.decode_latents, (latents[:1],))}

    def shapes(self) -> dict[str, list[int]]:
        return {"latents": list(self.dims)}

    def weights_mb(self, module: Any) -> float:
        return weights_mb(module, module.vae)

    def quality(self, images: Any, base: Any) -> dict[str, float]:
        return {"psnr": min(quality.psnr(base, images, 255.0), PSNR_CAP), "ssim": quality.ssim(base, images, 255.0)}

    def settings(self) -> dict[str, Any]:
        s = self.spec
        return {"model": self.kind, "steps": s.steps, "scheduler": s.scheduler, "seed": s.seed,
                "prompts": list(s.prompts), "guidance": s.guidance, "size": list(self.size),
                "images": len(s.prompts), "timed_run": "the first prompt's image"}


def _driver(art: Artifact, spec: Any) -> _Digits | _StableDiffusion:
    check_spec(art, spec)
    return _Digits(spec, art) if art.meta.get("task") == DIGITS_TASK else _StableDiffusion(spec, art)


# ---------------------------------------------------------------------------------------------- memory, images
def weights_mb(*modules: Any) -> float:
    """Parameter and buffer bytes of `modules` (each storage once), in MB (2**20 bytes)."""
    seen: dict[int, int] = {}
    for t in [t for m in modules for t in (*m.parameters(), *m.buffers())]:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values()) / MB


def tensor_peaks_mb(calls: dict[str, tuple[Callable[..., Any], tuple]]) -> dict[str, float]:
    """Peak bytes (MB) of the tensors each call allocates and does not return (inputs and weights excluded)."""
    from edgeopt.kernels.layer_stats import peak_intermediate_bytes  # lazy: imports torch

    return {name: peak_intermediate_bytes(lambda fn=fn, args=args: fn(*args), keep=args) / MB
            for name, (fn, args) in calls.items()}


def _grid(pixels: list[np.ndarray]) -> np.ndarray:
    """Up to PREVIEW_COLUMNS images per row, each scaled so its longest side is at most PREVIEW_PX."""
    from PIL import Image  # lazy: Pillow comes with diffusers

    thumbs = []
    for p in pixels:
        img = Image.fromarray(p, "RGB")
        img.thumbnail((PREVIEW_PX, PREVIEW_PX))
        thumbs.append(np.asarray(img))
    h, w = thumbs[0].shape[:2]
    cols = min(PREVIEW_COLUMNS, len(thumbs))
    rows = -(-len(thumbs) // cols)
    grid = np.full((rows * h, cols * w, 3), 255, dtype=np.uint8)
    for i, t in enumerate(thumbs):
        r, c = divmod(i, cols)
        grid[r * h:r * h + t.shape[0], c * w:c * w + t.shape[1]] = t
    return grid


def save_images(folder: Path, pixels: list[np.ndarray]) -> tuple[list[Path], str]:
    """Write `pixels` as NN.png and their preview grid as grid.png into `folder` (replaced as a whole: written to a
    temporary folder beside it, then renamed); returns (the PNG paths, the grid as base64 PNG)."""
    from edgeopt.diffusion.text2img import save_png  # lazy: imports torch

    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        for i, p in enumerate(pixels):
            save_png(p, tmp / f"{i:02d}.png")
        grid = save_png(_grid(pixels), tmp / "grid.png").read_bytes()
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return [folder / f"{i:02d}.png" for i in range(len(pixels))], base64.b64encode(grid).decode()


# ---------------------------------------------------------------------------------------------- measuring
def _gates(kind: str, gates: Any) -> Any:
    """The recipe's gates; for Stable Diffusion without the digits-only ones (conditional accuracy, FD)."""
    if kind == "digits" or not isinstance(gates, fid.GateSpec):
        return gates
    return gates.model_copy(update={"max_accuracy_drop": None, "max_fd_increase": None})


def _fidelity(driver: Any, images: dict[str, Any], base: str) -> dict[str, dict[str, float]]:
    out = {name: driver.quality(imgs, images[base]) for name, imgs in images.items()}
    ref = out[base]
    for f in out.values():
        if "accuracy" in f:
            f["accuracy_drop"] = 100.0 * (ref["accuracy"] - f["accuracy"])
            f["fd_increase"] = (f["fd"] - ref["fd"]) / ref["fd"] if ref["fd"] > 0 else 0.0
    return out


def _timing(driver: Any, modules: dict[str, Any], rounds: int, advance: Callable[[], None]) -> dict[str, list[dict]]:
    """`rounds` rounds; in each, every stage does one whole run, the order rotating by one each round."""
    names = list(modules)
    runs: dict[str, list[dict[str, float]]] = {n: [] for n in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            runs[name].append(driver.run(modules[name], r))
            advance()
    return runs


def measure_diffusion_stages(stages: list[tuple[Stage, Any]], spec: Any, gates: Any, threads: int, task: TaskFn,
                             environment: dict[str, Any], run_dir: Path) -> dict[str, tuple[float, ...]]:
    """Measure every diffusion stage of `stages` (the first is the baseline) per `spec` (recipe measure.diffusion)
    with `threads` intra-op threads; the first images go to `run_dir`/<stage>/images/. Returns the whole-run
    samples (ms) by stage name, in round order."""
    import torch

    base_stage, base_art = stages[0]
    driver = _driver(base_art, spec)
    measured = [(base_stage, base_art)]
    for stage, art in stages[1:]:
        if stage.status != "done":
            continue
        if art.kind == "torch" and art.module is not None:
            measured.append((stage, art))
        else:
            stage.notes["not_measured"] = (f"a {art.kind} diffusion stage: diffusion stages are measured as torch "
                                           "modules")
    modules = {s.name: a.module for s, a in measured}
    environment["diffusion"] = {**driver.settings(), "rounds": spec.rounds, "threads": threads,
                                "timed": "round-robin over the stages in this process, the order rotating each round"}
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            advance = task("diffusion: images from the same seeds (every stage)", len(modules))
            images: dict[str, Any] = {}
            for stage, _ in measured:
                images[stage.name], warnings = driver.images(modules[stage.name])
                stage.warnings += warnings
                advance()
            advance = task("diffusion: image fidelity", 1)
            quality = _fidelity(driver, images, base_stage.name)
            advance()
            runs = _timing(driver, modules, spec.rounds,
                           task("diffusion: timing (whole runs, interleaved)", spec.rounds * len(modules)))
            advance = task("diffusion: tensor peak memory", len(modules))
            peaks = {}
            for name, module in modules.items():
                peaks[name] = tensor_peaks_mb(driver.calls(module))
                advance()
    finally:
        torch.set_num_threads(prev)
    gate_spec = _gates(driver.kind, gates)
    samples: dict[str, tuple[float, ...]] = {}
    for stage, _ in measured:
        name = stage.name
        whole = [r["whole_run_ms"] for r in runs[name]]
        samples[name] = tuple(whole)
        stage.latency_ms = Latency(**LatencyStats.from_samples(whole).to_dict(), runtime="torch", threads=threads,
                                   batch=1, shapes=driver.shapes())
        stage.fidelity = quality[name]
        if "accuracy" in stage.fidelity:
            stage.accuracy = {"conditional": stage.fidelity["accuracy"]}
        passed, why = (True, "baseline") if stage is base_stage else fid.gate(stage.fidelity, gate_spec)
        stage.gate = Gate(passed=passed, why=why)
        folder = run_dir / _dirname(name) / "images"
        paths, preview = save_images(folder, driver.pixels(images[name])[: spec.images])
        stage.diffusion = {
            "model": driver.kind, "latency": "whole run",
            **{k: statistics.median(r[k] for r in runs[name]) for k in runs[name][0]},
            "tensor_peak_mb": max(peaks[name].values()), "tensor_peak_by_call_mb": peaks[name],
            "weights_mb": driver.weights_mb(modules[name]),
            **{k: stage.fidelity[k] for k in ("psnr", "ssim", "accuracy", "fd") if k in stage.fidelity},
            "images": [p.relative_to(run_dir).as_posix() for p in paths],
            "grid": (folder / "grid.png").relative_to(run_dir).as_posix(),
            "preview_png": preview,
        }
    return samples


def _dirname(stage: str) -> str:
    """A stage name as a folder name (the pipeline's rule: anything but letters, digits, . _ - becomes _)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stage)
