"""Target: the hardware (ISA flags, cores, memory, runtimes present) and the defaults it implies."""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.errors import RecipeError

# ISA flags we look for, by their normalized name. x86 names are the Linux /proc/cpuinfo spellings;
# py-cpuinfo (the fallback) spells some without underscores, hence the lookup on the squashed form.
X86_FLAGS = ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_int8", "amx_bf16")
ARM_FLAGS = ("neon", "asimd", "dotprod", "i8mm", "sve", "bf16", "fp16")
_X86_SQUASHED = {f.replace("_", ""): f for f in X86_FLAGS}
# Linux arm64 "Features" names -> ours (asimddp is the dot-product extension, fphp/asimdhp half precision).
_ARM_ALIASES = {"neon": "neon", "asimd": "asimd", "asimddp": "dotprod", "dotprod": "dotprod", "i8mm": "i8mm",
                "sve": "sve", "bf16": "bf16", "fphp": "fp16", "asimdhp": "fp16", "fp16": "fp16"}
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "dotprod", "i8mm")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")

# ONNX op types that ONNX Runtime's CPU EP cannot run in int8: it has no QLinear*/Integer kernel for them
# (checked against onnxruntime.capi get_all_opkernel_def() for 1.31 and quantization/registry.py), so a
# quantized model dequantizes around them and runs them in float. Not listed because they do have int8
# paths: MatMul/Gemm/Conv (QLinear*, MatMulInteger, ConvInteger, QGemm), Attention (QAttention), Add/Mul
# (QLinearAdd/Mul), Relu/Clip (fused), LeakyRelu/Sigmoid (QLinear*), MaxPool, AveragePool,
# GlobalAveragePool, Concat, Where, Softmax (QLinearSoftmax, static QOperator only), and the data-movement
# ops Transpose/Reshape/Squeeze/Unsqueeze/Flatten/Gather/Split/Pad/Resize.
ORT_CPU_NO_INT8_OPS = (
    "LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization", "InstanceNormalization",
    "GroupNormalization", "BatchNormalization", "Erf", "Gelu", "FastGelu", "BiasGelu", "Tanh", "Exp", "Log",
    "Div", "Sub", "Pow", "Sqrt", "Reciprocal", "ReduceMean", "ReduceSum", "HardSigmoid", "HardSwish",
    "Einsum", "CumSum", "GRU", "RNN",  # GRU / RNN: no quantized kernel (LSTM has DynamicQuantizeLSTM)
)

# Stated power figures (W) for energy estimates; see _power_w. Order-of-magnitude figures, not measurements.
X86_W_PER_CORE = 10.0      # TDP / cores: Xeon Platinum 8480+ 350 W/56 = 6.3, Core i9-13900K 253 W/24 = 10.5,
                           # Ryzen 9 7950X 170 W/16 = 10.6; a lone busy core turbos higher, so 10 W is not generous
ARM_W_PER_CORE = 3.0       # Ampere Altra Q80-30 250 W/80 = 3.1, Graviton-class servers ~2-3 W a core
MOBILE_CPU_W = 2.5         # a phone's big-core cluster under sustained load (SoC thermal budget ~3-5 W)
CUDA_W = 70.0              # an edge/inference GPU board (NVIDIA T4: 70 W TDP); large GPUs draw far more
NPU_W = 3.0                # a client NPU (Hexagon, Intel/AMD laptop NPUs: a few W)

MAX_DEFAULT_THREADS = 16   # intra-op threads beyond this rarely help edge-sized models; sync costs grow
MOBILE_MAX_CORES = 4       # mobile-cpu: a phone's big-core cluster (1-4 cores; edgeopt.measure.mobile pins to them)
MOBILE_MEMORY_GB = 4.0     # mobile-cpu: the memory budget of one app on a mid-range phone (the measuring child's cap)

KNOWN_TARGETS = ("auto", "cpu", "cpu-avx2", "cpu-avx512-vnni", "arm64", "mobile-cpu", "cuda", "npu-qdq")

# The ISA each declared target assumes (a target describes the hardware, not this machine).
_DECLARED_ISA = {
    "cpu": (),
    "cpu-avx2": ("avx", "avx2", "fma", "f16c"),
    "cpu-avx512-vnni": ("avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni"),
    "arm64": ("neon", "asimd", "fp16", "dotprod"),            # ARMv8.2-A: Cortex-A55/A76 and later, Neoverse N1
    "mobile-cpu": ("neon", "asimd", "fp16", "dotprod"),
}


