"""The digits denoiser on LiteRT: zoo:digits-diffusion's UNet2DModel step converted with litert-torch at a fixed
batch (fp32, int8 weights or dynamic int8), checked against PyTorch, run as the step of the DDIM / DDPM loop on a LiteRT
CompiledModel (XNNPACK), and compared with PyTorch on latency and image quality.

`convert_denoiser` writes `denoiser.tflite` (one signature `denoise`: sample (B, C, H, W), timestep (B,) float32,
class_labels (B,) -> noise) and `denoiser_litert.json` (quantize, batch, shapes, check, versions), reusing
`edgeopt.diffusion.litert`'s conversion, quantization and checked install; `quantize_denoiser` makes an int8 variant
of an fp32 folder without converting again; `LiteRtDenoiser(folder)` is the step
callable `sample_digits(model, labels, step_fn=...)` takes; `compare_digits_runtimes` measures PyTorch beside each
LiteRT variant (per-step latency and whole sampling runs, interleaved; conditional accuracy, Fréchet distance, and
PSNR / SSIM against PyTorch's images from the same seeds).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from edgeopt import train as tr
from edgeopt.artifact import Artifact, sha256_module, write_bytes_atomic
from edgeopt.diffusion import quality
from edgeopt.diffusion.litert import (RECIPES, Job, check_quantize, convert_job, install_checked, quantize_tflite,
                                     read_json_sidecar)
from edgeopt.errors import InputError
from edgeopt.measure.latency import measure_interleaved, paired_speedup
from edgeopt.measure.litert import LiteRtRunner
from edgeopt.measure.runners import TorchRunner
from edgeopt.target import detect_target
from edgeopt.versions import versions
from edgeopt.zoo import digits
from edgeopt.zoo.digits_diffusion import SCHEDULERS, sample_digits

SIDECAR = "denoiser_litert.json"
FORMAT = 1
NAME = "denoiser"  # the job's name: the file is denoiser.tflite, errors start with "denoiser:"
SIGNATURE = "denoise"
TORCH = "pytorch"  # the baseline's row in compare_digits_runtimes


# ---------------------------------------------------------------------------------------------- converting
def convert_denoiser(model: Any, out_dir: str | Path, quantize: str = "none", batch: int = 10) -> dict[str, Any]:
    """Convert the denoiser step `model` (a module around a diffusers UNet2DModel, e.g. `build_denoiser()` or
    `train_digits_diffusion()[0]`, or its torch Artifact) with litert-torch into `out_dir/denoiser.tflite` at a
    fixed `batch`, and return the facts written to `out_dir/denoiser_litert.json`.

    `quantize`: "none" (fp32), "weight_only_int8" or "dynamic_int8" (the LiteRT quantizer's recipes, see
    `edgeopt.diffusion.litert.RECIPES`). The file runs on LiteRT beside PyTorch on seeded inputs (timesteps spread
    over the schedule) before it is moved into place: fp32 within FP32_REL_TOL relative, int8 at least MIN_COSINE.
    A folder already holding this conversion of the same weights is kept as it is (nothing converted again); one
    holding another quantize or batch is an InputError.
    """
    check_quantize(quantize)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch <= 0:
        raise InputError(f"batch must be a whole number >= 1, got {batch!r}")
    return _produce(model, Path(out_dir), quantize, batch, convert_job)


def quantize_denoiser(model: Any, src: str | Path, out_dir: str | Path,
                      quantize: str = "weight_only_int8") -> dict[str, Any]:
    """The `quantize` variant of the fp32 folder `src` (written by `convert_denoiser` from `model`) in `out_dir`,
    quantized by the LiteRT quantizer and checked against PyTorch as `convert_denoiser` does, with no second
    conversion."""
    check_quantize(quantize)
    if quantize == "none":
        raise InputError("quantize_denoiser makes a quantized variant; quantize='none' is convert_denoiser's output")
    src = Path(src)
    meta = read_denoiser_sidecar(src)
    if meta["quantize"] != "none":
        raise InputError(f"{src}: holds a {meta['quantize']} conversion; quantize_denoiser starts from an fp32 one")
    if not _intact(src, meta):
        raise InputError(f"{src / meta['file']}: missing or not the file convert_denoiser wrote (convert again)")
    if meta["weights_sha256"] != sha256_module(denoiser_module(model)):
        raise InputError(f"{src / meta['file']}: converted from other weights than the model given")
    return _produce(model, Path(out_dir), quantize, meta["batch"], lambda job: (src / meta["file"]).read_bytes())


def _produce(model: Any, out_dir: Path, quantize: str, batch: int, fp32: Callable[[Job], bytes]) -> dict[str, Any]:
    """Write the denoiser's file (fp32 bytes from `fp32`, quantized, checked) and sidecar into `out_dir`, unless the
    same conversion of the same weights is there already."""
    module = denoiser_module(model)
    job = Job(NAME, module, {SIGNATURE: _samples(module, batch)}, sha256_module(module))
    old = _existing(out_dir, quantize, batch)
    if old is not None and old["weights_sha256"] == job.sha256 and _intact(out_dir, old):
        return old
    out_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    content = fp32(job)
    if quantize != "none":
        content = quantize_tflite(content, NAME, quantize)
    check = install_checked(out_dir, job, content, quantize)
    meta = {"format": FORMAT, "source": model.meta.get("source", "module") if isinstance(model, Artifact) else "module",
            "quantize": quantize, "recipe": RECIPES[quantize], "batch": batch, "file": f"{NAME}.tflite",
            "signature": SIGNATURE, "inputs": job.signatures[SIGNATURE], "weights_sha256": job.sha256,
            "size_bytes": len(content), "seconds": round(time.perf_counter() - t0, 2), "check": check,
            "versions": versions()}
    write_bytes_atomic(out_dir / SIDECAR, json.dumps(meta, indent=1).encode())
    return meta


def denoiser_module(model: Any) -> torch.nn.Module:
    """The torch step module of `model` (a module or torch Artifact) in eval mode; an InputError when it is not a
    step around a diffusers UNet2DModel."""
    module = model.module if isinstance(model, Artifact) else model
    config = getattr(getattr(module, "unet", None), "config", None)
    if not isinstance(module, torch.nn.Module) or config is None or "sample_size" not in config:
        raise InputError("expected a denoiser step around a diffusers UNet2DModel (build_denoiser, "
                         "train_digits_diffusion or a zoo:digits-diffusion artifact)")
    return module.eval()


def _samples(module: torch.nn.Module, batch: int) -> dict[str, torch.Tensor]:
    """Seeded inputs of one step at `batch`: noise, timesteps spread from 980 to 20, class labels 0, 1, ... (when
    the UNet is class-conditional)."""
    cfg = module.unet.config
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    gen = torch.Generator().manual_seed(0)
    feed = {"sample": torch.randn(batch, cfg.in_channels, h, w, generator=gen),  # (B, C, H, W)
            "timestep": torch.linspace(980.0, 20.0, batch).round()}  # (B,) float32, as convert_sd's UNet takes it
    if cfg.num_class_embeds:
        feed["class_labels"] = torch.arange(batch) % cfg.num_class_embeds  # (B,) int64, stored as int32
    return feed


def _existing(out_dir: Path, quantize: str, batch: int) -> dict[str, Any] | None:
    """The sidecar of an earlier conversion in `out_dir` (None when there is none); an InputError when `out_dir`
    is not a folder to write into, or holds another quantize or batch."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file, expected a folder for the .tflite file")
    if not out_dir.parent.is_dir():
        raise InputError(f"{out_dir.parent}: no such folder")
    if not (out_dir / SIDECAR).is_file():
        return None
    old = read_denoiser_sidecar(out_dir)
    if (old["quantize"], old["batch"]) != (quantize, batch):
        raise InputError(f"{out_dir}: holds a {old['quantize']} batch-{old['batch']} conversion, not {quantize} "
                         f"batch-{batch}; write to another folder")
    return old


