"""The operator-optimizer API (`optimize_operators`, `OperatorOptimizer`, `EdgeOptimizer`): a thin facade over edgeopt.

Code written against the operator-optimization module edgeopt grew from keeps working:

    from edgeopt.operators import optimize_operators, OperatorOptimizer, OptimizationTarget
    optimize_operators(model_path="m.onnx", output_path="m.opt.onnx", target=OptimizationTarget.CPU_AVX2)
    opt = OperatorOptimizer(model="m.onnx", target="cpu_avx2", config={"cpu_threads": 8})
    opt.analyze_model(); opt.apply_optimizations("m.opt.onnx"); opt.save_optimization_metadata("m.json")

    from edgeopt.operators import EdgeOptimizer, DeviceTarget, OptimizationType as T
    EdgeOptimizer(target_device=DeviceTarget.CPU).optimize_whisper(
        model_size="tiny", optimizations=[T.ONNX_CONVERSION, T.OPERATOR_FUSION, T.INT8_QUANTIZATION])

Nothing here optimizes by itself: a target maps to an edgeopt target and a recipe (`recipe_for`), analysis is
`edgeopt.analyze`, optimization is `edgeopt.pipeline.optimize` (every stage measured and gated), Whisper is
`edgeopt.speech`. A target this host cannot run (CUDA, Metal, a mobile GPU, an NPU, or an ISA this CPU lacks)
still gets its artifact with that target's settings (fp16 for GPUs, QDQ INT8 for NPUs, the ISA's quantization
settings) and the result says it was not measured here.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from edgeopt.errors import InputError


class OptimizationTarget(str, Enum):
    """Where the optimized model will run."""

    CPU = "cpu"
    CPU_AVX = "cpu_avx"
    CPU_AVX2 = "cpu_avx2"
    CPU_AVX512 = "cpu_avx512"
    CUDA = "cuda"
    MPS = "mps"
    MOBILE_CPU = "mobile_cpu"
    MOBILE_GPU = "mobile_gpu"
    NPU = "npu"

    @classmethod
    def parse(cls, value: OptimizationTarget | str) -> OptimizationTarget:
        """A target from itself, its value ("cpu_avx2") or its name ("CPU_AVX2"); InputError naming the known ones."""
        if isinstance(value, cls):
            return value
        s = str(value).strip()
        for t in cls:
            if s.lower() in (t.value, t.name.lower(), t.value.replace("_", "-")):
                return t
        raise InputError(f"unknown optimization target {value!r}; known: {', '.join(t.value for t in cls)}")


class OperatorType(str, Enum):
    """The operator families the analysis reports on."""

    MATMUL = "matmul"
    GEMM = "gemm"
    CONV = "conv"
    CONV_TRANSPOSE = "conv_transpose"
    POOLING = "pooling"
    RELU = "relu"
    GELU = "gelu"
    SIGMOID = "sigmoid"
    TANH = "tanh"
    BATCH_NORM = "batch_norm"
    LAYER_NORM = "layer_norm"
    ATTENTION = "attention"
    LSTM = "lstm"
    GRU = "gru"
    ELEMENTWISE = "elementwise"
    OTHER = "other"


_OP_TYPES = {
    "MatMul": OperatorType.MATMUL, "MatMulInteger": OperatorType.MATMUL, "DynamicQuantizeMatMul": OperatorType.MATMUL,
    "MatMulNBits": OperatorType.MATMUL, "FusedMatMul": OperatorType.MATMUL, "Einsum": OperatorType.MATMUL,
    "Gemm": OperatorType.GEMM, "QGemm": OperatorType.GEMM,
    "Conv": OperatorType.CONV, "ConvInteger": OperatorType.CONV, "QLinearConv": OperatorType.CONV,
    "FusedConv": OperatorType.CONV, "ConvTranspose": OperatorType.CONV_TRANSPOSE,
    "MaxPool": OperatorType.POOLING, "AveragePool": OperatorType.POOLING, "GlobalAveragePool": OperatorType.POOLING,
    "GlobalMaxPool": OperatorType.POOLING, "Relu": OperatorType.RELU, "LeakyRelu": OperatorType.RELU,
    "Clip": OperatorType.RELU, "Gelu": OperatorType.GELU, "FastGelu": OperatorType.GELU, "BiasGelu": OperatorType.GELU,
    "Erf": OperatorType.GELU, "Sigmoid": OperatorType.SIGMOID, "HardSigmoid": OperatorType.SIGMOID,
    "Tanh": OperatorType.TANH, "BatchNormalization": OperatorType.BATCH_NORM,
    "LayerNormalization": OperatorType.LAYER_NORM, "SkipLayerNormalization": OperatorType.LAYER_NORM,
    "SimplifiedLayerNormalization": OperatorType.LAYER_NORM, "RMSNormalization": OperatorType.LAYER_NORM,
    "GroupNormalization": OperatorType.LAYER_NORM, "InstanceNormalization": OperatorType.LAYER_NORM,
    "Attention": OperatorType.ATTENTION, "MultiHeadAttention": OperatorType.ATTENTION,
    "GroupQueryAttention": OperatorType.ATTENTION, "QAttention": OperatorType.ATTENTION,
    "Softmax": OperatorType.ATTENTION, "LSTM": OperatorType.LSTM, "DynamicQuantizeLSTM": OperatorType.LSTM,
    "GRU": OperatorType.GRU, "Add": OperatorType.ELEMENTWISE, "Sub": OperatorType.ELEMENTWISE,
    "Mul": OperatorType.ELEMENTWISE, "Div": OperatorType.ELEMENTWISE, "Pow": OperatorType.ELEMENTWISE,
    "Sqrt": OperatorType.ELEMENTWISE, "Exp": OperatorType.ELEMENTWISE, "Where": OperatorType.ELEMENTWISE,
}


def operator_type(op: str) -> OperatorType:
    """The family of an ONNX op type (a census key such as "com.microsoft.Attention" included)."""
    return _OP_TYPES.get(op.rsplit(".", 1)[-1], OperatorType.OTHER)


@dataclass(frozen=True)
class TargetPlan:
    """How a target is served: the edgeopt target, the precision of its artifact, the ISA flags a host needs to
    measure it, and whether any CPU host can measure it at all."""

    edgeopt_target: str
    precision: str  # "int8" (dynamic), "int8-qdq" (static, QDQ), "fp16"
    needs_isa: tuple[str, ...] = ()
    cpu_measurable: bool = True
    note: str = ""


PLANS = {
    OptimizationTarget.CPU: TargetPlan("auto", "int8"),
    OptimizationTarget.CPU_AVX: TargetPlan("cpu", "int8", ("avx",), note="AVX without AVX2: no integer SIMD "
                                                                          "dot products; INT8 rarely pays"),
    OptimizationTarget.CPU_AVX2: TargetPlan("cpu-avx2", "int8", ("avx2", "fma")),
    OptimizationTarget.CPU_AVX512: TargetPlan("cpu-avx512-vnni", "int8", ("avx512f", "avx512bw")),
    OptimizationTarget.CUDA: TargetPlan("cuda", "fp16", cpu_measurable=False,
                                        note="fp16 graph for the CUDA execution provider"),
    OptimizationTarget.MPS: TargetPlan("cpu", "fp16", cpu_measurable=False,
                                       note="fp16 graph for Apple GPUs (Core ML / Metal execution providers)"),
    OptimizationTarget.MOBILE_CPU: TargetPlan("mobile-cpu", "int8", note="measured on this CPU with a phone's "
                                              "limits (big-core count, memory cap)"),
    OptimizationTarget.MOBILE_GPU: TargetPlan("cpu", "fp16", cpu_measurable=False,
                                              note="fp16 graph for mobile GPU delegates"),
    OptimizationTarget.NPU: TargetPlan("npu-qdq", "int8-qdq", cpu_measurable=False,
                                       note="QDQ INT8 (static, symmetric weights) as NPU compilers expect"),
}

# config key -> (type, what it sets)
CONFIG_KEYS: dict[str, tuple[type | tuple[type, ...], str]] = {
    "cpu_threads": (int, "intra-op threads for every measurement (recipe measure.threads)"),
    "enable_fusion": (bool, "run graph.fuse (default true)"),
    "enable_quantization": (bool, "quantize for the target (default true)"),
    "per_channel": (bool, "per-channel INT8 weights (default: the target's)"),
    "reduce_range": (bool, "7-bit weights for CPUs without VNNI (default: the target's)"),
    "calibration_samples": (int, "inputs for static (QDQ) calibration (default 32)"),
    "runs": (int, "timed runs per stage (default 30)"),
    "data": (str, "calibration / evaluation data (e.g. a .npz, zoo:images; default: chosen from the model's inputs)"),
    "opset": (int, "ONNX opset when a PyTorch model is exported (default 17)"),
}


def check_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """`config` validated: unknown keys and wrong types are InputErrors naming the key."""
    cfg = dict(config or {})
    for k, v in cfg.items():
        if k not in CONFIG_KEYS:
            raise InputError(f"unknown config key {k!r}; known: {', '.join(sorted(CONFIG_KEYS))}")
        typ = CONFIG_KEYS[k][0]
        if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
            raise InputError(f"config key {k!r}: expected {getattr(typ, '__name__', typ)}, got {v!r}")
        if typ is int and v < 1:
            raise InputError(f"config key {k!r}: must be at least 1, got {v}")
    return cfg


def host_can_measure(target: OptimizationTarget) -> tuple[bool, str]:
    """Whether this host can time the target's artifact, and why not."""
    from edgeopt.target import detect_target

    plan = PLANS[target]
    if not plan.cpu_measurable:
        return False, f"{target.value}: not measured here ({plan.note}; this host has no such device)"
    here = detect_target()
    missing = [f for f in plan.needs_isa if f not in here.isa]
    if missing:
        return False, f"{target.value}: not measured here (this CPU lacks {', '.join(missing)})"
    return True, ""