@dataclass(frozen=True)
class Target:
    """The hardware a model is optimized for, and the settings it implies for quantization and sessions.

    `device` is "cpu", "gpu" or "npu". `cores` are the usable cores (CPU affinity), `threads` the default
    intra-op thread count. `power_w` is the stated power of all `cores` busy (energy estimates scale it by
    threads/cores). `no_int8_ops` are op types the runtime has no int8 kernel for on this target.
    """

    name: str
    arch: str
    isa: tuple[str, ...]
    cores: int
    memory_gb: float
    cpu_model: str
    runtimes: dict[str, str]
    detected: bool
    device: str
    quant_format: str
    activation_type: str
    weight_type: str
    per_channel: bool
    reduce_range: bool
    execution_provider: str
    providers: tuple[str, ...]
    threads: int
    has_int8_dot: bool
    power_w: float
    no_int8_ops: tuple[str, ...] = field(default=ORT_CPU_NO_INT8_OPS)

    @property
    def has_vnni(self) -> bool:
        """x86 VNNI (AVX512-VNNI, AVX-VNNI) or AMX int8: u8s8 dot products without int16 saturation."""
        return any(f in self.isa for f in VNNI_FLAGS)

    def implications(self) -> list[tuple[str, str]]:
        """(setting, why) rows: each default this target implies, and the reason for it."""
        rows = [("quant_format", _why_format(self)),
                ("activation_type / weight_type", _why_types(self)),
                ("per_channel", _why_per_channel(self)),
                ("reduce_range", _why_reduce_range(self)),
                ("execution_provider", _why_provider(self)),
                ("threads", f"{self.threads}: intra-op threads = usable cores ({self.cores}), capped at physical "
                            f"cores and {MAX_DEFAULT_THREADS}; session.tune measures the best count"),
                ("has_int8_dot", _why_int8_dot(self)),
                ("power_w", _why_power(self))]
        if self.no_int8_ops:
            rows.append(("no_int8_ops", f"{', '.join(self.no_int8_ops[:8])}, ... have no int8 kernel: a quantized "
                                        "model runs them in float between DequantizeLinear/QuantizeLinear"))
        return [(k, " ".join(v.split())) for k, v in rows]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field (tuples as lists)."""
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Target:
        """The inverse of to_dict."""
        d = dict(d)
        for k in ("isa", "providers", "no_int8_ops"):
            if k in d:
                d[k] = tuple(d[k])
        d["runtimes"] = dict(d.get("runtimes") or {})
        return cls(**d)


# ---------------------------------------------------------------- the reasons behind each default

def _why_format(t: Target) -> str:
    if t.quant_format == "QOperator":
        return ("QOperator: ONNX Runtime's CPU EP runs QLinearConv/QLinearMatMul/MatMulInteger kernels directly; "
                "the QDQ form only reaches them after the runtime fuses Q/DQ pairs")
    if t.device == "gpu":
        return "QDQ: the form TensorRT and the CUDA EP consume (they fuse Q/DQ pairs into int8 kernels themselves)"
    return "QDQ: NPU execution providers (QNN, VitisAI, OpenVINO) consume QDQ graphs and place the int8 ops"


def _why_types(t: Target) -> str:
    pair = f"{t.activation_type} activations, {t.weight_type} weights"
    if t.device == "gpu":
        return f"{pair}: TensorRT's int8 path is symmetric signed int8 on both sides"
    if t.device == "npu":
        return f"{pair}: the NPU EPs' default (asymmetric uint8, e.g. QNN HTP)"
    if t.arch == "x86_64":
        return (f"{pair}: MLAS's fast x86 path is u8s8 (vpmaddubsw / vpdpbusd take unsigned x signed), and "
                "DynamicQuantizeLinear produces uint8")
    return (f"{pair}: DynamicQuantizeLinear produces uint8, and MLAS's arm64 int8 GEMMs accept u8 activations "
            "with s8 weights (udot/sdot where the dot-product extension is present)")


def _why_per_channel(t: Target) -> str:
    if t.per_channel:
        return "on: one scale per output channel keeps precision; ORT's int8 kernels accept per-channel weights"
    return "off: per-tensor scales, which every NPU EP accepts (per-channel support varies by op and weight type)"


def _why_reduce_range(t: Target) -> str:
    if t.reduce_range:
        return ("on: x86 without VNNI multiplies u8 x s8 with vpmaddubsw, which adds pairs into int16 and "
                "saturates; 7-bit weights keep the sums in range")
    if t.arch == "x86_64" and t.has_vnni:
        return "off: VNNI/AMX (vpdpbusd, tdpbusd) accumulate in int32 without saturating; 7 bits would only cost precision"
    if t.arch in ("arm64", "arm"):
        return "off: ARM's int8 dot products (sdot/udot, smmla) accumulate in int32 without saturating"
    return "off: the runtime's int8 kernels on this device accumulate in int32"


def _why_provider(t: Target) -> str:
    allowed = ", ".join(t.providers)
    return f"{t.execution_provider} (allowed here, in order: {allowed}); session.tune picks among those installed"


def _why_int8_dot(t: Target) -> str:
    if t.device != "cpu":
        return f"{t.has_int8_dot}: the {t.device} has int8 multiply-accumulate hardware"
    found = [f for f in INT8_DOT_FLAGS if f in t.isa]
    if found:
        return f"True: {', '.join(found)} present: int8 matmuls reach up to ~4x the fp32 peak rate"
    return "False: no VNNI/AMX/dotprod/i8mm: int8 matmuls gain less over fp32 (mostly from memory traffic)"


def _why_power(t: Target) -> str:
    if t.device == "gpu":
        src = f"{CUDA_W:g} W, an inference GPU board's TDP (NVIDIA T4)"
    elif t.device == "npu":
        src = f"{NPU_W:g} W, a client NPU's order of magnitude"
    elif t.name == "mobile-cpu":
        src = f"{MOBILE_CPU_W:g} W, a phone big-core cluster under sustained load"
    elif t.arch in ("arm64", "arm"):
        src = f"{ARM_W_PER_CORE:g} W a core x {t.cores} cores (ARM server TDP / cores)"
    else:
        src = f"{X86_W_PER_CORE:g} W a core x {t.cores} cores (x86 desktop/server TDP / cores)"
    return f"{t.power_w:g} W: stated, not measured: {src}; energy estimates use latency x power x threads/cores"


# ---------------------------------------------------------------- defaults implied by the hardware

def _power_w(name: str, arch: str, device: str, cores: int) -> float:
    if device == "gpu":
        return CUDA_W
    if device == "npu":
        return NPU_W
    if name == "mobile-cpu":
        return MOBILE_CPU_W
    per_core = ARM_W_PER_CORE if arch in ("arm64", "arm") else X86_W_PER_CORE
    return per_core * max(cores, 1)


def _providers(arch: str, device: str) -> tuple[str, ...]:
    if device == "gpu":
        return ("CUDAExecutionProvider", "CPUExecutionProvider")
    if device == "npu":
        return ("CPUExecutionProvider", "QNNExecutionProvider", "VitisAIExecutionProvider", "OpenVINOExecutionProvider")
    if arch in ("arm64", "arm"):
        return ("CPUExecutionProvider", "XnnpackExecutionProvider")
    return ("CPUExecutionProvider",)


def _build(name: str, arch: str, isa: tuple[str, ...], *, cores: int, physical: int, memory_gb: float,
           cpu_model: str, runtimes: dict[str, str], detected: bool, device: str = "cpu") -> Target:
    """A Target with every default derived from (name, arch, isa, device, cores)."""
    isa = tuple(isa)
    vnni = any(f in isa for f in VNNI_FLAGS)
    if device == "gpu":
        fmt, act, wt, per_ch, rr, ep, dot = "QDQ", "int8", "int8", True, False, "CUDAExecutionProvider", True
    elif device == "npu":
        fmt, act, wt, per_ch, rr, ep, dot = "QDQ", "uint8", "uint8", False, False, "CPUExecutionProvider", True
    else:
        fmt, act, wt, per_ch, ep = "QOperator", "uint8", "int8", True, "CPUExecutionProvider"
        rr = arch == "x86_64" and not vnni
        dot = any(f in isa for f in INT8_DOT_FLAGS)
    cores = max(int(cores), 1)
    threads = max(1, min(cores, max(int(physical), 1), MAX_DEFAULT_THREADS))
    no_int8 = () if device == "npu" else ORT_CPU_NO_INT8_OPS
    return Target(name=name, arch=arch, isa=isa, cores=cores, memory_gb=round(float(memory_gb), 2),
                  cpu_model=cpu_model, runtimes=dict(runtimes), detected=detected, device=device,
                  quant_format=fmt, activation_type=act, weight_type=wt, per_channel=per_ch, reduce_range=rr,
                  execution_provider=ep, providers=_providers(arch, device), threads=threads, has_int8_dot=dot,
                  power_w=_power_w(name, arch, device, cores), no_int8_ops=no_int8)


# ---------------------------------------------------------------- reading this machine

def _norm_arch(machine: str) -> str:
    m = machine.lower()
    if m in ("x86_64", "amd64", "x64"):
        return "x86_64"
    if m in ("aarch64", "arm64", "armv8l") or m.startswith("armv8"):
        return "arm64"
    if m.startswith("arm"):
        return "arm"
    return m or "unknown"


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first value of each key in /proc/cpuinfo text (keys lower-cased)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            out.setdefault(k.strip().lower(), v.strip())
    return out


def parse_isa(flags: str | list[str], arch: str) -> tuple[str, ...]:
    """Normalized ISA names from a flags/Features list (x86 /proc/cpuinfo, arm64 Features, or py-cpuinfo)."""
    words = flags.split() if isinstance(flags, str) else list(flags)
    found: set[str] = set()
    if arch in ("arm64", "arm"):
        for w in words:
            if w.lower() in _ARM_ALIASES:
                found.add(_ARM_ALIASES[w.lower()])
        if "asimd" in found or arch == "arm64":
            found.add("neon")  # Advanced SIMD is NEON; every arm64 core has it
            if arch == "arm64":
                found.add("asimd")
        order = ARM_FLAGS
    else:
        for w in words:
            key = w.lower().replace("_", "")
            if key in _X86_SQUASHED:
                found.add(_X86_SQUASHED[key])
        order = X86_FLAGS
    return tuple(f for f in order if f in found)


def _cpu_model(fields: dict[str, str], arch: str) -> str:
    for key in ("model name", "hardware", "cpu model", "processor"):
        v = fields.get(key, "")
        if v and not v.isdigit():
            return v
    if arch in ("arm64", "arm") and "cpu implementer" in fields:
        return f"ARM implementer {fields['cpu implementer']} part {fields.get('cpu part', '?')}"
    return platform.processor() or platform.machine() or "unknown"


def _usable_cores() -> tuple[int, int]:
    """(usable logical cores from the affinity mask, physical cores among them)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    cores = {}
    for c in cpus:
        topo = Path(f"/sys/devices/system/cpu/cpu{c}/topology")
        try:
            key = ((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip())
        except OSError:
            key = ("cpu", str(c))
        cores[key] = True
    return max(len(cpus), 1), max(len(cores), 1)


def _memory_gb() -> float:
    """Total memory, or the cgroup limit where a container sets a lower one."""
    total = 0.0
    try:
        import psutil

        total = psutil.virtual_memory().total / 2**30
    except Exception:  # psutil missing or unreadable /proc
        pass
    for p in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(p).read_text().strip()
        except OSError:
            continue
        if raw.isdigit() and 0 < int(raw) < (1 << 60):
            limit = int(raw) / 2**30
            total = min(total, limit) if total else limit
        break
    return total


# runtime name -> (import name, distributions that provide it); versions come from package metadata so
# nothing heavy is imported.
_RUNTIMES = {
    "onnxruntime": ("onnxruntime", ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-qnn",
                                    "onnxruntime-directml")),
    "torch": ("torch", ("torch",)),
    "openvino": ("openvino", ("openvino",)),
    "ai_edge_litert": ("ai_edge_litert", ("ai-edge-litert", "ai_edge_litert")),
    "tflite_runtime": ("tflite_runtime", ("tflite-runtime", "tflite_runtime")),
    "ncnn": ("ncnn", ("ncnn",)),
}