def _intact(folder: Path, meta: dict[str, Any]) -> bool:
    path = folder / meta["file"]
    return path.is_file() and path.stat().st_size == meta["size_bytes"]


def read_denoiser_sidecar(folder: str | Path) -> dict[str, Any]:
    """The facts `convert_denoiser` wrote into `folder` (denoiser_litert.json), or a one-line InputError."""
    return read_json_sidecar(folder, SIDECAR, FORMAT, "convert_denoiser")


# ---------------------------------------------------------------------------------------------- running
class LiteRtDenoiser:
    """A `convert_denoiser` folder as the step of the sampling loop: `(sample, timestep, class_labels)` torch
    tensors in, the predicted noise (float32 torch) out, on a LiteRT CompiledModel (XNNPACK, `threads` threads).

    A batch other than the converted one runs in chunks of it (the last padded, see LiteRtRunner); other image
    shapes are an InputError naming the converted ones. Close it when done (or use it as a context manager)."""

    def __init__(self, folder: str | Path, threads: int = 2):
        folder = Path(folder)
        self.meta = read_denoiser_sidecar(folder)
        self.path = folder / self.meta["file"]
        if not _intact(folder, self.meta):
            raise InputError(f"{self.path}: missing or not the file convert_denoiser wrote (convert again)")
        self.runner = LiteRtRunner(self.path, threads, signature=self.meta["signature"], api="compiled")

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor,
                 class_labels: torch.Tensor | None = None) -> torch.Tensor:
        n = int(sample.shape[0])
        feed = {"sample": sample.detach().numpy(), "timestep": np.broadcast_to(timestep.detach().numpy(), (n,))}
        if "class_labels" in self.meta["inputs"]:
            if class_labels is None:
                raise InputError(f"{self.path}: a class-conditional denoiser; the step needs class_labels")
            feed["class_labels"] = np.broadcast_to(torch.as_tensor(class_labels).numpy(), (n,))
        return torch.from_numpy(self.runner.run(feed)[0])  # (n, C, H, W)

    def close(self) -> None:
        self.runner.close()

    def __enter__(self) -> LiteRtDenoiser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- comparing