def recipe_for(target: OptimizationTarget, config: dict[str, Any]) -> dict[str, Any]:
    """The edgeopt recipe (as a dict) that serves `target` with `config`: convert, fuse, quantize or fp16."""
    plan = PLANS[target]
    passes: list[dict[str, Any]] = [{"convert.onnx": {"stage": "onnx", "when": "torch",
                                                      **({"opset": config["opset"]} if "opset" in config else {})}}]
    if config.get("enable_fusion", True):
        passes.append({"graph.fuse": {"stage": "fused"}})
    if config.get("enable_quantization", True):
        q = {k: config[k] for k in ("per_channel", "reduce_range") if k in config}
        if plan.precision == "int8":
            passes.append({"graph.quantize_dynamic": {"stage": "int8", **q}})
        elif plan.precision == "int8-qdq":
            passes.append({"graph.quantize_static": {"stage": "int8-qdq", **q,
                                                     "samples": config.get("calibration_samples", 32)}})
        else:
            passes.append({"graph.fp16": {"stage": "fp16"}})
    recipe: dict[str, Any] = {"target": plan.edgeopt_target, "passes": passes,
                              "measure": {"threads": config.get("cpu_threads", 2), "runs": config.get("runs", 30)},
                              "gates": {"mean_cosine": 0.99}}
    if "data" in config:
        recipe["data"] = {"calibration": config["data"], "evaluation": config["data"]}
    return recipe


