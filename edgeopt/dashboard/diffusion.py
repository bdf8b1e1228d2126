"""The dashboard's live diffusion page: toggle each kernel optimization, generate an image with N steps in the
background, and see the image, per-component latency and memory next to the earlier runs (no Streamlit here).

How a run goes: the page checks its inputs (`diffusion_request`) and submits `generation_job(bench, request)` to
the dashboard's Worker (kind "diffusion"). The job asks the page's `DiffusionBench` for the model with the toggled
kernel passes applied (`kernels.fused_norm`, `kernels.attention`, `kernels.winograd`, the same passes as the
UNet table in `edgeopt.unet_table`, with the single-pass C++ kernels where they build here), built on a copy of
the untouched model and cached per toggle set, then generates: zoo:digits-diffusion through
`edgeopt.zoo.digits_diffusion.sample_images`, Stable Diffusion through `edgeopt.diffusion.text2img.text_to_image`.
Only one run goes at a time in the whole server (a second is refused with "busy"), so runs never share the cores
and their timings stay comparable. torch and diffusers are imported when a model is loaded, not with the page.
"""

from __future__ import annotations

import collections
import contextlib
import io
import statistics
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgeopt.dashboard.state import safe_path
from edgeopt.dashboard.worker import Job
from edgeopt.errors import InputError

DIGITS = "zoo:digits-diffusion"
MODELS = {
    DIGITS: "class-conditional UNet drawing 32×32 digits (trained on first use: a few CPU minutes, then cached)",
    "zoo:sd-small": "Stable Diffusion 1.x, tiny configuration, random weights (fast; the image is noise)",
    "zoo:sd-1.4": "SD-1.4's real configuration, random weights (about 1 B parameters, 4 GB; minutes per image on a "
                  "CPU)",
}
LOCAL_SD = "a local SD folder…"
ATTENTION = {"partial_softmax": "partially fused softmax", "flash": "FlashAttention"}
SCHEDULERS = {"digits": ("ddim", "ddpm"), "sd": ("ddim", "pndm", "euler")}
MAX_STEPS = 200
MAX_SIZE = 1024
MAX_PROMPT_CHARS = 1000
MAX_GUIDANCE = 30.0
MAX_THREADS = 64
VARIANT_BUDGET_MB = 4096.0  # optimized copies kept per model: as many as fit in this many MB of weights (at least 1)
CHECK_REL_ERROR = 1e-3  # a built copy must match the untouched component this closely on a small input
RUN_LOCK = threading.Lock()  # one diffusion run at a time in the whole server


# ---------------------------------------------------------------------------------------- toggles

@dataclass(frozen=True)
class Toggles:
    """The optimizations switched on: fused GroupNorm+SiLU, an attention kernel (None: untouched), Winograd
    F(4×4, 3×3)."""

    fused_norm: bool = False
    attention: str | None = None
    winograd: bool = False

    def __post_init__(self) -> None:
        if self.attention is not None and self.attention not in ATTENTION:
            raise InputError(f"attention: one of {', '.join(ATTENTION)} or off, got {self.attention!r}")

    @property
    def untouched(self) -> bool:
        return self == Toggles()

    @property
    def label(self) -> str:
        """A short name, e.g. "fused norm + FlashAttention + Winograd" or "untouched"."""
        parts = (["fused norm"] if self.fused_norm else []) + ([ATTENTION[self.attention]] if self.attention else []) \
            + (["Winograd"] if self.winograd else [])
        return " + ".join(parts) or "untouched"


def toggle_passes(toggles: Toggles, native: bool) -> list[tuple[str, dict[str, Any]]]:
    """(pass name, config) in the order of the paper's table: fused norm, attention, Winograd. With `native` the
    fused norm and attention run edgeopt's single-pass C++ kernels; Winograd takes the paper's fixed F(4×4, 3×3)
    (layers whose F4 error exceeds the pass's budget stay direct). No per-layer tuning, so a toggle builds fast."""
    out: list[tuple[str, dict[str, Any]]] = []
    if toggles.fused_norm:
        out.append(("kernels.fused_norm", {"backend": "native" if native else "eager", "measure": False}))
    if toggles.attention:
        impl = f"{toggles.attention}_native" if native else toggles.attention
        out.append(("kernels.attention", {"impl": impl, "measure": False}))
    if toggles.winograd:
        out.append(("kernels.winograd", {"tile": 4, "measure": False}))
    return out