class _Sampling:
    """A whole sampling run as a latency runner (`run` ignores its feed), so runs interleave like single calls."""

    def __init__(self, name: str, run: Callable[[], Any]):
        self.name = name
        self._run = run

    def run(self, feed: Any) -> None:
        self._run()


def compare_digits_runtimes(model: Any, litert: Mapping[str, str | Path], *, threads: int = 2, batch: int = 10,
                            steps: int = 50, scheduler: str = "ddim", n_quality: int = 200, step_runs: int = 50,
                            loop_runs: int = 3, seed: int = 0, classifier: Any = None,
                            progress: Any = None) -> dict[str, Any]:
    """PyTorch beside each LiteRT conversion of the digits denoiser `model` (`litert`: row label -> a
    `convert_denoiser` folder of the same weights), all at `threads` threads, returned as {"setup", "rows"}.

    Each row: `step_ms` (one step at `batch`, `step_runs` calls each, interleaved round-robin) and its paired
    `step_speedup` over PyTorch with a 95 % interval; `loop_ms` (a whole `steps`-step `scheduler` run of `batch`
    digits, one per class, `loop_runs` runs each, interleaved); on `n_quality` digits (classes in turn, the same
    seed for every row) the conditional accuracy and Fréchet distance to the test split through `classifier`
    (default zoo:digits-cnn, see `edgeopt.diffusion.quality`), and the PSNR / SSIM of the row's digits against
    PyTorch's. `setup` names the CPU, its ISA flags, the load average before and after, and the versions.
    """
    if min(threads, batch, steps, step_runs, loop_runs) < 1 or n_quality < 2:
        raise InputError("threads, batch, steps, step_runs and loop_runs must be >= 1 and n_quality >= 2")
    if scheduler not in SCHEDULERS:
        raise InputError(f"unknown scheduler {scheduler!r}; known: {', '.join(SCHEDULERS)}")
    module = denoiser_module(model)
    sha = sha256_module(module)
    if TORCH in litert:
        raise InputError(f"{TORCH!r} is the PyTorch row's label; name the LiteRT rows otherwise")
    load_before = os.getloadavg()
    steppers: dict[str, LiteRtDenoiser] = {}
    try:
        for label, folder in litert.items():
            steppers[label] = LiteRtDenoiser(folder, threads)
            if steppers[label].meta["weights_sha256"] != sha:
                raise InputError(f"{folder}: converted from other weights than the model compared")
        with tr.progress_task(progress, "digits: PyTorch vs LiteRT", 2 + len(steppers)) as update:
            rows = _compare(model, module, steppers, threads, batch, steps, scheduler, n_quality, step_runs,
                            loop_runs, seed, classifier, update)
    finally:
        for stepper in steppers.values():
            stepper.close()
    t = detect_target()
    setup = {"threads": threads, "batch": batch, "steps": steps, "scheduler": scheduler, "n_quality": n_quality,
             "seed": seed, "cpu": t.cpu_model, "isa": list(t.isa), "loadavg_before": load_before,
             "loadavg_after": os.getloadavg(), "versions": versions()}
    return {"setup": setup, "rows": rows}


