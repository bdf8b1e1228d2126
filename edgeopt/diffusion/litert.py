"""Stable Diffusion on LiteRT: the text encoder, UNet and VAE decoder converted with litert-torch to fixed-shape
.tflite files, optionally with int8 weights, checked against PyTorch, and run as the three calls of the text-to-image
loop on LiteRT CompiledModels (XNNPACK).

The split is litert-torch's own Stable Diffusion example's (clip / diffusion / decoder, signatures `encode`,
`diffusion`, `decode`), but the modules converted are diffusers' and transformers' own (`TextEncode`, `UNetStep`,
`VaeDecode` of `edgeopt.diffusion.sd`), so any SD-1.x folder converts without the example's re-authored layers and
weight-name maps; the UNet takes the timestep itself (the example passes a precomputed time embedding).
`convert_sd` writes `text_encoder.tflite`, `unet.tflite` and `decoder.tflite` and `sd_litert.json` (shapes, quantize,
per-component check, versions); `quantize_sd` makes the int8-weight variant of an fp32 folder without converting
again; `litert_components` opens a folder as drop-in calls: `text_to_image(dataclasses.replace(sd,
**litert_components(folder)), ...)` runs the whole denoising loop on LiteRT. `Job`, `convert_job`, `quantize_tflite`
and `install_checked` also convert the digits denoiser (`edgeopt.diffusion.digits_litert`).
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import warnings
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from edgeopt.artifact import sha256_module, write_bytes_atomic
from edgeopt.diffusion.sd import StableDiffusion, TextEncode, UNetStep, VaeDecode
from edgeopt.diffusion.text2img import tokenize
from edgeopt.errors import InputError, first_line
from edgeopt.extras import require
from edgeopt.kernels.layer_stats import CallRunner
from edgeopt.measure.fidelity import compare
from edgeopt.measure.latency import measure_interleaved, paired_speedup
from edgeopt.measure.litert import LiteRtRunner, conversion_error, quiet_native_stderr
from edgeopt.target import detect_target
from edgeopt.versions import versions

SIDECAR = "sd_litert.json"
FORMAT = 1
COMPONENTS = ("text_encoder", "unet", "decoder")
CALLS = {"text_encoder": "encode_text", "unet": "unet_step", "decoder": "decode_latents"}  # StableDiffusion fields
UNET_BATCHES = (1, 2)  # 2: classifier-free guidance (negative prompt, prompt); 1: guidance 1
# the LiteRT quantizer's (ai-edge-quantizer) recipe behind each `quantize` value, None: fp32 as converted
RECIPES: dict[str, str | None] = {"none": None, "weight_only_int8": "weight_only_wi8_afp32",
                                  "dynamic_int8": "dynamic_wi8_afp32"}
FP32_REL_TOL = 1e-4  # fp32: max |LiteRT - PyTorch| over max |PyTorch|, per signature (convert.litert's tolerance)
MIN_COSINE = {"weight_only_int8": 0.99, "dynamic_int8": 0.99}  # int8: the lowest per-sample cosine to PyTorch
CHECK_THREADS = 2  # LiteRT threads of the check after each conversion
PROMPT = "a photo of a cat"  # the text the sample inputs are made from (nothing depends on its words)
Progress = Callable[[int, int], None]


@dataclass
class Job:
    """One component to produce: the module converted and checked, its sample inputs per signature, its hash."""

    name: str
    module: torch.nn.Module
    samples: dict[str, dict[str, torch.Tensor]]
    sha256: str

    @property
    def signatures(self) -> dict[str, dict[str, list[int]]]:
        return {sig: {k: list(v.shape) for k, v in feed.items()} for sig, feed in self.samples.items()}


# ---------------------------------------------------------------------------------------------- converting
def convert_sd(sd: StableDiffusion, out_dir: str | Path, quantize: str = "none",
               components: Sequence[str] = COMPONENTS, height: int | None = None, width: int | None = None,
               unet_batches: Sequence[int] = (2,), progress: Progress | None = None) -> dict[str, Any]:
    """Convert `sd`'s components with litert-torch into `out_dir/{text_encoder,unet,decoder}.tflite` and return
    the facts written to `out_dir/sd_litert.json`.

    Shapes are fixed: token ids (1, 77); the UNet's latents (B, 4, h, w), timesteps (B,) float32 and text states
    (B, 77, D), one signature `diffusion_b{B}` per batch of `unet_batches` (2 for classifier-free guidance, 1 for
    guidance 1); the decoder's latents (1, 4, h, w) -> image (1, 3, height, width); `height` / `width` default to
    the model's size. `quantize="weight_only_int8"` stores int8 weights (the LiteRT quantizer's
    `weight_only_wi8_afp32`), "dynamic_int8" also quantizes activations on the fly (`dynamic_wi8_afp32`). Each file
    runs on LiteRT beside PyTorch on its sample inputs before it is moved into place: fp32 within FP32_REL_TOL
    relative, int8 at least MIN_COSINE. `progress(done, total)` is called after each component. A component already
    in `out_dir` from the same weights and shapes is kept, so an interrupted run resumes; a folder converted with
    another quantize or size is an InputError.
    """
    check_quantize(quantize)
    height, width = _size(sd, height, width)
    jobs = _jobs(sd, components, height, width, unet_batches)
    return _produce(sd, Path(out_dir), quantize, height, width, jobs, convert_job, progress)


def quantize_sd(sd: StableDiffusion, src: str | Path, out_dir: str | Path, quantize: str = "weight_only_int8",
                progress: Progress | None = None, components: Sequence[str] | None = None) -> dict[str, Any]:
    """The `quantize` variant of the fp32 folder `src` (written by `convert_sd` from `sd`) in `out_dir`: each
    component's .tflite (all in `src`, or those of `components`) quantized by the LiteRT quantizer and checked
    against PyTorch as `convert_sd` does, with no second conversion. `src` must hold fp32 components converted from
    these very weights."""
    check_quantize(quantize)
    if quantize == "none":
        raise InputError("quantize_sd makes a quantized variant; quantize='none' is convert_sd's output itself")
    src = Path(src)
    meta = read_sidecar(src)
    if meta["quantize"] != "none":
        raise InputError(f"{src}: holds a {meta['quantize']} conversion; quantize_sd starts from an fp32 one")
    entries = meta["components"]
    if components is not None:
        _check_components(components)
        lacking = [c for c in components if c not in entries]
        if lacking:
            raise InputError(f"{src}: holds no {', '.join(lacking)} (convert it with convert_sd first)")
        entries = {name: entries[name] for name in COMPONENTS if name in components}
    batches = [shapes["sample"][0] for shapes in entries["unet"]["signatures"].values()] if "unet" in entries else [2]
    jobs = _jobs(sd, list(entries), meta["height"], meta["width"], batches)
    for job in jobs:
        if entries[job.name]["weights_sha256"] != job.sha256:
            raise InputError(f"{src / entries[job.name]['file']}: converted from other {job.name} weights than "
                             f"{sd.source}'s")
        _component_file(src, job.name, entries[job.name])

    def read(job: Job) -> bytes:
        return (src / entries[job.name]["file"]).read_bytes()

    return _produce(sd, Path(out_dir), quantize, meta["height"], meta["width"], jobs, read, progress)


def check_quantize(quantize: str) -> None:
    if quantize not in RECIPES:
        raise InputError(f"quantize {quantize!r}: known: {', '.join(RECIPES)}")


def _check_components(components: Sequence[str]) -> None:
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown or not components:
        what = f"unknown {unknown[0]!r}" if unknown else "name at least one"
        raise InputError(f"components: {what} (known: {', '.join(COMPONENTS)})")


def _size(sd: StableDiffusion, height: int | None, width: int | None) -> tuple[int, int]:
    """(height, width) in pixels: the model's default where not given; each a positive multiple of the VAE's factor."""
    h0, w0 = sd.default_size
    height, width = height or h0, width or w0
    f = sd.vae_scale_factor
    for name, v in (("height", height), ("width", width)):
        if v <= 0 or v % f:
            raise InputError(f"{name} must be a positive multiple of {f} pixels, got {v}")
    return height, width


def _jobs(sd: StableDiffusion, components: Sequence[str], height: int, width: int,
          unet_batches: Sequence[int]) -> list[Job]:
    """The components asked for, in COMPONENTS order, with their modules and seeded sample inputs."""
    _check_components(components)
    bad = [b for b in unet_batches if b not in UNET_BATCHES]
    if bad or not unet_batches:
        raise InputError(f"unet_batches: each one of {UNET_BATCHES} (2 guided, 1 at guidance 1), got "
                         f"{list(unet_batches)}")
    f, c = sd.vae_scale_factor, sd.latent_channels
    jobs = []
    with torch.no_grad():  # not inference_mode: torch.export refuses inference tensors
        encode = _module(sd, "text_encoder")
        ids = tokenize(sd, PROMPT)[0].to(torch.int32)  # litert-torch stores int64 inputs as int32
        for name in (n for n in COMPONENTS if n in components):
            module = encode if name == "text_encoder" else _module(sd, name)
            gen = torch.Generator().manual_seed(COMPONENTS.index(name))
            if name == "text_encoder":
                samples = {"encode": {"input_ids": ids}}
            elif name == "unet":
                text = torch.cat([encode(tokenize(sd, "")[0]), encode(ids)])  # (2, T, D): negative prompt, prompt
                samples = {f"diffusion_b{b}": {"sample": torch.randn(b, c, height // f, width // f, generator=gen),
                                               "timestep": torch.full((b,), 981.0),
                                               "encoder_hidden_states": text[-b:]}
                           for b in sorted(set(unet_batches), reverse=True)}
            else:
                samples = {"decode": {"latents": torch.randn(1, c, height // f, width // f, generator=gen)}}
            jobs.append(Job(name, module, samples, sha256_module(module)))
    return jobs


def _produce(sd: StableDiffusion, out_dir: Path, quantize: str, height: int, width: int, jobs: list[Job],
             fp32: Callable[[Job], bytes], progress: Progress | None) -> dict[str, Any]:
    """Write each job's file (fp32 bytes from `fp32`, quantized, checked) into `out_dir`, skipping those already
    there, and the sidecar after each one."""
    meta = _open_out(sd, out_dir, quantize, height, width, [job.name for job in jobs])
    for i, job in enumerate(jobs):
        entry = meta["components"].get(job.name)
        if not (entry and entry["weights_sha256"] == job.sha256 and entry["signatures"] == job.signatures
                and _intact(out_dir, entry)):
            t0 = time.perf_counter()
            content = fp32(job)
            if quantize != "none":
                content = quantize_tflite(content, job.name, quantize)
            check = install_checked(out_dir, job, content, quantize)
            meta["components"][job.name] = {
                "file": f"{job.name}.tflite", "signatures": job.signatures, "weights_sha256": job.sha256,
                "size_bytes": len(content), "seconds": round(time.perf_counter() - t0, 2), "check": check}
            _write_sidecar(out_dir, meta)
        if progress is not None:
            progress(i + 1, len(jobs))
    return meta


def _open_out(sd: StableDiffusion, out_dir: Path, quantize: str, height: int, width: int,
              converting: Sequence[str]) -> dict[str, Any]:
    """The sidecar to extend: `out_dir`'s own when it was written for the same quantize and size, else a fresh one
    (`out_dir` is made if missing). A component kept from before (not among those `converting` now) must come
    from `sd`'s weights: mixing two models' components in one folder is an InputError."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"{out_dir}: is a file, expected a folder for the .tflite files")
    if not out_dir.parent.is_dir():
        raise InputError(f"{out_dir.parent}: no such folder")
    out_dir.mkdir(exist_ok=True)
    fresh = {"format": FORMAT, "source": sd.source, "quantize": quantize, "recipe": RECIPES[quantize],
             "height": height, "width": width, "components": {}, "versions": versions()}
    if not (out_dir / SIDECAR).is_file():
        return fresh
    old = read_sidecar(out_dir)
    if (old["quantize"], old["height"], old["width"]) != (quantize, height, width):
        raise InputError(f"{out_dir}: holds a {old['quantize']} {old['height']}x{old['width']} conversion, not "
                         f"{quantize} {height}x{width}; write to another folder")
    for name, entry in old["components"].items():
        if name not in converting and entry["weights_sha256"] != sha256_module(_module(sd, name)):
            raise InputError(f"{out_dir / entry['file']}: converted from other {name} weights than {sd.source}'s; "
                             f"convert {name} too, or write to another folder")
    return {**fresh, "components": old["components"]}