class OperatorOptimizer:
    """Analyze a model operator by operator and optimize it for a target (edgeopt.analyze + edgeopt.optimize)."""

    def __init__(self, model: Any, target: OptimizationTarget | str = OptimizationTarget.CPU,
                 config: dict[str, Any] | None = None):
        self.model = model
        self.target = OptimizationTarget.parse(target)
        self.config = check_config(config)
        if isinstance(model, (str, Path)) and not str(model).startswith("zoo:") and not Path(model).exists():
            raise InputError(f"{model}: no such model file or folder")
        self.analysis: dict[str, Any] | None = None
        self.result: dict[str, Any] | None = None

    def analyze_model(self) -> dict[str, Any]:
        """Operator census by OperatorType (count, FLOPs share), parameters, fusion and INT8 opportunities, and the
        passes edgeopt suggests for this target (`edgeopt.analyze` underneath, its full report under "report")."""
        from edgeopt.analyze import analyze

        rep = analyze(self.model, target=PLANS[self.target].edgeopt_target)
        by_type: dict[str, dict[str, float]] = {}
        flops_by_op = rep["flops"].get("by_op_type") or {}
        total = float(rep["flops"].get("total") or 0) or 1.0
        for op, count in rep["census"].items():
            t = operator_type(op).value
            e = by_type.setdefault(t, {"count": 0, "flops": 0, "flops_share": 0.0})
            e["count"] += count
            e["flops"] += int((flops_by_op.get(op) or {}).get("flops", 0) or 0)
        for e in by_type.values():
            e["flops_share"] = round(e["flops"] / total, 4)
        self.analysis = {
            "target": self.target.value,
            "operators": dict(sorted(by_type.items(), key=lambda kv: -kv[1]["flops"])),
            "params": rep["params"]["count"], "flops": rep["flops"].get("total"),
            "fusion_opportunities": [{"rule": f["rule"], "count": f["count"]} for f in rep["opportunities"]],
            "quantizable_flops_share": rep["quantizable_flops_share"],
            "suggested_passes": rep["suggested_passes"], "warnings": rep["warnings"], "report": rep,
        }
        return self.analysis

    def apply_optimizations(self, output_path: str | Path, work_dir: str | Path | None = None) -> dict[str, Any]:
        """Run the target's recipe (every stage measured where this host can, gated on fidelity) and write the best
        stage's model to `output_path` (atomically). Returns the stages, the chosen one and what was not measured."""
        from edgeopt.pipeline import optimize

        out = Path(output_path)
        measurable, why = host_can_measure(self.target)
        recipe = recipe_for(self.target, self.config)
        work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="edgeopt-operators-"))
        res = optimize(self.model, recipe=recipe, out=work, progress=False)
        stages = [{"stage": s.name, "status": s.status,
                   "latency_ms": (s.latency_ms.p50 if s.latency_ms else None),
                   "size_mb": round((s.artifact or {}).get("size_bytes", 0) / 1e6, 3),
                   "fidelity": s.fidelity, "gate": s.gate.passed if s.gate else None} for s in res.ledger.stages]
        # measurable here: the fastest stage that passes its gate; for another device, the target's own artifact
        # (its last stage: fp16 or QDQ), whose timing on this CPU says nothing about that device
        last = res.ledger.stages[-1].name
        name = res.ledger.best if measurable else last
        art = res.artifacts.get(name) if name else None
        if art is None or art.path is None or art.kind not in ("onnx", "openvino"):
            raise InputError(f"{self.model}: no optimized model file was produced "
                             f"({'; '.join(res.failed.values()) or 'no stage passed its gate'})")
        _copy_atomic(Path(art.path), out)
        self.result = {"target": self.target.value, "edgeopt_target": recipe["target"], "output": str(out),
                       "from_stage": name, "measured_here": measurable,
                       "note": why or PLANS[self.target].note, "stages": stages,
                       "latency_is_this_host": True, "failed": res.failed,
                       "run_dir": str(work), "config": self.config}
        return self.result

    def save_optimization_metadata(self, path: str | Path) -> Path:
        """The analysis and the optimization result as JSON (written atomically)."""
        data = {"target": self.target.value, "config": self.config,
                "analysis": {k: v for k, v in (self.analysis or {}).items() if k != "report"},
                "result": self.result}
        from edgeopt.ledger import write_text_atomic

        p = Path(path)
        write_text_atomic(p, json.dumps(data, indent=1, default=str))
        return p