# ---------------------------------------------------------------------------------------- requests

@dataclass(frozen=True)
class DiffusionRequest:
    """What the page asks for, checked (see `diffusion_request`). `size` 0 means the model's own size."""

    source: str
    kind: str  # "digits" | "sd"
    toggles: Toggles
    steps: int
    seed: int = 0
    prompt: str = ""
    digit: int = 0
    guidance: float = 7.5
    size: int = 0
    scheduler: str = "ddim"
    threads: int = 2
    tensor_memory: bool = True

    @property
    def what(self) -> str:
        """What is drawn: the digit, or the prompt."""
        return f"digit {self.digit}" if self.kind == "digits" else self.prompt

    def inputs_key(self) -> tuple:
        """Everything that decides the image apart from the toggles (runs with the same key are comparable)."""
        return (self.source, self.what, self.steps, self.seed, self.guidance, self.size, self.scheduler)


def _whole(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or int(v) != v or not lo <= v <= hi:
        raise InputError(f"{name}: a whole number from {lo} to {hi}, got {v!r}")
    return int(v)


def model_kind(source: str, allowed: Sequence[Path] = ()) -> tuple[str, str]:
    """(source as the bench loads it, "digits" | "sd"): a known zoo name, or an SD-1.x folder inside `allowed`."""
    s = (source or "").strip()
    if s in MODELS:
        return s, "digits" if s == DIGITS else "sd"
    if s.startswith("zoo:"):
        raise InputError(f"unknown model {s!r}; known: {', '.join(MODELS)} or a local Stable Diffusion folder")
    from edgeopt.diffusion.sd import check_folder  # lazy: the diffusion module imports torch

    folder = safe_path(s, allowed, "Stable Diffusion folder")
    check_folder(folder)
    return str(folder), "sd"


def diffusion_request(source: str, steps: Any, seed: Any = 0, *, prompt: str = "", digit: Any = 0,
                      guidance: Any = 7.5, size: Any = 0, scheduler: str = "ddim", threads: Any = 2,
                      fused_norm: bool = False, attention: str | None = None, winograd: bool = False,
                      tensor_memory: bool = True, allowed: Sequence[Path] = ()) -> DiffusionRequest:
    """A checked request, or a one-line InputError naming the first bad field (before anything is loaded)."""
    source, kind = model_kind(source, allowed)
    steps = _whole("steps", steps, 1, MAX_STEPS)
    seed = _whole("seed", seed, 0, 2**32 - 1)
    threads = _whole("threads", threads, 1, MAX_THREADS)
    if scheduler not in SCHEDULERS[kind]:
        raise InputError(f"scheduler: one of {', '.join(SCHEDULERS[kind])} for this model, got {scheduler!r}")
    toggles = Toggles(bool(fused_norm), attention or None, bool(winograd))
    if kind == "digits":
        return DiffusionRequest(source, kind, toggles, steps, seed, digit=_whole("digit", digit, 0, 9),
                                scheduler=scheduler, threads=threads, tensor_memory=tensor_memory)
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError("prompt: empty; type what to draw")
    if len(prompt) > MAX_PROMPT_CHARS or "\x00" in prompt:
        raise InputError(f"prompt: at most {MAX_PROMPT_CHARS} characters and no NUL, got {len(prompt)} characters")
    ok = isinstance(guidance, (int, float)) and not isinstance(guidance, bool) and 0 <= guidance <= MAX_GUIDANCE
    if not ok:
        raise InputError(f"guidance: a number from 0 to {MAX_GUIDANCE:g}, got {guidance!r}")
    size = _whole("size", size, 0, MAX_SIZE)
    if size % 8:
        raise InputError(f"size: a multiple of 8 pixels (0: the model's own size), got {size}")
    return DiffusionRequest(source, kind, toggles, steps, seed, prompt=prompt, guidance=float(guidance), size=size,
                            scheduler=scheduler, threads=threads, tensor_memory=tensor_memory)


# ---------------------------------------------------------------------------------------- measuring helpers

def reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux: "5" into /proc/self/clear_refs, see
    proc(5)); False where that is not possible. Written here: neither psutil nor the standard library offers it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def weights_mb(*modules: Any) -> float:
    """MB (1e6 bytes) of the parameters and buffers of `modules`, each storage counted once (Winograd's
    transformed filters included: they are buffers)."""
    seen: dict[int, int] = {}
    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            s = t.untyped_storage()
            seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values()) / 1e6