def detect_runtimes() -> dict[str, str]:
    """Runtime name -> installed version, for the runtimes whose package is importable (none is imported)."""
    import importlib.metadata as md
    import importlib.util

    found = {}
    for name, (module, dists) in _RUNTIMES.items():
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except (ImportError, ValueError):
            continue
        for dist in dists:
            try:
                found[name] = md.version(dist)
                break
            except md.PackageNotFoundError:
                continue
        else:
            found[name] = "unknown"
    return found


def _read_cpuinfo() -> str | None:
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None


def _py_cpuinfo() -> tuple[list[str], str]:
    """(flags, brand) from py-cpuinfo, the fallback where /proc/cpuinfo is missing (macOS, Windows)."""
    try:
        import cpuinfo

        info = cpuinfo.get_cpu_info()
    except Exception:  # py-cpuinfo runs cpuid in a subprocess; it can fail in sandboxes
        return [], ""
    return list(info.get("flags") or []), str(info.get("brand_raw") or "")


def detect_target(cpuinfo_text: str | None = None, *, arch: str | None = None) -> Target:
    """The Target of this machine, read from /proc/cpuinfo (py-cpuinfo as fallback).

    `cpuinfo_text` parses the given /proc/cpuinfo text instead (the arch is then inferred from it: an x86
    "flags" line or an ARM "Features" line); cores, memory and runtimes always come from this machine.
    `detected` is True only when the CPU facts were read from this machine.
    """
    detected = cpuinfo_text is None
    text = _read_cpuinfo() if cpuinfo_text is None else cpuinfo_text
    fields = _cpuinfo_fields(text or "")
    if arch is None:
        if cpuinfo_text is not None and "flags" in fields:
            arch = "x86_64"
        elif cpuinfo_text is not None and "features" in fields:
            arch = "arm64" if ("asimd" in fields["features"].split() or fields.get("cpu architecture") == "8") else "arm"
        else:
            arch = _norm_arch(platform.machine())
    arch = _norm_arch(arch)
    flags_line = fields.get("features" if arch in ("arm64", "arm") else "flags")
    cpu_model = _cpu_model(fields, arch)
    if flags_line is None and cpuinfo_text is None:
        flags, brand = _py_cpuinfo()
        flags_line = " ".join(flags)
        cpu_model = brand or cpu_model
    isa = parse_isa(flags_line or "", arch)
    if arch == "x86_64":
        name = "cpu-avx512-vnni" if ("avx512_vnni" in isa or "amx_int8" in isa) else "cpu-avx2" if "avx2" in isa else "cpu"
    elif arch == "arm64":
        name = "arm64"
    else:
        name = "cpu"
    cores, physical = _usable_cores()
    return _build(name, arch, isa, cores=cores, physical=physical, memory_gb=_memory_gb(), cpu_model=cpu_model,
                  runtimes=detect_runtimes(), detected=detected)