def _module(sd: StableDiffusion, name: str) -> torch.nn.Module:
    """The PyTorch module a component is converted from: the text encoder, the UNet step or the VAE's decoding."""
    if name == "text_encoder":
        return TextEncode(sd.text_encoder).eval()
    return UNetStep(sd.unet).eval() if name == "unet" else VaeDecode(sd.vae).eval()


def _intact(folder: Path, entry: dict[str, Any]) -> bool:
    path = folder / entry["file"]
    return path.is_file() and path.stat().st_size == entry["size_bytes"]


def convert_job(job: Job) -> bytes:
    """litert-torch's flatbuffer of `job.module`, one signature per sample feed; a failure is a one-line InputError
    naming the component and the op litert-torch cannot lower (or the part torch.export cannot trace)."""
    with quiet_native_stderr():  # TensorFlow's and absl's start-up lines
        litert_torch = require("litert_torch", "diffusion models on LiteRT")
    litert_torch.config.show_progress = False
    converter = litert_torch.Converter()
    for sig, feed in job.samples.items():
        converter.signature(sig, job.module, sample_kwargs=feed)
    try:  # torch.export prints its partial graph to sys.stderr when it fails; pytree deprecations on success
        with torch.no_grad(), redirect_stderr(io.StringIO()), quiet_native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return bytes(converter.convert().model_content())
    except MemoryError:
        raise InputError(f"{job.name}: too big to convert here: out of memory ({_memory_facts()}); convert a "
                         "smaller configuration or on a machine with more memory") from None
    except Exception as e:
        raise InputError(conversion_error(e, job.module, job.name)) from None