def to_png(image: np.ndarray, side: int | None = None) -> bytes:
    """PNG bytes of an (H, W, 3) uint8 image; with `side`, enlarged (nearest neighbour) so its longer side is at
    least `side` pixels, for display."""
    from PIL import Image  # lazy: Pillow comes with diffusers

    img = Image.fromarray(image, "RGB")
    if side and max(img.size) < side:
        k = -(-side // max(img.size))
        img = img.resize((img.width * k, img.height * k), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


class _StepRecorder:
    """Wraps the denoiser: times every call (ms), keeps the first call's inputs, reports each step."""

    def __init__(self, fn: Callable[..., Any], on_step: Callable[[int], None]):
        self.fn, self.on_step = fn, on_step
        self.ms: list[float] = []
        self.first_args: tuple = ()

    def __call__(self, *args: Any) -> Any:
        if not self.first_args:
            self.first_args = tuple(a.clone() if hasattr(a, "clone") else a for a in args)
        t0 = time.perf_counter()
        out = self.fn(*args)
        self.ms.append((time.perf_counter() - t0) * 1e3)
        self.on_step(len(self.ms))
        return out


class _JobProgress:
    """A stand-in for a rich Progress that forwards the zoo model's training progress to a job."""

    def __init__(self, report: Callable[[float, str], None]):
        self.report, self.total, self.done = report, 1, 0

    def add_task(self, description: str, total: int | None = None) -> int:
        self.total, self.done = max(1, int(total or 1)), 0
        return 0

    def update(self, task: int, advance: int = 0, description: str = "") -> None:
        self.done += advance
        self.report(0.9 * self.done / self.total, f"{description} ({self.done}/{self.total}; cached afterwards)")

    def remove_task(self, task: int) -> None:
        pass


# ---------------------------------------------------------------------------------------- runs

@dataclass
class DiffusionRun:
    """One generated image and what it cost. Times in ms (`text_encoder_ms` / `vae_decode_ms` None for the digits
    model, which has neither); `peak_rss_mb` is the server process's peak during the run (its model included);
    `weights_mb` per component; `tensor_peak_mb` the peak ATen tensor memory of one UNet step."""

    label: str
    toggles: Toggles
    request: DiffusionRequest
    image: np.ndarray = field(repr=False)
    png: bytes = field(repr=False)
    unet_step_ms: float
    unet_calls: int
    total_ms: float
    text_encoder_ms: float | None
    vae_decode_ms: float | None
    peak_rss_mb: float
    weights_mb: dict[str, float]
    tensor_peak_mb: float | None
    build_s: float
    changes: str
    notes: list[str] = field(default_factory=list)
    max_abs_vs_untouched: int | None = None  # pixel levels (0..255) against the untouched run with the same inputs
    psnr_vs_untouched: float | None = None
    speedup_vs_untouched: float | None = None  # untouched total / this total, one run each


def history_rows(history: Sequence[DiffusionRun]) -> list[dict[str, Any]]:
    """The history table, newest first."""
    def r(v: float | None, n: int = 1) -> float | None:
        return None if v is None else round(v, n)

    return [{"configuration": h.label, "model": h.request.source, "drawing": h.request.what[:40],
             "steps": h.request.steps, "seed": h.request.seed, "size": f"{h.image.shape[0]}×{h.image.shape[1]}",
             "text encoder ms": r(h.text_encoder_ms), "UNet step ms (median)": r(h.unet_step_ms, 2),
             "VAE decode ms": r(h.vae_decode_ms), "total ms": r(h.total_ms),
             "speedup vs untouched": r(h.speedup_vs_untouched, 2), "peak RSS MB": r(h.peak_rss_mb),
             "weights MB": r(sum(h.weights_mb.values())), "UNet step tensors MB": r(h.tensor_peak_mb, 2),
             "max |Δ| vs untouched": h.max_abs_vs_untouched,
             "PSNR vs untouched dB": None if h.psnr_vs_untouched is None else
             (float("inf") if h.psnr_vs_untouched == float("inf") else round(h.psnr_vs_untouched, 1)),
             "threads": h.request.threads} for h in reversed(history)]


def _summary(component: str, notes: dict[str, Any]) -> str:
    """What the passes changed in one component, in a few words."""
    parts = []
    if "fused_norm" in notes:
        fn = notes["fused_norm"]
        parts.append(f"{len(fn['fused'])} norm+activation pairs fused ({fn['backend']})")
    if "attention" in notes:
        layers = notes["attention"]["layers"]
        impls = sorted({r["impl"] for r in layers.values()})
        parts.append(f"{len(layers)} attention layers → {', '.join(impls)}" if layers else "no attention layers")
    if "winograd" in notes:
        w = notes["winograd"]
        kept = f", {len(w['skipped'])} kept" if w["skipped"] else ""
        parts.append(f"{len(w['replaced'])} convs → Winograd F4{kept}")
    return f"{component}: {'; '.join(parts)}" if parts else ""


class DiffusionBench:
    """One model for the page: the untouched model, its optimized copies (cached per toggle set, as many as
    VARIANT_BUDGET_MB of weights allows), and the runs made so far."""

    def __init__(self, source: str, kind: str):
        self.source, self.kind = source, kind
        self.base: Any = None  # digits: the denoiser module; SD: a StableDiffusion
        self.noise_schedule: dict[str, Any] | None = None
        self._variants: collections.OrderedDict[Toggles, tuple[Any, str]] = collections.OrderedDict()
        self.history: list[DiffusionRun] = []
        self._untouched: dict[tuple, DiffusionRun] = {}  # inputs key -> latest untouched run

    def components(self, model: Any) -> dict[str, Any]:
        """The modules the toggles apply to: the UNet (and the SD VAE decoder; the text encoder runs once per
        image and stays as it is)."""
        if self.kind == "digits":
            return {"unet": model}
        return {"unet": model.unet_step, "vae_decoder": model.decode_latents}

    def load(self, report: Callable[[float, str], None]) -> Any:
        if self.base is not None:
            return self.base
        report(0.0, f"loading {self.source}")
        if self.kind == "digits":
            from edgeopt.zoo.digits_diffusion import train_digits_diffusion  # lazy: imports torch and diffusers

            module, info = train_digits_diffusion(progress=_JobProgress(report))
            self.base, self.noise_schedule = module.eval(), info["noise_schedule"]
        else:
            from edgeopt.diffusion.sd import load_sd  # lazy: imports torch and diffusers

            self.base = load_sd(self.source)
        return self.base

    def variant(self, toggles: Toggles, report: Callable[[float, str], None]) -> tuple[Any, str, float]:
        """(model with the toggled passes, what they changed, seconds spent building it now)."""
        base = self.load(report)
        if toggles.untouched:
            return base, "", 0.0
        if toggles in self._variants:
            self._variants.move_to_end(toggles)
            return (*self._variants[toggles], 0.0)
        keep = max(1, int(VARIANT_BUDGET_MB // max(1e-6, weights_mb(*self.components(base).values()))))
        while len(self._variants) >= keep:  # evicted before building: a big model never holds one copy too many
            self._variants.popitem(last=False)
        t0 = time.perf_counter()
        built, changes = self._build(base, toggles, report)
        self._variants[toggles] = (built, changes)
        return built, changes, time.perf_counter() - t0

    def check_inputs(self, base: Any) -> dict[str, tuple]:
        """Small inputs per component (8×8 latents) on which a built copy must agree with the untouched one."""
        import torch

        gen = torch.Generator().manual_seed(0)
        if self.kind == "digits":
            from edgeopt.zoo.digits import IMAGE_SIZE

            return {"unet": (torch.randn(1, 1, IMAGE_SIZE, IMAGE_SIZE, generator=gen), torch.tensor([500]),
                             torch.tensor([0]))}
        latents = torch.randn(1, base.latent_channels, 8, 8, generator=gen)  # (1, 4, 8, 8)
        text = torch.randn(1, base.max_tokens, base.unet.config.cross_attention_dim, generator=gen)  # (1, T, D)
        return {"unet": (latents, torch.tensor([500]), text), "vae_decoder": (latents,)}

    def _build(self, base: Any, toggles: Toggles, report: Callable[[float, str], None]) -> tuple[Any, str]:
        """The toggled passes on a copy of each component. A copy that fails its check call, or disagrees with the
        untouched component beyond CHECK_REL_ERROR, is dropped (that component stays untouched, and says why)."""
        import tempfile

        from edgeopt.artifact import Artifact, InputSpec
        from edgeopt.kernels import native
        from edgeopt.passes.base import PassContext, build_pass

        why = native.unavailable_reason()
        plan = toggle_passes(toggles, native=why is None)
        inputs = self.check_inputs(base)
        built, summary = {}, []
        with tempfile.TemporaryDirectory(prefix="edgeopt-diffusion-") as tmp:
            for comp, module in self.components(base).items():
                art, notes = Artifact.from_module(module, InputSpec(())), {}
                for i, (name, cfg) in enumerate(plan):
                    report(0.02, f"building {toggles.label}: {name} on the {comp}")
                    ctx = PassContext(stage_dir=Path(tmp) / f"{comp}-{i}")
                    art = build_pass(name, cfg)(art, ctx)
                    notes.update(ctx.notes)
                failed = _disagrees(module, art.module.eval(), inputs[comp])
                built[comp] = module if failed else art.module
                summary.append(f"{comp}: kept untouched: {failed}" if failed else _summary(comp, notes))
        if why is not None and (toggles.fused_norm or toggles.attention):
            summary.append(f"native kernels unavailable ({why}): PyTorch versions used")
        model = built["unet"] if self.kind == "digits" else \
            replace(base, unet_step=built["unet"], decode_latents=built["vae_decoder"])
        return model, "; ".join(s for s in summary if s)

    def generate(self, req: DiffusionRequest, report: Callable[[float, str], None]) -> DiffusionRun:
        """Build (or reuse) the variant for `req.toggles` and draw one image; refused with "busy" while another
        run of this server is going."""
        if (req.source, req.kind) != (self.source, self.kind):
            raise InputError(f"this bench holds {self.source}, the request is for {req.source}")
        if not RUN_LOCK.acquire(blocking=False):
            raise InputError("busy: another diffusion run is in progress; run again when it has finished")
        try:
            model, changes, build_s = self.variant(req.toggles, report)
            run = self._draw(model, req, report)
        finally:
            RUN_LOCK.release()
        run.changes, run.build_s = changes, build_s
        self._compare(run)
        self.history.append(run)
        return run

    def _draw(self, model: Any, req: DiffusionRequest, report: Callable[[float, str], None]) -> DiffusionRun:
        import torch  # lazy: the page itself does not need torch

        from edgeopt.measure.memory import maxrss_mb

        def on_step(i: int) -> None:
            report(0.05 + 0.85 * min(1.0, i / req.steps), f"{req.toggles.label}: UNet call {i}")

        notes: list[str] = []
        if not reset_peak_rss():
            notes.append("peak RSS could not be reset: it is the server's peak since it started")
        comps = self.components(model)
        if req.kind == "digits":
            from edgeopt.train import torch_threads
            from edgeopt.zoo.digits import IMAGE_SIZE
            from edgeopt.zoo.digits_diffusion import sample_images

            rec = _StepRecorder(model, on_step)
            with torch_threads(req.threads):
                t0 = time.perf_counter()
                x = sample_images(rec, 1, (1, IMAGE_SIZE, IMAGE_SIZE), torch.tensor([req.digit]), steps=req.steps,
                                  scheduler=req.scheduler, seed=req.seed, noise_schedule=self.noise_schedule,
                                  progress=False)  # (1, 1, H, W) in [-1, 1]
                total_ms = (time.perf_counter() - t0) * 1e3
            grey = ((x[0, 0] + 1) * 127.5).round().to(torch.uint8).numpy()  # (H, W)
            image, te_ms, vae_ms = np.repeat(grey[:, :, None], 3, axis=2), None, None
            wmb = {"unet": weights_mb(model)}
        else:
            from edgeopt.diffusion.text2img import text_to_image

            rec = _StepRecorder(model.unet_step, on_step)
            image, st = text_to_image(replace(model, unet_step=rec), req.prompt, req.steps, guidance=req.guidance,
                                      seed=req.seed, height=req.size or None, width=req.size or None,
                                      scheduler=req.scheduler, threads=req.threads)
            total_ms, te_ms, vae_ms = st.total_ms, st.text_encoder_ms, st.vae_decode_ms
            notes += st.warnings
            wmb = {"text_encoder": weights_mb(model.encode_text), "unet": weights_mb(comps["unet"]),
                   "vae_decoder": weights_mb(comps["vae_decoder"])}
        peak = maxrss_mb()
        tensor_mb = None
        if req.tensor_memory and rec.first_args:
            report(0.95, "peak tensor memory of one UNet step")
            tensor_mb = _step_tensor_mb(comps["unet"], rec.first_args, req.threads)
        return DiffusionRun(req.toggles.label, req.toggles, req, image, to_png(image),
                            unet_step_ms=statistics.median(rec.ms), unet_calls=len(rec.ms), total_ms=total_ms,
                            text_encoder_ms=te_ms, vae_decode_ms=vae_ms, peak_rss_mb=peak, weights_mb=wmb,
                            tensor_peak_mb=tensor_mb, build_s=0.0, changes="", notes=notes)

    def _compare(self, run: DiffusionRun) -> None:
        """Fill the run's differences from the untouched run with the same inputs (or, for an untouched run,
        remember it as that reference)."""
        key = run.request.inputs_key()
        if run.toggles.untouched:
            self._untouched[key] = run
            return
        ref = self._untouched.get(key)
        if ref is None or ref.image.shape != run.image.shape:
            return
        diff = np.abs(run.image.astype(np.int16) - ref.image.astype(np.int16))
        mse = float((diff.astype(np.float64) ** 2).mean())
        run.max_abs_vs_untouched = int(diff.max())
        run.psnr_vs_untouched = float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))
        run.speedup_vs_untouched = ref.total_ms / run.total_ms if run.total_ms else None

    def untouched_for(self, run: DiffusionRun) -> DiffusionRun | None:
        """The untouched run with the same inputs as `run`, if one was made."""
        return self._untouched.get(run.request.inputs_key())

    def close(self) -> None:
        self._variants.clear()
        self.base = None


def _disagrees(untouched: Any, built: Any, args: tuple) -> str | None:
    """Why the built copy of a component cannot replace the untouched one on `args` (it fails, or its output is off
    by more than CHECK_REL_ERROR, norm-wise), or None when it can."""
    import torch

    from edgeopt.errors import first_line

    try:  # torch.fx prints the failing line of a traced module to stderr before raising: kept off the server's log
        with torch.inference_mode(), contextlib.redirect_stderr(io.StringIO()):
            ref, out = untouched(*args), built(*args)
    except Exception as e:  # a pass that produced a module which does not run on this component
        return f"the optimized copy fails ({type(e).__name__}: {first_line(e)[:160]})"
    err = float((out.double() - ref.double()).norm() / ref.double().norm().clamp_min(1e-30))
    if not err <= CHECK_REL_ERROR:
        return f"the optimized copy is off by {err:.1e} (relative), more than {CHECK_REL_ERROR:g}"
    return None


def _step_tensor_mb(module: Any, args: tuple, threads: int) -> float:
    """Peak MB of the tensors one UNet call allocates (activations and workspace ATen sees; inputs and weights
    excluded), through edgeopt.kernels.layer_stats.peak_intermediate_bytes."""
    import torch

    from edgeopt.kernels.layer_stats import peak_intermediate_bytes
    from edgeopt.train import torch_threads

    with torch_threads(threads), torch.inference_mode():
        return peak_intermediate_bytes(lambda: module(*args), keep=args) / 1e6


def generation_job(bench: DiffusionBench, request: DiffusionRequest) -> Callable[[Job], DiffusionRun]:
    """The Worker job drawing `request` on `bench` (bound now, so later widget changes cannot alter it).
    Cancelling it stops at the next UNet step."""

    def fn(job: Job) -> DiffusionRun:
        run = bench.generate(request, lambda f, m: job.report(f, m))
        job.report(1.0, f"{run.label}: {run.total_ms:.0f} ms")
        return run

    return fn


__all__ = ["MODELS", "LOCAL_SD", "ATTENTION", "SCHEDULERS", "Toggles", "toggle_passes", "DiffusionRequest",
           "diffusion_request", "model_kind", "DiffusionBench", "DiffusionRun", "history_rows", "generation_job",
           "reset_peak_rss", "weights_mb", "to_png"]