def _copy_atomic(src: Path, dst: Path) -> None:
    """Copy a model file (an OpenVINO .xml with its .bin) through temporary files and renames."""
    from edgeopt.artifact import write_bytes_atomic

    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.suffix == ".xml" and src.with_suffix(".bin").exists():
        write_bytes_atomic(dst.with_suffix(".bin"), src.with_suffix(".bin").read_bytes())
    write_bytes_atomic(dst, src.read_bytes())


def optimize_operators(model_path: str | Path, output_path: str | Path,
                       target: OptimizationTarget | str = OptimizationTarget.CPU,
                       config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Analyze and optimize `model_path` for `target`, write the result to `output_path`; returns the result dict
    (with the analysis under "analysis")."""
    opt = OperatorOptimizer(model_path, target, config)
    analysis = opt.analyze_model()
    result = opt.apply_optimizations(output_path)
    return {**result, "analysis": {k: v for k, v in analysis.items() if k != "report"}}


class OptimizationType(str, Enum):
    """The steps `EdgeOptimizer` can apply."""

    ONNX_CONVERSION = "onnx_conversion"
    OPERATOR_FUSION = "operator_fusion"
    INT8_QUANTIZATION = "int8_quantization"
    FP16_QUANTIZATION = "fp16_quantization"
    OPENVINO = "openvino"


class DeviceTarget(str, Enum):
    """The device class `EdgeOptimizer` optimizes for."""

    CPU = "cpu"
    GPU = "gpu"
    MOBILE = "mobile"
    NPU = "npu"


WHISPER_SIZES = {"tiny": "tiny.en", "tiny.en": "tiny.en"}


class EdgeOptimizer:
    """Whole-model pipelines for a device class; `optimize_whisper` runs Whisper through `edgeopt.speech`."""

    def __init__(self, target_device: DeviceTarget | str = DeviceTarget.CPU, output_dir: str | Path = "runs/edge",
                 threads: int = 2):
        try:
            self.target_device = DeviceTarget(target_device)
        except ValueError:
            raise InputError(f"unknown device target {target_device!r}; known: "
                             f"{', '.join(t.value for t in DeviceTarget)}") from None
        self.output_dir, self.threads = Path(output_dir), int(threads)

    def optimize_whisper(self, model_size: str = "tiny", optimizations: list[OptimizationType | str] | None = None,
                         model_path: str | Path | None = None, utterances: int = 5, rounds: int = 3) -> dict[str, Any]:
        """Whisper through the chosen optimizations, each stage transcribing the same espeak-ng utterances: per
        stage end-to-end time, RTF, encoder / decoder-step latency, WER, size, peak RSS (`edgeopt.speech.stages`).

        `model_size` "tiny" is the real Whisper tiny.en that ships offline (zoo:whisper-tiny-en); any other size
        needs `model_path`, a local Hugging Face Whisper folder. GPU and NPU targets get their artifacts only."""
        from edgeopt.speech import stages as S
        from edgeopt.speech import whisper as W
        from edgeopt.target import detect_target
        from edgeopt.zoo import speech

        opts = [OptimizationType(o) for o in (optimizations or [OptimizationType.ONNX_CONVERSION,
                                                                 OptimizationType.OPERATOR_FUSION,
                                                                 OptimizationType.INT8_QUANTIZATION])]
        if model_path is None:
            if model_size not in WHISPER_SIZES:
                raise InputError(f"Whisper {model_size!r} does not ship offline (tiny.en does); pass model_path= a "
                                 "local Hugging Face Whisper folder")
            from edgeopt.zoo.whisper import whisper_folder

            folder = whisper_folder()
        else:
            folder = Path(model_path)
        model, tok, fe = W.load_whisper(folder)
        wanted = ["onnx"]
        for o in opts:
            wanted += {OptimizationType.OPERATOR_FUSION: ["fused"],
                       OptimizationType.INT8_QUANTIZATION: ["int8-dynamic"] if self.target_device == DeviceTarget.CPU
                       else ["openvino-int8"],
                       OptimizationType.OPENVINO: ["openvino"], OptimizationType.ONNX_CONVERSION: [],
                       OptimizationType.FP16_QUANTIZATION: []}[o]
        if {OptimizationType.OPERATOR_FUSION, OptimizationType.INT8_QUANTIZATION} <= set(opts) and \
                self.target_device == DeviceTarget.CPU:
            wanted.append("int8-encoder")  # the decoder's INT8 costs WER: the encoder alone, the decoder fused fp32
        notes = []
        if OptimizationType.FP16_QUANTIZATION in opts:
            notes.append("fp16: Whisper's fp16 graphs are for GPUs; not built or measured on this CPU host")
        utts = speech.spoken(utterances)
        calib = [W.features(fe, [x]) for x, _ in speech.spoken(utterances + 2)[utterances:]]
        stages = S.build_stages(model, self.output_dir / "whisper", detect_target(),
                                stages=tuple(dict.fromkeys(wanted)), calibration=calib, tokens=W.Tokens.of(model),
                                tokenizer=tok)
        measured = self.target_device in (DeviceTarget.CPU, DeviceTarget.MOBILE)
        rows = S.measure_stages(stages, model, tok, fe, utts, rounds=rounds, threads=self.threads, folder=folder,
                                work=self.output_dir) if measured else []
        if not measured:
            notes.append(f"{self.target_device.value}: artifacts built, not measured here (no such device)")
        return {"model": str(folder), "device": self.target_device.value, "optimizations": [o.value for o in opts],
                "stages": rows or [{"stage": s.name, "files": {k: str(v) for k, v in s.files.items()},
                                    "skipped": s.skipped} for s in stages],
                "notes": notes}