def _memory_facts() -> str:
    """This process's peak RSS, its address-space limit (when one is set) and the machine's memory, in GiB (Linux)."""
    import resource  # POSIX only: imported where it is used

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"peak RSS {peak:.1f} GiB" + (f", address-space limit {limit / 2**30:.1f} GiB" if limit > 0 else "") + \
        f", machine {total:.1f} GiB"


def quantize_tflite(content: bytes, name: str, quantize: str) -> bytes:
    """`content` quantized by the LiteRT quantizer's recipe for `quantize` (RECIPES)."""
    quantizer = require("ai_edge_quantizer.quantizer", f"diffusion models on LiteRT, quantize={quantize}")
    recipe = getattr(require("ai_edge_quantizer.recipe", "LiteRT quantization"), str(RECIPES[quantize]))()
    try:  # the quantizer prints a size report to stdout and progress bars to stderr
        with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()), quiet_native_stderr():
            result = quantizer.Quantizer(content, recipe).quantize(enable_progress_bar=False,
                                                                    enable_progress_report=False)
        return bytes(result.quantized_model)
    except Exception as e:
        why = re.sub(r"tensor: \S*/([^/\s]+/[^/\s]+)", r"tensor: …/\1", first_line(e, 2000))  # the module path's end
        raise InputError(f"{name}: the LiteRT quantizer failed ({quantize}): {why[:300]}") from None


