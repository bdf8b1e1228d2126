"""Candidate families for a target: each a chain of passes with a small space of settings, or a recorded reason to skip it.

A family is one way to make the model faster on the target (ONNX Runtime fp32 with fusions, its dynamic,
static and mixed INT8, fp16, OpenVINO fp32 / bf16 / INT8, tuned sessions, and structural candidates that
train). Its `space` maps each setting to its choices, the first choice being the default that the search
tries first; `chain(params, info)` turns chosen settings into the (pass, config) steps that build it from
the search's root model. `skip_reason(target, info, train_minutes)` says why the target's facts or the
model rule the family out (bf16 without bf16 units, fp16 without fp16 arithmetic, a structural family
without a training budget or for the wrong kind of model); a skipped family is recorded with its reason.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

Chain = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class ModelInfo:
    """What the families need to know about the model being searched."""

    kind: str                    # the search root's kind: onnx (torch baselines are exported first)
    baseline_kind: str           # torch or onnx: structural families need a torch baseline
    transformer: bool = False    # attention (MatMul + Softmax) in the graph
    conv: bool = False           # convolutions in the graph
    labelled: bool = False       # the evaluation data has labels (a classifier)
    source: str | None = None    # how the torch baseline was loaded (zoo:…, a folder)
    train_data: str | None = None  # what structural families calibrate/train on (None: the calibration data)


@dataclass(frozen=True)
class Family:
    """One candidate family: its name, relative cost (cheap first), runtime, settings space and chain."""

    name: str
    cost: int
    runtime: str
    doc: str
    space: dict[str, tuple[Any, ...]]
    chain: Callable[[dict[str, Any], ModelInfo], Chain]
    skip: Callable[[Any, ModelInfo, float], str | None] = lambda t, i, m: None
    structural: bool = False
    from_baseline: bool = False  # built from the torch baseline instead of the ONNX root

    def defaults(self) -> dict[str, Any]:
        return {k: v[0] for k, v in self.space.items()}

    def size(self, space: dict[str, tuple[Any, ...]] | None = None) -> int:
        n = 1
        for v in (space or self.space).values():
            n *= len(v)
        return n

    def combos(self, space: dict[str, tuple[Any, ...]] | None = None) -> list[dict[str, Any]]:
        sp = space or self.space
        keys = list(sp)
        return [dict(zip(keys, vals)) for vals in itertools.product(*(sp[k] for k in keys))]


def _isa(target: Any) -> set[str]:
    return set(getattr(target, "isa", ()) or ())


def _fuse(info: ModelInfo) -> dict[str, Any]:
    return {"rules": "auto"}


def _prefix(info: ModelInfo) -> Chain:
    return [("graph.simplify", {}), ("graph.fuse", _fuse(info))]


def _session_chain(settings: str, info: ModelInfo) -> Chain:
    """The fp32 prefix, then graph.static_shapes, then session.spinning off. Shapes are fixed after the fusions:
    fixed first, onnxslim turned MiniLM's MatMul+Add into Gemm+Reshape, which ONNX Runtime's attention fusion does
    not match (0.89× the root on a Sapphire Rapids Xeon); fixed after, the fused graph keeps its Attention ops."""
    parts = set(str(settings).split("+"))
    unknown = parts - {"static", "nospin"}
    if unknown:
        raise ValueError(f"ort-session: unknown setting {sorted(unknown)[0]!r} (known: static, nospin)")
    chain: Chain = _prefix(info)
    if "static" in parts:
        chain.append(("graph.static_shapes", {}))
    if "nospin" in parts:
        chain.append(("session.spinning", {"spinning": False}))
    return chain


def _q(params: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: params[k] for k in keys if params.get(k) is not None}


def _no_fp16(target: Any, info: ModelInfo, train: float) -> str | None:
    isa = _isa(target)
    if getattr(target, "device", "cpu") != "cpu":
        return None
    if "avx512_fp16" in isa or "fp16" in isa and getattr(target, "arch", "") == "arm64":
        return None
    return ("no fp16 arithmetic on this CPU (no AVX512-FP16 / ARM FP16): ONNX Runtime's CPU kernels would cast "
            "every fp16 op back to fp32")


def _no_bf16(target: Any, info: ModelInfo, train: float) -> str | None:
    isa = _isa(target)
    if {"avx512_bf16", "amx_bf16"} & isa or "bf16" in isa:
        return None
    return "no bf16 units (no AVX512-BF16 / AMX-BF16): OpenVINO would emulate bf16 in fp32, slower than fp32"


def _no_openvino(target: Any, info: ModelInfo, train: float) -> str | None:
    runtimes = getattr(target, "runtimes", {}) or {}
    if "openvino" not in runtimes:
        return "OpenVINO is not installed (pip install edgeopt[openvino])"
    if getattr(target, "arch", "x86_64") not in ("x86_64", "arm64"):
        return f"OpenVINO's CPU plugin does not run on {getattr(target, 'arch', '?')}"
    return None


def _no_litert(target: Any, info: ModelInfo, train: float) -> str | None:
    from edgeopt.extras import available  # lazy: keeps the family table light

    if info.baseline_kind != "torch" or not info.source:
        return "needs the PyTorch model (LiteRT converts from PyTorch: a zoo: name or a Hugging Face folder), not an ONNX file"
    if not (available("litert_torch") and available("ai_edge_litert")):
        return "LiteRT is not installed (pip install 'edgeopt[mobile]')"
    return None


def _ov_bf16_skip(target: Any, info: ModelInfo, train: float) -> str | None:
    return _no_openvino(target, info, train) or _no_bf16(target, info, train)


def _structural_skip(kind: str) -> Callable[[Any, ModelInfo, float], str | None]:
    def skip(target: Any, info: ModelInfo, train: float) -> str | None:
        if train <= 0:
            return "needs a training budget (search.train_minutes > 0 in the recipe, --train-minutes)"
        if info.baseline_kind != "torch" or not info.source:
            return "needs the PyTorch model (a zoo: name or a Hugging Face folder), not an ONNX file"
        if kind == "transformer" and not info.transformer:
            return "the model has no attention layers"
        if kind == "cnn" and not (info.conv and info.labelled):
            return "needs a convolutional classifier with labelled data"
        return None
    return skip


TRAIN_SENTENCES = "zoo:sentences[640:1640]"  # 1000 generated sentences after the bundled 640 (no eval overlap)
TRAIN_SAMPLES = 1000
DISTILL_SENTENCES = "zoo:sentences[640:3640]"  # 3000 of them for a distillation after the pruning (its first 1000
DISTILL_SAMPLES = 3000  # are the pruning's calibration data, as with TRAIN_SENTENCES)
DISTILL_EPOCHS = 2


def train_data(calibration_spec: str | None) -> str | None:
    """The data structural families fit on: for generated sentences, 1000 more of them past the bundled set
    (64 calibration sentences left MiniLM's refit at mean cosine 0.977, 1000 at 0.9905); else None, the
    calibration data itself."""
    if calibration_spec and calibration_spec.startswith("zoo:sentences"):
        return TRAIN_SENTENCES
    return None


def _fit_data(info: ModelInfo) -> dict[str, Any]:
    if info.train_data:
        return {"data": info.train_data, "limit": TRAIN_SAMPLES}
    return {}


def _int8_tail(kind: str | None, info: ModelInfo) -> Chain:
    """What follows a structural step's export: ONNX Runtime fp32 fusions, its dynamic INT8, or OpenVINO INT8."""
    if kind == "ov":
        return [("graph.simplify", {}), ("convert.openvino", {"precision": "auto", "static_shapes": True}),
                ("openvino.quantize", {"preset": "performance", "model_type": "auto"})]
    if kind == "ort":
        return [*_prefix(info), ("graph.quantize_dynamic", {})]
    return _prefix(info)


def _heads_chain(params: dict[str, Any], info: ModelInfo) -> Chain:
    """Feed-forward neurons pruned (structured OBS with a least-squares refit on generated data: in
    benchmarks/structural_minilm.py this alone kept MiniLM at mean cosine 0.9905 for 1.35× on 1000 sentences)
    and optionally attention heads first; then exported, fused and optionally
    quantized (ONNX Runtime dynamic INT8 or OpenVINO INT8), or converted to LiteRT (fp32 or dynamic INT8), whose
    XNNPACK kernels were the fastest fp32 path on an AVX2-only CPU.

    `recover: distill` adds a distillation from the unpruned model after the FFN pruning (output cosine plus every
    layer's hidden states; on generated text, 3000 sentences for 2 epochs): on a Zen 4 class EPYC it kept MiniLM
    at mean cosine 0.9904 with 60 % of the neurons gone, 1.47× ORT fp32, for 11 CPU-minutes
    (benchmarks/structural_minilm.py --variant ffn60-distill2), where the refit alone needs 50 % for 0.9905."""
    fit = _fit_data(info)
    chain: Chain = []
    if params.get("heads"):
        chain.append(("prune.heads", {"sparsity": params["heads"], "importance": "obs",
                                      "recover": "none" if params.get("ffn") else "distill", **fit,
                                      **({"samples": TRAIN_SAMPLES} if fit else {})}))
    if params.get("ffn"):
        ffn: dict[str, Any] = {"sparsity": params["ffn"], "recover": "none", **fit,
                               **({"samples": TRAIN_SAMPLES} if fit else {})}
        if params.get("recover") == "distill":
            ffn.update(recover="distill", train={"epochs": DISTILL_EPOCHS},
                       **({"data": DISTILL_SENTENCES, "limit": DISTILL_SAMPLES} if fit else {}))
        chain.append(("prune.ffn", ffn))
    tail = params.get("int8")
    if tail in ("litert", "litert-int8"):  # the pruned PyTorch model straight to LiteRT (XNNPACK)
        return [*chain, _litert("dynamic_int8" if tail == "litert-int8" else "none")]
    return [*chain, ("convert.onnx", {}), *_int8_tail(tail, info)]


SMOOTH_ALPHA = 0.5  # SmoothQuant before LiteRT dynamic INT8: on MiniLM mean cosine 0.9977 -> 0.9992, same speed


def _litert(quantize: str) -> tuple[str, dict[str, Any]]:
    """convert.litert with `quantize`; dynamic INT8 after SmoothQuant on the Linears that share an input (query /
    key / value: their LayerNorm input carries the outlier channels per-token int8 rounds worst; a no-op for
    models without such Linears)."""
    return ("convert.litert", {"quantize": quantize, **({"smooth": SMOOTH_ALPHA} if quantize == "dynamic_int8" else {})})


def _channels_chain(params: dict[str, Any], info: ModelInfo) -> Chain:
    """Channels pruned with fine-tuning (distilled from the unpruned model), exported, optionally static INT8."""
    chain: Chain = [("prune.channels", {"sparsity": params["sparsity"], "loss": "distill",
                                        "train": {"epochs": params["epochs"]}}),
                    ("convert.onnx", {}), ("graph.simplify", {})]
    if params.get("int8"):
        chain.append(("graph.quantize_static", {}))
    return chain


def _student_chain(params: dict[str, Any], info: ModelInfo) -> Chain:
    """A narrower student distilled from the CNN (knowledge distillation, T = 4), optionally channel-pruned
    further with distilled fine-tuning, exported and optionally quantized to static INT8 — the cnn-course
    recipe's chain as a searchable family."""
    chain: Chain = [("distill", {"student_width": params["width"], "temperature": 4.0, "alpha": 0.7,
                                 "train": {"epochs": params["epochs"], "lr": 0.002, "patience": 4,
                                           "augment_shift": 0.08}})]
    if params.get("prune"):
        chain.append(("prune.channels", {"sparsity": params["prune"], "importance": "l1", "scope": "layer",
                                         "rounds": 3, "loss": "distill",
                                         "train": {"epochs": 8, "lr": 0.001, "patience": 4, "augment_shift": 0.08}}))
    chain += [("convert.onnx", {}), ("graph.simplify", {})]
    if params.get("int8"):
        chain.append(("graph.quantize_static", {}))
    return chain


FAMILIES: dict[str, Family] = {f.name: f for f in (
    Family("ort-fp32", 1, "onnxruntime", "ONNX Runtime fp32: onnxslim simplification, then the fusion rules and "
           "ORT's transformer optimizer", {"ort_transformer": ("auto", False)},
           lambda p, i: [("graph.simplify", {}), ("graph.fuse", {"rules": "auto",
                                                                  "ort_transformer": p["ort_transformer"]})]),
    Family("ort-int8-dynamic", 2, "onnxruntime", "ONNX Runtime dynamic INT8 (weights int8, activations "
           "quantized at run time) in the target's format; optionally the most sensitive layers kept float",
           {"per_channel": (None, True, False), "exclude_sensitive": (None, 0.998, 0.999)},
           lambda p, i: [*_prefix(i), ("graph.quantize_dynamic", _q(p, "per_channel", "exclude_sensitive"))]),
    Family("ort-int8-static", 3, "onnxruntime", "ONNX Runtime static INT8 (QDQ, activation scales calibrated on "
           "the calibration data)", {"method": ("minmax", "percentile", "entropy"), "per_channel": (None, True)},
           lambda p, i: [("graph.simplify", {}), ("graph.quantize_static", _q(p, "method", "per_channel"))]),
    Family("ort-int8-mixed", 4, "onnxruntime", "ONNX Runtime INT8 with the layers that most hurt fidelity kept in "
           "float until a fidelity target holds", {"min_mean_cosine": (0.996, 0.999)},
           lambda p, i: [*_prefix(i), ("graph.quantize_mixed", {"min_mean_cosine": p["min_mean_cosine"]})]),
    Family("ort-fp16", 2, "onnxruntime", "ONNX Runtime fp16 (inputs and outputs kept fp32)", {"keep_io_types": (True,)},
           lambda p, i: [*_prefix(i), ("graph.fp16", {"keep_io_types": True})], skip=_no_fp16),
    Family("ort-tuned", 5, "onnxruntime", "ONNX Runtime fp32 with intra-op threads and graph optimization level "
           "chosen by timing (session.tune)", {"levels": ("extended,all", "basic,extended,all")},
           lambda p, i: [*_prefix(i), ("session.tune", {"levels": p["levels"].split(",")})]),
    Family("ort-session", 2, "onnxruntime", "ONNX Runtime fp32 with session settings: inputs fixed to the measured "
           "shapes (static: memory planned once, shape arithmetic folded) and/or worker threads that sleep instead "
           "of spinning between ops", {"settings": ("static", "static+nospin", "nospin")},
           lambda p, i: _session_chain(p["settings"], i)),
    Family("ov-fp32", 2, "openvino", "OpenVINO fp32 (static shapes compile to specialized kernels)",
           {"static_shapes": (True, False)},
           lambda p, i: [("graph.simplify", {}), ("convert.openvino", {"precision": "f32",
                                                                        "static_shapes": p["static_shapes"]})],
           skip=_no_openvino),
    Family("ov-bf16", 2, "openvino", "OpenVINO bf16 inference precision", {"static_shapes": (True,)},
           lambda p, i: [("graph.simplify", {}), ("convert.openvino", {"precision": "bf16",
                                                                        "static_shapes": p["static_shapes"]})],
           skip=_ov_bf16_skip),
    Family("ov-int8", 3, "openvino", "OpenVINO INT8 through NNCF post-training quantization (transformer model "
           "type for transformers), optionally with NNCF's accuracy control (layers back to float until the metric "
           "is within max_drop)", {"preset": ("mixed", "performance"), "max_drop": (None, 0.004)},
           lambda p, i: [("graph.simplify", {}), ("convert.openvino", {"precision": "auto", "static_shapes": True}),
                         ("openvino.quantize", {"preset": p["preset"], "model_type": "auto",
                                                **_q(p, "max_drop")})],
           skip=_no_openvino),
    Family("litert", 3, "litert", "LiteRT (TFLite + XNNPACK) converted from the PyTorch model: dynamic INT8 "
           "(int8 weights, activations quantized at run time, after SmoothQuant on Linears sharing an input), fp32, "
           "or static INT8 calibrated on the calibration data",
           {"quantize": ("dynamic_int8", "none", "static_int8")},
           lambda p, i: [_litert(p["quantize"])], skip=_no_litert, from_baseline=True),
    Family("structural-heads", 20, "onnxruntime", "attention heads and FFN neurons pruned from the PyTorch model, "
           "refitted on the calibration data (structured OBS), optionally distilled from the unpruned model, then "
           "exported and fused",
           {"ffn": (0.5, 0.25, 0.6, 0.35), "heads": (0.0, 0.25), "int8": (None, "ov", "ort", "litert", "litert-int8"),
            "recover": ("none", "distill")},
           _heads_chain,
           skip=_structural_skip("transformer"), structural=True, from_baseline=True),
    Family("structural-channels", 20, "onnxruntime", "channels pruned from the PyTorch CNN and fine-tuned, then exported",
           {"sparsity": (0.5, 0.3, 0.7), "int8": (True, False), "epochs": (4, 8)}, _channels_chain,
           skip=_structural_skip("cnn"), structural=True, from_baseline=True),
    Family("structural-student", 30, "onnxruntime", "a narrower student distilled from the CNN, optionally "
           "channel-pruned further, exported and quantized to static INT8",
           {"width": (0.5, 0.35, 0.75), "prune": (0.5, 0.0), "int8": (True, False), "epochs": (10,)}, _student_chain,
           skip=_structural_skip("cnn"), structural=True, from_baseline=True),
)}


def model_info(root: Any, baseline: Any, labelled: bool, calibration_spec: str | None = None) -> ModelInfo:
    """ModelInfo of the search root (an ONNX artifact) and the baseline it came from; `calibration_spec` is the
    run's calibration data spec (it decides what structural families fit on, see `train_data`)."""
    ops: set[str] = set()
    if getattr(root, "kind", None) == "onnx" and root.path is not None:
        import onnx  # lazy: keeps the family table importable without onnx

        m = onnx.load(str(root.path), load_external_data=False)
        ops = {n.op_type for n in m.graph.node}
    transformer = bool({"Attention", "MultiHeadAttention"} & ops) or ({"Softmax"} <= ops and bool({"MatMul", "Einsum"} & ops))
    return ModelInfo(kind=getattr(root, "kind", "onnx"), baseline_kind=getattr(baseline, "kind", "onnx"),
                     transformer=transformer, conv=bool({"Conv", "ConvInteger", "QLinearConv"} & ops),
                     labelled=labelled, source=(getattr(baseline, "meta", {}) or {}).get("source"),
                     train_data=train_data(calibration_spec))


@dataclass
class Plan:
    """The families a search will explore on this target and model, and those skipped with the reason;
    `followups`: settings queued after every family's first ones (run when the trial budget reaches them)."""

    families: list[Family]
    spaces: dict[str, dict[str, tuple[Any, ...]]]
    skipped: dict[str, str] = field(default_factory=dict)
    followups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def plan(target: Any, info: ModelInfo, names: tuple[str, ...] = (), space: dict[str, dict[str, list[Any]]] | None = None,
         train_minutes: float = 0) -> Plan:
    """The families to search (all, or `names`), cheapest first, with `space` overriding their settings."""
    chosen = [FAMILIES[n] for n in names] if names else list(FAMILIES.values())
    keep, skipped, spaces, followups = [], {}, {}, {}
    for fam in sorted(chosen, key=lambda f: (f.cost, f.name)):
        why = fam.skip(target, info, train_minutes)
        if why:
            skipped[fam.name] = why
            continue
        keep.append(fam)
        sp = {**fam.space, **{k: tuple(v) for k, v in (space or {}).get(fam.name, {}).items()}}
        if "int8" in sp and "ov" in sp["int8"] and _no_openvino(target, info, train_minutes):
            sp["int8"] = tuple(c for c in sp["int8"] if c != "ov") or (None,)  # OpenVINO INT8 needs OpenVINO
        if "int8" in sp and {"litert", "litert-int8"} & set(sp["int8"]) and _no_litert(target, info, train_minutes):
            sp["int8"] = tuple(c for c in sp["int8"] if c not in ("litert", "litert-int8")) or (None,)
        if fam.name == "structural-heads":
            sp = _structural_first(sp, target, train_minutes, set((space or {}).get(fam.name, {})))
        elif fam.structural and "int8" in sp and "int8" not in (space or {}).get(fam.name, {}):
            sp, later = _cnn_float_first(sp, target)
            if later:
                followups[fam.name] = [later]
        spaces[fam.name] = sp
    return Plan(keep, spaces, skipped, followups)


def _cnn_float_first(sp: dict[str, tuple[Any, ...]], target: Any) -> tuple[dict[str, tuple[Any, ...]], dict[str, Any]]:
    """A CNN structural family (channels, student) on a target without int8 dot products: (its space with fp32
    first, its first settings with INT8 as the follow-up trial), else (the space unchanged, {}). The small
    models these families make ran faster in fp32 there, and their INT8 is half the size: both belong on the
    front. Measured on a Zen 4 EPYC with AVX-512/VNNI masked (benchmarks/isa/as_avx2.sh): the cnn-course's pruned
    student 0.55 ms in fp32 against 0.82 ms in static INT8 (batch 16, 2 threads); with VNNI the INT8 student was
    the fastest model (README, the digits-cnn search)."""
    if getattr(target, "has_int8_dot", False) or False not in sp["int8"] or sp["int8"][0] is False:
        return sp, {}
    out = {**sp, "int8": (False, *(c for c in sp["int8"] if c is not False))}
    return out, {**{k: v[0] for k, v in out.items()}, "int8": sp["int8"][0]}


DISTILL_MINUTES = 10  # the training budget from which the structural family tries distillation first (a distilled
# MiniLM trial took ~6 minutes of wall time on 2 cores: prune.ffn's refit, 3000 sentences x 2 epochs, the export)


def _structural_first(sp: dict[str, tuple[Any, ...]], target: Any, train_minutes: float,
                      given: set[str]) -> dict[str, tuple[Any, ...]]:
    """The structural family's space with the setting measured best for this CPU class moved first (the search
    tries each family's first settings before any sampled ones); settings the recipe's space gives keep its order.

    With int8 dot products (VNNI, AMX, dotprod, i8mm) and room to distil: 35 % of the FFN neurons pruned, distilled,
    then LiteRT dynamic INT8 after SmoothQuant (25 % when the INT8 tail is OpenVINO's or ONNX Runtime's, which have
    no SmoothQuant here). On a Zen 4 class EPYC (AVX-512 + VNNI) 25 % without SmoothQuant was 1.25x (1.25-1.26)
    OpenVINO + NNCF's defaults at mean cosine 0.9952; SmoothQuant took 35 % from 0.9937 to 0.9952 (3.90x ORT fp32,
    against 3.85x for 25 % at 0.9966 in the same bench; an earlier bench had 35 % 8 % faster than 25 %)
    (benchmarks/search.py, README). Without them INT8 buys little, so the first trial
    stays fp32 and prunes harder: 60 % distilled measured 1.47x ORT fp32 at 0.9904 against 1.34x at 0.9905 for 50 %
    refitted. Below DISTILL_MINUTES the family's own defaults (50 %, refit, fp32) come first."""
    if train_minutes < DISTILL_MINUTES or "distill" not in sp.get("recover", ()):
        return sp
    if getattr(target, "has_int8_dot", False):
        tail = next((c for c in ("litert-int8", "ov", "ort") if c in sp.get("int8", ())), None)
        want = {"ffn": 0.35 if tail == "litert-int8" else 0.25, "heads": 0.0, "recover": "distill", "int8": tail}
    else:
        want = {"ffn": 0.6, "heads": 0.0, "recover": "distill", "int8": None}
    out = dict(sp)
    for k, v in want.items():
        if k in out and k not in given and v in out[k]:
            out[k] = (v, *(c for c in out[k] if c != v))
    return out


def check_space(names: tuple[str, ...], space: dict[str, dict[str, list[Any]]]) -> None:
    """ValueError naming the first unknown family, unknown setting or setting value no pass config accepts."""
    from edgeopt.passes.base import build_pass  # lazy: the pass registry imports every pass module

    for n in [*names, *space]:
        if n not in FAMILIES:
            raise ValueError(f"unknown candidate family {n!r}; known: {', '.join(FAMILIES)}")
    info = ModelInfo(kind="onnx", baseline_kind="torch", transformer=True, conv=True, labelled=True, source="zoo:x")
    for n, settings in space.items():
        fam = FAMILIES[n]
        for k, choices in settings.items():
            if k not in fam.space:
                raise ValueError(f"family {n}: unknown setting {k!r}; known: {', '.join(fam.space) or 'none'}")
            if not isinstance(choices, (list, tuple)) or not choices:
                raise ValueError(f"family {n}: setting {k!r} needs a non-empty list of choices")
            for c in choices:
                for pname, cfg in fam.chain({**fam.defaults(), k: c}, info):
                    try:
                        build_pass(pname, cfg)
                    except Exception as e:
                        raise ValueError(f"family {n}: {k}={c!r} is not a valid {pname} config ({e})") from None
