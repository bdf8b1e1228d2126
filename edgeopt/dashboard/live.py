"""The live mode switcher: toggle optimizations on one model and measure each combination as it is chosen.

A combination of toggles is a short pipeline (torch-level kernel swaps, then the ONNX export, then graph
fusion and INT8 quantization), built once and cached. Each measurement times the chosen variant and the
plain model (every toggle off) interleaved in one call, so the speedup shown is from one noise
environment, and adds peak memory (a child process, as edgeopt.measure.memory does it), throughput,
size and the cosine of the outputs against the plain model.

New toggles are one `Toggle` entry: a registered pass, the level it works at, and its config.

The runtime the converted model runs on is one more setting ("runtime", a `Runtime` entry): ONNX Runtime
runs the ONNX export as it is; OpenVINO converts that export (after fusion and quantization) with
`convert.openvino`; LiteRT and ncnn convert the PyTorch model (after the kernel swaps) with `convert.litert`
and `convert.ncnn`, so they need a PyTorch source and leave out the ONNX-level toggles. Each is offered
only when its modules import (`runtime_availability` says why not) and measured through
`edgeopt.measure.runners.make_runner`, like every other variant.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from edgeopt.analyze.flops import dim_bindings
from edgeopt.data import random_feeds
from edgeopt.errors import EdgeoptError, InputError
from edgeopt.extras import available, install_hint
from edgeopt.load import load_model, load_onnx_checked
from edgeopt.measure.latency import LatencyStats, measure_interleaved
from edgeopt.measure.memory import peak_rss_mb
from edgeopt.measure.runners import make_runner
from edgeopt.passes.base import PassContext, build_pass, registry
from edgeopt.recipe import MeasureSpec
from edgeopt.zoo.hf import wrap_encoder

Level = Literal["torch", "export", "onnx"]
LEVEL_ORDER = {"torch": 0, "export": 1, "onnx": 2}


@dataclass(frozen=True)
class Toggle:
    """One switch of the live mode: the pass it adds, where in the pipeline, and its config.

    `choices` make it a select (off, or one value given to the config field `choice_field`).
    """

    key: str
    label: str
    pass_name: str
    level: Level
    config: dict[str, Any] = field(default_factory=dict)
    choices: tuple[str, ...] = ()
    choice_field: str | None = None
    help: str = ""


TOGGLES: tuple[Toggle, ...] = (
    Toggle("attention", "Attention kernel", "kernels.attention", "torch", {}, ("sdpa", "flash", "partial_softmax", "naive"),
           "impl", "Swap each attention layer's computation (PyTorch level, before export)."),
    Toggle("winograd", "Winograd 3×3 convolutions", "kernels.winograd", "torch", {"tile": 4},
           help="Replace eligible 3×3 convolutions with Winograd F(4×4, 3×3) (PyTorch level)."),
    Toggle("fused_norm", "Fused norm + activation", "kernels.fused_norm", "torch", {},
           help="Fuse GroupNorm/LayerNorm with the SiLU/GELU after it (PyTorch level)."),
    Toggle("onnx", "ONNX export", "convert.onnx", "export", {},
           help="Export to ONNX and run it on the runtime chosen above (needed by fusion, quantization, OpenVINO)."),
    Toggle("fuse", "Graph fusion", "graph.fuse", "onnx", {},
           help="Fuse LayerNorm, GELU, attention, MatMul+Add, Conv+BN patterns in the ONNX graph."),
    Toggle("quantize", "INT8 quantization", "graph.quantize_dynamic", "onnx", {},
           help="Dynamic INT8: int8 weights, activations quantized at run time."),
)
TOGGLE_BY_KEY = {t.key: t for t in TOGGLES}



@dataclass(frozen=True)
class Runtime:
    """A runtime the live mode can measure on: the pass that converts to its format (None: ONNX Runtime runs
    the ONNX export itself), what that pass reads ("onnx": the export after the ONNX-level toggles; "torch":
    the PyTorch model after the kernel swaps) and the modules that must import."""

    key: str
    label: str
    pass_name: str | None
    source: Literal["onnx", "torch"]
    modules: tuple[str, ...] = ()
    config: dict[str, Any] = field(default_factory=dict)
    caption: str = ""
    help: str = ""


RUNTIMES: tuple[Runtime, ...] = (
    Runtime("onnxruntime", "ONNX Runtime", None, "onnx", caption="the ONNX export as it is",
            help="Run the ONNX export with ONNX Runtime (turn on the export, fusion or INT8 below; with every "
                 "toggle off the model runs in PyTorch eager)."),
    Runtime("openvino", "OpenVINO", "convert.openvino", "onnx", ("openvino",), caption="IR from the ONNX export",
            help="Convert the ONNX export (after fusion and INT8) to OpenVINO IR and run it on OpenVINO's CPU plugin."),
    Runtime("litert", "LiteRT", "convert.litert", "torch", ("litert_torch", "ai_edge_litert"),
            caption=".tflite from PyTorch, XNNPACK",
            help="Convert the PyTorch model (after the kernel swaps) to .tflite with litert-torch and run it with "
                 "LiteRT's XNNPACK delegate."),
    Runtime("ncnn", "ncnn", "convert.ncnn", "torch", ("pnnx", "ncnn"), caption="param/bin from PyTorch via pnnx",
            help="Convert the PyTorch model (after the kernel swaps) to ncnn with pnnx and run it with ncnn on the "
                 "CPU."),
)
RUNTIME_BY_KEY = {r.key: r for r in RUNTIMES}
DEFAULT_RUNTIME = "onnxruntime"

DEMO_MODELS = {
    "demo:tiny-bert": "a 2-layer, 64-wide BERT encoder (random weights, sequence 32): fast, with attention, LayerNorm, GELU",
    "demo:tiny-cnn": "a small CNN on 3×32×32 images (3×3 convolutions, GroupNorm + SiLU): for Winograd and fused norm",
    "zoo:minilm": "all-MiniLM-L6-v2 (bundled; sequence 128): the demo's model, slower to switch",
}
DEFAULT_MODEL = "demo:tiny-bert"

Settings = dict[str, Any]  # toggle key -> False/None (off), True (on) or a choice


def demo_model(name: str, seq_len: int = 32) -> Any:
    """A demo model built in code (random weights, deterministic): a torch Artifact."""
    import torch

    torch.manual_seed(0)
    if name == "demo:tiny-bert":
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=128, max_position_embeddings=max(64, seq_len),
                         attn_implementation="eager")
        return wrap_encoder(BertModel(cfg).eval(), None, seq_len=seq_len, source=name)
    if name == "demo:tiny-cnn":
        from torch import nn

        m = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.Conv2d(32, 32, 3, padding=1), nn.GroupNorm(8, 32), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()
        art = load_model(m, {"x": torch.randn(1, 3, 32, 32)})
        art.meta["source"] = name
        return art
    raise InputError(f"{name}: unknown demo model; known: {', '.join(k for k in DEMO_MODELS if k.startswith('demo:'))}")


def load_source(source: str, seq_len: int) -> Any:
    """The base artifact for a live session: a demo model (torch), or anything edgeopt.load.load_model reads
    (a zoo model, an .onnx file, a Hugging Face folder)."""
    if source.startswith("demo:"):
        return demo_model(source, seq_len=seq_len)
    return load_model(source, seq_len=seq_len)


def registered(pass_name: str) -> bool:
    return pass_name in registry()


def runtime_availability(kind: str) -> dict[str, str | None]:
    """{runtime key: None when the live mode can measure a model of this kind on it, else the reason not}."""
    out: dict[str, str | None] = {}
    for r in RUNTIMES:
        missing = next((m for m in r.modules if not available(m)), None)
        if r.source == "torch" and kind != "torch":
            what = "an ONNX file" if kind == "onnx" else f"a {kind} model"
            out[r.key] = f"needs the PyTorch model: {r.label} converts from PyTorch, and this model is {what}"
        elif r.source == "onnx" and kind not in ("torch", "onnx"):
            out[r.key] = f"needs a PyTorch or ONNX model; this one is {kind}"
        elif missing:
            out[r.key] = f"needs {missing}, which is not installed: {install_hint(missing)}"
        elif r.pass_name and not registered(r.pass_name):
            out[r.key] = f"pass {r.pass_name} is not available in this edgeopt"
        else:
            out[r.key] = None
    return out


def availability(kind: str, runtime: str = DEFAULT_RUNTIME) -> dict[str, str | None]:
    """{toggle key: None when usable on a model of this kind with this runtime, else the reason it is not}."""
    rt = RUNTIME_BY_KEY.get(runtime, RUNTIME_BY_KEY[DEFAULT_RUNTIME])
    from_torch = rt.source == "torch" and kind == "torch"
    out: dict[str, str | None] = {}
    for t in TOGGLES:
        if not registered(t.pass_name):
            out[t.key] = f"pass {t.pass_name} is not available in this edgeopt"
        elif t.level == "torch" and kind != "torch":
            out[t.key] = "works on PyTorch models; this model is already ONNX"
        elif t.level == "export" and kind == "onnx":
            out[t.key] = "always on: the model is an ONNX file"
        elif t.level != "torch" and from_torch:
            out[t.key] = f"not used with {rt.label}: it converts the PyTorch model, not the ONNX export"
        elif t.level == "export" and rt.key == "openvino":
            out[t.key] = "always on: OpenVINO converts the ONNX export"
        else:
            out[t.key] = None
    return out


def runtime_of(settings: Settings) -> str:
    """The runtime key of `settings` (the default, ONNX Runtime, when none or an unknown one is given)."""
    rt = settings.get("runtime")
    return rt if rt in RUNTIME_BY_KEY else DEFAULT_RUNTIME


def normalize(settings: Settings, kind: str) -> Settings:
    """The settings that will actually run: unknown keys dropped, fusion or quantization imply the ONNX
    export, and an ONNX model is always in ONNX Runtime with no PyTorch-level toggles.

    A runtime other than ONNX Runtime is kept under "runtime" (last): OpenVINO implies the ONNX export;
    LiteRT and ncnn convert the PyTorch model, so the ONNX-level toggles are dropped with them, and they are
    dropped (back to ONNX Runtime) on a model that is not PyTorch."""
    rt = RUNTIME_BY_KEY[runtime_of(settings)]
    s = {k: v for k, v in settings.items() if k in TOGGLE_BY_KEY and v not in (False, None, "off", "")}
    if rt.source == "torch" and kind != "torch":
        rt = RUNTIME_BY_KEY[DEFAULT_RUNTIME]
    if kind == "onnx":
        s = {k: v for k, v in s.items() if TOGGLE_BY_KEY[k].level == "onnx"}
        s["onnx"] = True
    elif rt.source == "torch":
        s = {k: v for k, v in s.items() if TOGGLE_BY_KEY[k].level == "torch"}
    elif rt.key != DEFAULT_RUNTIME or any(TOGGLE_BY_KEY[k].level == "onnx" for k in s):
        s["onnx"] = True
    out: Settings = {t.key: s[t.key] for t in TOGGLES if t.key in s}  # canonical order
    if rt.key != DEFAULT_RUNTIME:
        out["runtime"] = rt.key
    return out


def steps(settings: Settings) -> list[tuple[str, str, dict[str, Any]]]:
    """(toggle key, pass name, config) in pipeline order for normalized `settings`; the runtime's convert
    pass, if any, comes last (as ("runtime", pass name, config))."""
    out = []
    toggles = [TOGGLE_BY_KEY[k] for k in settings if k in TOGGLE_BY_KEY]
    for t in sorted(toggles, key=lambda t: LEVEL_ORDER[t.level]):
        cfg = dict(t.config)
        if t.choices and t.choice_field:
            v = settings[t.key]
            cfg[t.choice_field] = v if v in t.choices else t.choices[0]
        out.append((t.key, t.pass_name, cfg))
    rt = RUNTIME_BY_KEY[runtime_of(settings)]
    if rt.pass_name:
        out.append(("runtime", rt.pass_name, dict(rt.config)))
    return out


def label(settings: Settings, kind: str = "torch") -> str:
    """A short name of a combination, e.g. "onnx + fuse + int8", "onnx + openvino", "litert" or "torch eager"."""
    s = normalize(settings, kind)
    if not s:
        return "torch eager"
    names = {"onnx": "onnx", "fuse": "fuse", "quantize": "int8", "winograd": "winograd", "fused_norm": "fused-norm"}
    parts = []
    for k, v in s.items():
        parts.append(f"attention={v}" if k == "attention" else v if k == "runtime" else names.get(k, k))
    return " + ".join(parts)


def _key(settings: Settings) -> tuple:
    return tuple((k, v) for k, v in settings.items())


@dataclass
class Measurement:
    """One measured combination (times in ms; throughput in inferences per second)."""

    label: str
    settings: dict[str, Any]
    runtime: str
    latency: LatencyStats
    throughput: float
    plain_p50: float
    speedup: float
    peak_mb: float | None
    size_mb: float | None
    cosine: float | None
    threads: int
    build_s: float
    when: float = field(default_factory=time.time)
    note: str = ""

    @property
    def p50(self) -> float:
        return self.latency.p50

    @property
    def p90(self) -> float:
        return self.latency.p90

    @property
    def std(self) -> float:
        return self.latency.std

    @property
    def n(self) -> int:
        return self.latency.n

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "latency"}
        return {**d, **{k: v for k, v in self.latency.to_dict().items() if k in ("p50", "p90", "std", "n")}}


def _cosine(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        return None
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den else None


class LiveBench:
    """Builds and measures toggle combinations of one model (thread-safe: one measurement at a time)."""

    def __init__(self, source: str = DEFAULT_MODEL, threads: int = 2, seq_len: int | None = None,
                 workdir: str | Path | None = None):
        self.source = source
        self.threads = int(threads)
        self.seq_len = int(seq_len or (128 if source.startswith("zoo:") else 32))
        self._own_dir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="edgeopt-live-"))
        if self._own_dir:  # removed with the bench even when a browser session just goes away
            weakref.finalize(self, shutil.rmtree, str(self.workdir), True)
        self.base: Any = None
        self.feed: dict[str, np.ndarray] | None = None
        self._variants: dict[tuple, Any] = {}
        self._lock = threading.Lock()
        self.history: list[Measurement] = []

    @property
    def kind(self) -> str:
        return self.base.kind if self.base is not None else ("onnx" if self.source.endswith(".onnx") else "torch")

    def load(self, progress: Callable[[float, str], None] | None = None) -> Any:
        if self.base is None:
            if progress:
                progress(0.05, f"loading {self.source}")
            self.base = load_source(self.source, self.seq_len)
            self.feed = self._make_feed(self.base)
        return self.base

    def _make_feed(self, art: Any) -> dict[str, np.ndarray]:
        ex = art.meta.get("example_inputs")
        names = list(art.meta.get("input_names") or art.input_spec.names)
        if ex is not None:
            if isinstance(ex, dict):
                return {k: v.detach().cpu().numpy() for k, v in ex.items()}
            ex = ex if isinstance(ex, (tuple, list)) else (ex,)
            return {n: t.detach().cpu().numpy() for n, t in zip(names, ex)}
        dims = dim_bindings(load_onnx_checked(art.path), 1, self.seq_len)
        return random_feeds(art.input_spec, 1, dims, seed=0, vocab=int(art.meta.get("vocab_size") or 100))[0]

    def build(self, settings: Settings, progress: Callable[[float, str], None] | None = None) -> Any:
        """The artifact for `settings` (normalized), built from the longest cached prefix."""
        base = self.load(progress)
        s = normalize(settings, base.kind)
        rt = runtime_of(s)
        why = runtime_availability(base.kind).get(rt)
        if why:
            raise InputError(f"{RUNTIME_BY_KEY[rt].label}: {why}")
        plan = steps(s) if base.kind == "torch" else [x for x in steps(s) if x[0] != "onnx"]
        art, done = base, ()
        for i, (key, pass_name, cfg) in enumerate(plan):
            done = done + ((key, s[key]),)
            if done in self._variants:
                art = self._variants[done]
                continue
            if progress:
                progress(0.1 + 0.5 * i / max(1, len(plan)), f"building: {pass_name}")
            stage_dir = self.workdir / "-".join(f"{k}={v}" for k, v in done).replace("/", "_")
            if stage_dir.exists():
                shutil.rmtree(stage_dir)
            ctx = PassContext(stage_dir=stage_dir, calibration=[self.feed] if self.feed else [],
                              measure=self._measure_spec())
            art = build_pass(pass_name, cfg)(art, ctx)
            self._variants[done] = art
        return art

    def _measure_spec(self) -> MeasureSpec:
        """The shapes a conversion fixes (batch and sequence of the live feed) and the thread count."""
        batch = int(next(iter(self.feed.values())).shape[0]) if self.feed else 1
        return MeasureSpec(threads=self.threads, batch=batch, seq_len=self.seq_len)

    def _runner(self, art: Any) -> Any:
        return make_runner(art, threads=self.threads)

    def measure(self, settings: Settings, runs: int = 30, warmup: int = 5, memory: bool = True,
                min_time_s: float = 0.3, progress: Callable[[float, str], None] | None = None) -> Measurement:
        """Build (or reuse) the variant for `settings`, time it interleaved with the plain model, measure memory."""
        with self._lock:
            t0 = time.perf_counter()
            base = self.load(progress)
            s = normalize(settings, base.kind)
            art = self.build(s, progress)
            plain = self.build({}, progress)
            build_s = time.perf_counter() - t0
            if progress:
                progress(0.65, f"timing {label(s, base.kind)} against the plain model ({runs} interleaved runs)")
            runners = {"this": self._runner(art)}
            if _key(s) != _key(normalize({}, base.kind)):
                runners["plain"] = self._runner(plain)
            try:
                stats = measure_interleaved(runners, self.feed, warmup=warmup, runs=runs, min_time_s=min_time_s)
                out_this = runners["this"].run(self.feed)[0]
                out_plain = runners["plain"].run(self.feed)[0] if "plain" in runners else out_this
                runtime = runners["this"].name
            finally:
                for r in runners.values():
                    r.close()
            st, pl = stats["this"], stats.get("plain", stats["this"])
            peak, note = None, ""
            if memory:
                if progress:
                    progress(0.85, "peak memory in a child process")
                peak, note = self._peak(art)
            batch = int(next(iter(self.feed.values())).shape[0]) if self.feed else 1
            m = Measurement(
                label=label(s, base.kind), settings=dict(s), runtime=runtime, latency=st,
                throughput=1000.0 * batch / st.p50 if st.p50 else 0.0, plain_p50=pl.p50,
                speedup=pl.p50 / st.p50 if st.p50 else 0.0, peak_mb=peak,
                size_mb=art.size_bytes / 1e6 if art.size_bytes else None,
                cosine=_cosine(out_this, out_plain), threads=self.threads, build_s=build_s, note=note)
            self.history.append(m)
            return m

    def _peak(self, art: Any) -> tuple[float | None, str]:
        try:
            return float(peak_rss_mb(art, self.feed, threads=self.threads)), ""
        except EdgeoptError as e:
            return None, f"memory not measured: {e}"

    def close(self) -> None:
        self._variants.clear()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)


__all__ = ["TOGGLES", "Toggle", "RUNTIMES", "Runtime", "DEFAULT_RUNTIME", "LiveBench", "Measurement", "normalize",
           "steps", "label", "availability", "runtime_availability", "runtime_of", "DEMO_MODELS", "DEFAULT_MODEL",
           "demo_model"]