def install_checked(out_dir: Path, job: Job, content: bytes, quantize: str) -> dict[str, Any]:
    """Write `content` beside its final name, check it against PyTorch, then rename it into place."""
    tmp = out_dir / f".{job.name}.{os.getpid()}.tmp.tflite"
    try:
        tmp.write_bytes(content)
        check = _check(tmp, job, quantize)
        tmp.replace(out_dir / f"{job.name}.tflite")
    finally:
        tmp.unlink(missing_ok=True)
    return check


def _check(path: Path, job: Job, quantize: str) -> dict[str, Any]:
    """Each signature of `path` on LiteRT beside the PyTorch module on its sample feed: the worst relative error and
    cosine, or an InputError when they miss the tolerance."""
    worst_rel, worst_cos = 0.0, 1.0
    for sig, feed in job.samples.items():
        with torch.no_grad():
            want = job.module(**feed).numpy()
        try:
            with LiteRtRunner(path, CHECK_THREADS, signature=sig) as runner:
                got = runner.run({k: v.numpy() for k, v in feed.items()})
        except InputError as e:
            raise InputError(f"{job.name}: LiteRT cannot run the converted model: {e}") from None
        fid = compare([want], got[:1])
        worst_rel = max(worst_rel, _rel_error(fid, want))
        worst_cos = min(worst_cos, fid["min_cosine"])
    if quantize == "none" and not worst_rel <= FP32_REL_TOL:
        raise InputError(f"{job.name}: the LiteRT model differs from PyTorch by {worst_rel:.3g} relative "
                         f"(fp32 tolerance {FP32_REL_TOL})")
    if quantize != "none" and not worst_cos >= MIN_COSINE[quantize]:
        raise InputError(f"{job.name}: the {quantize} LiteRT model's cosine to PyTorch is {worst_cos:.5f} "
                         f"(< {MIN_COSINE[quantize]})")
    return {"max_rel_error": worst_rel, "min_cosine": worst_cos, "feeds": len(job.samples)}