def _compare(model: Any, module: torch.nn.Module, steppers: dict[str, LiteRtDenoiser], threads: int, batch: int,
             steps: int, scheduler: str, n_quality: int, step_runs: int, loop_runs: int, seed: int, classifier: Any,
             update: Callable[..., None]) -> list[dict[str, Any]]:
    """The measurements of `compare_digits_runtimes`, one row per runtime (PyTorch first)."""
    feed = {k: v.numpy() for k, v in _samples(module, batch).items()}
    torch_runner = TorchRunner(module, list(feed), threads)
    try:
        step = measure_interleaved({TORCH: torch_runner, **{k: s.runner for k, s in steppers.items()}}, feed,
                                   warmup=5, runs=step_runs)
    finally:
        torch_runner.close()
    update(1, info="(one step)")
    fns: dict[str, Any] = {TORCH: None, **steppers}  # None: sample_digits runs the PyTorch module itself
    labels = torch.arange(batch) % digits.NUM_CLASSES

    def sampling(fn: Any) -> Callable[[], Any]:
        def run() -> Any:
            with tr.torch_threads(threads):
                return sample_digits(model, labels, steps, scheduler, seed, progress=False, step_fn=fn)
        return run

    loop = measure_interleaved({k: _Sampling(k, sampling(fn)) for k, fn in fns.items()}, {}, warmup=1,
                               runs=loop_runs)
    update(1, info="(whole runs)")
    quality_labels = torch.arange(n_quality) % digits.NUM_CLASSES
    rows, base = [], None
    for name, fn in fns.items():
        with tr.torch_threads(threads):
            images = sample_digits(model, quality_labels, steps, scheduler, seed, progress=False, step_fn=fn)
        base = images if base is None else base
        rows.append({
            "runtime": name, **_engine(module, steppers.get(name), threads),
            "step_ms": step[name].to_dict(), "loop_ms": loop[name].to_dict(),
            "step_speedup": paired_speedup(step[TORCH].samples, step[name].samples)._asdict(),
            "accuracy": quality.conditional_accuracy(images, quality_labels, classifier).accuracy,
            "frechet": quality.frechet_distance(images, None, classifier),
            "psnr_vs_pytorch": None if name == TORCH else quality.psnr(base, images),
            "ssim_vs_pytorch": None if name == TORCH else quality.ssim(base, images)})
        update(1, info=f"({name} quality)")
    return rows


def _engine(module: torch.nn.Module, stepper: LiteRtDenoiser | None, threads: int) -> dict[str, Any]:
    """What a row runs on: the engine, quantize, the batch converted for (LiteRT) and the size of its weights."""
    if stepper is None:
        size = sum(p.numel() * p.element_size() for p in module.parameters())
        return {"engine": f"PyTorch eager · {threads} thread{'s' if threads > 1 else ''}", "quantize": "none", "converted_batch": None,
                "size_bytes": size}
    meta = stepper.meta
    return {"engine": stepper.runner.label, "quantize": meta["quantize"], "converted_batch": meta["batch"],
            "size_bytes": meta["size_bytes"]}