def get_target(name: str | Target = "auto") -> Target:
    """The Target for a recipe's `target:` value: "auto" detects this machine, other names are declared.

    Declared targets take their ISA from the name and cores/memory from this machine, except mobile-cpu
    (at most 4 cores and 4 GB, like a phone's big cluster). Unknown names raise RecipeError.
    """
    if isinstance(name, Target):
        return name
    key = str(name).strip().lower()
    if key == "auto":
        return detect_target()
    if key not in KNOWN_TARGETS:
        raise RecipeError(f"unknown target {name!r}; known targets: {', '.join(KNOWN_TARGETS)}")
    here_arch = _norm_arch(platform.machine())
    cores, physical = _usable_cores()
    memory = _memory_gb()
    runtimes = detect_runtimes()
    if key in ("cuda", "npu-qdq"):
        device = "gpu" if key == "cuda" else "npu"
        return _build(key, here_arch, (), cores=cores, physical=physical, memory_gb=memory,
                      cpu_model=f"declared {key}", runtimes=runtimes, detected=False, device=device)
    if key == "cpu":
        arch = here_arch
    elif key in ("arm64", "mobile-cpu"):
        arch = "arm64"
    else:
        arch = "x86_64"
    if key == "mobile-cpu":
        cores, physical = min(cores, MOBILE_MAX_CORES), min(physical, MOBILE_MAX_CORES)
        memory = min(memory, MOBILE_MEMORY_GB) if memory else MOBILE_MEMORY_GB
    return _build(key, arch, _DECLARED_ISA[key], cores=cores, physical=physical, memory_gb=memory,
                  cpu_model=f"declared {key}", runtimes=runtimes, detected=False)