def _rel_error(fid: dict[str, Any], want: np.ndarray) -> float:
    """The largest |LiteRT - PyTorch| (`compare`'s max_abs) over the largest |PyTorch| output."""
    return fid["max_abs"] / max(float(np.abs(want).max()), 1e-12)


def _write_sidecar(folder: Path, meta: dict[str, Any]) -> None:
    write_bytes_atomic(folder / SIDECAR, json.dumps(meta, indent=1).encode())


def read_sidecar(folder: str | Path) -> dict[str, Any]:
    """The facts `convert_sd` wrote into `folder` (sd_litert.json), or a one-line InputError."""
    return read_json_sidecar(folder, SIDECAR, FORMAT, "convert_sd")


def read_json_sidecar(folder: str | Path, sidecar: str, fmt: int, writer: str) -> dict[str, Any]:
    """The JSON `writer` wrote into `folder` as `sidecar` (format `fmt`), or a one-line InputError."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder (write one with {writer})")
    path = folder / sidecar
    if not path.is_file():
        raise InputError(f"{folder}: no {sidecar} (not a folder written by {writer})")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{path}: unreadable ({first_line(e)})") from None
    if not isinstance(meta, dict) or meta.get("format") != fmt:
        raise InputError(f"{path}: not a format-{fmt} {sidecar}")
    return meta


def _component_file(folder: Path, name: str, entry: dict[str, Any] | None) -> Path:
    """The component's .tflite in `folder`, or an InputError saying it was never converted or is missing."""
    if entry is None:
        raise InputError(f"{folder}: no {name} in {SIDECAR} (convert it with convert_sd)")
    path = folder / entry["file"]
    if not _intact(folder, entry):
        raise InputError(f"{path}: missing or not the file convert_sd wrote (convert {name} again)")
    return path


# ---------------------------------------------------------------------------------------------- running
class LiteRtCall:
    """One component on LiteRT as a call of the text-to-image loop: torch tensors in (the order and dtypes of the
    PyTorch call), a float32 torch tensor out, through the signature whose input shapes match the call.

    Shapes were fixed at conversion: a call no signature fits (another image size, a batch not converted) is an
    InputError saying which shapes the file takes."""

    def __init__(self, path: Path, signatures: dict[str, dict[str, list[int]]], threads: int):
        self.path = path
        self.signatures = signatures
        self._runners: dict[str, LiteRtRunner] = {}
        try:
            for sig in signatures:
                self._runners[sig] = LiteRtRunner(path, threads, signature=sig, api="compiled")
        except Exception:
            self.close()
            raise

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        shapes = [list(a.shape) for a in args]
        for sig, inputs in self.signatures.items():
            if list(inputs.values()) == shapes:
                out = self._runners[sig].run({k: a.detach().numpy() for k, a in zip(inputs, args)})
                return torch.from_numpy(out[0])
        takes = " or ".join(", ".join(f"{k}{v}" for k, v in inputs.items()) for inputs in self.signatures.values())
        raise InputError(f"{self.path}: converted for {takes}; got {', '.join(map(str, shapes))} (convert again "
                         "with this height/width, and unet_batches for the guidance)")

    def close(self) -> None:
        for runner in self._runners.values():
            runner.close()
        self._runners = {}

    def __enter__(self) -> LiteRtCall:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def litert_components(folder: str | Path, threads: int = 2,
                      components: Sequence[str] = COMPONENTS) -> dict[str, LiteRtCall]:
    """The components of a `convert_sd` folder as LiteRT CompiledModels (XNNPACK, `threads` threads), keyed by the
    StableDiffusion call each replaces (`encode_text`, `unet_step`, `decode_latents`), so that
    `dataclasses.replace(sd, **litert_components(folder))` runs text to image on LiteRT. Close them when done."""
    folder = Path(folder)
    meta = read_sidecar(folder)
    _check_components(components)
    paths = {name: _component_file(folder, name, meta["components"].get(name)) for name in components}
    calls: dict[str, LiteRtCall] = {}
    try:
        for name, path in paths.items():
            calls[CALLS[name]] = LiteRtCall(path, meta["components"][name]["signatures"], threads)
    except Exception:
        for call in calls.values():
            call.close()
        raise
    return calls


# ---------------------------------------------------------------------------------------------- comparing
def compare_sd_components(sd: StableDiffusion, folders: dict[str, str | Path], *, threads: int = 2, runs: int = 5,
                          warmup: int = 1, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """PyTorch beside each LiteRT conversion of `sd` (`folders`: row label -> a `convert_sd` folder of the same
    weights), component by component, at `threads` threads: returned as {"setup", "components": {name: [rows]}}.

    Per component (text encoder, one UNet step at the converted guidance batch, VAE decode) every runtime runs the
    component's seeded sample feed (the one conversion checked against), timed interleaved round-robin in this
    process (`runs` rounds after `warmup`); a row gives the median and spread, the paired speedup over PyTorch with
    its 95 % interval, the weights' size, and the output's worst relative error and cosine to PyTorch. A component
    a folder lacks is a row with `missing` and the reason (e.g. the quantizer could not quantize it)."""
    if min(threads, runs) < 1 or warmup < 0:
        raise InputError("threads and runs must be >= 1 and warmup >= 0")
    if "pytorch" in folders:
        raise InputError("'pytorch' is the PyTorch row's label; name the LiteRT rows otherwise")
    metas = {label: read_sidecar(folder) for label, folder in folders.items()}
    sizes = {(meta["height"], meta["width"]) for meta in metas.values()}
    if len(sizes) > 1:
        raise InputError(f"the folders were converted for different image sizes ({sorted(sizes)}); compare one size")
    height, width = sizes.pop() if sizes else sd.default_size
    batches = sorted({shape["sample"][0] for meta in metas.values() for name, e in meta["components"].items()
                      if name == "unet" for shape in e["signatures"].values()}) or [2]
    jobs = {job.name: job for job in _jobs(sd, COMPONENTS, height, width, batches[-1:])}
    load_before = os.getloadavg()
    out: dict[str, list[dict[str, Any]]] = {}
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name, job in jobs.items():
            if progress is not None:
                progress(name)
            (sig, feed), = list(job.samples.items())[:1]
            for label, meta in metas.items():
                entry = meta["components"].get(name)
                if entry is not None and entry["weights_sha256"] != job.sha256:
                    raise InputError(f"{folders[label]}: {name} converted from other weights than {sd.source}'s")
            calls: dict[str, LiteRtCall] = {}
            try:
                for label, meta in metas.items():
                    entry = meta["components"].get(name)
                    if entry is not None and sig in entry["signatures"]:
                        calls[label] = LiteRtCall(_component_file(Path(folders[label]), name, entry),
                                                  {sig: entry["signatures"][sig]}, threads)
                args = tuple(feed.values())
                with torch.inference_mode():
                    want = job.module(*args)
                    got = {label: call(*args) for label, call in calls.items()}
                    runners = {"pytorch": CallRunner("pytorch", lambda: job.module(*args), threads),
                               **{label: CallRunner(label, lambda c=call: c(*args), threads)
                                  for label, call in calls.items()}}
                    stats = measure_interleaved(runners, feed={}, warmup=warmup, runs=runs)
            finally:
                for call in calls.values():
                    call.close()
            size = sum(p.numel() * p.element_size() for p in job.module.parameters())
            rows = [{"runtime": "pytorch", "quantize": "none", "size_bytes": size, "ms": stats["pytorch"].to_dict(),
                     "speedup": None, "max_rel_error": 0.0, "min_cosine": 1.0}]
            for label, meta in metas.items():
                if label not in calls:
                    why = "not converted" if name not in meta["components"] else f"no signature {sig}"
                    rows.append({"runtime": label, "quantize": meta["quantize"], "missing": why})
                    continue
                fid = compare([want.numpy()], [got[label].numpy()])
                rows.append({"runtime": label, "quantize": meta["quantize"],
                             "size_bytes": meta["components"][name]["size_bytes"], "ms": stats[label].to_dict(),
                             "speedup": paired_speedup(stats["pytorch"].samples, stats[label].samples)._asdict(),
                             "max_rel_error": _rel_error(fid, want.numpy()),
                             "min_cosine": fid["min_cosine"]})
            out[name] = rows
    finally:
        torch.set_num_threads(prev_threads)
    t = detect_target()
    setup = {"source": sd.source, "height": height, "width": width, "unet_batch": batches[-1], "threads": threads,
             "runs": runs, "cpu": t.cpu_model, "isa": list(t.isa), "loadavg_before": load_before,
             "loadavg_after": os.getloadavg(), "versions": versions()}
    return {"setup": setup, "components": out}
