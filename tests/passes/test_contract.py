"""The contract every registered pass keeps: declared kinds, input untouched, a real change on a model it
applies to, and outputs within its tolerance (or, without one, the check its stated reason names)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest
from helpers import cosine_rows, run_onnx

from edgeopt.artifact import content_sha256
from edgeopt.data import to_torch_args
from edgeopt.passes.base import PassContext, build_pass, registry


@dataclass(frozen=True)
class Case:
    """Where a pass is checked: a fixture it transforms, that fixture's feeds, and the pass config."""

    fixture: str
    feeds: str
    config: dict[str, Any] = field(default_factory=dict)


BERT_TORCH = Case("tiny_bert_torch", "tiny_bert_feeds")
BERT_ONNX = Case("tiny_bert_onnx", "tiny_bert_feeds")
CNN = Case("tiny_convnet_torch", "tiny_convnet_feeds")

# Every registered pass needs an entry: a model it changes. Configs differ from the defaults only where the
# default would leave the tiny model alone or make the run slow.
CASES: dict[str, Case] = {
    "convert.onnx": BERT_TORCH,
    "convert.openvino": Case("tiny_bert_onnx", "tiny_bert_feeds", {"precision": "f32"}),
    "graph.fp16": BERT_ONNX,
    "graph.fuse": BERT_ONNX,
    "graph.quantize_dynamic": BERT_ONNX,
    "graph.quantize_mixed": BERT_ONNX,
    "graph.quantize_static": BERT_ONNX,
    "graph.simplify": BERT_ONNX,
    "session.tune": Case("tiny_bert_onnx", "tiny_bert_feeds", {"runs": 3, "warmup": 1}),
    "session.spinning": BERT_ONNX,
    "graph.static_shapes": BERT_ONNX,
    "openvino.quantize": Case("tiny_bert_openvino", "tiny_bert_feeds"),
    "kernels.attention": Case("tiny_bert_torch", "tiny_bert_feeds", {"impl": "flash", "q_block": 8, "k_block": 8}),
    "kernels.fused_norm": Case("tiny_gn_convnet_torch", "tiny_convnet_feeds"),
    "kernels.winograd": CNN,
    "prune.magnitude": Case("tiny_convnet_torch", "tiny_convnet_feeds", {"sparsity": 0.5}),
    "prune.channels": Case("tiny_convnet_torch", "tiny_convnet_feeds", {"floor": 0.8}),  # 0.98 keeps round 0 here
    "prune.heads": BERT_TORCH,
    "prune.ffn": Case("tiny_bert_torch", "tiny_bert_feeds", {"sparsity": 0.5, "round_to": 8}),
    "arch.depthwise": CNN,
    "compress.ofa": Case("tiny_convnet_torch", "tiny_convnet_feeds",  # a small space, a few epochs: seconds
                         {"space": {"depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [2, 3],
                                    "resolutions": [12, 16], "widths": [8, 16], "strides": [1, 2],
                                    "stem_width": 8, "head_width": 16},
                          "epochs": 6, "samples": 4, "trials": 20, "threads": 1, "train": {"lr": 0.01}}),
    "distill": CNN,
    "quant.qat": CNN,
    "convert.ncnn": CNN,
    "convert.coreml": CNN,
    "convert.litert": CNN,
    "convert.litert_llm": Case("tiny_llm_torch", "tiny_llm_feeds",  # one prefill length: seconds per signature
                               {"prefill_lens": [8], "kv_cache_max_len": 32, "score_len": 16}),
    "quantize.litert_llm": Case("tiny_llm_tflite", "tiny_llm_feeds", {"variant": "dynamic_int8"}),
}


def _outputs(art, feeds):
    if art.kind == "tflite" and art.meta.get("task") == "causal-lm":  # an exported LLM: teacher-forced logits
        from edgeopt.llm.litert_session import LiteRtLlm

        with LiteRtLlm(art.path, threads=1) as s:
            return [s.score(f["input_ids"][0].tolist())[None] for f in feeds]
    if art.kind == "onnx":
        return run_onnx(art.path, feeds)
    if art.kind in ("openvino", "tflite", "ncnn"):
        from edgeopt.measure.runners import make_runner

        r = make_runner(art, threads=1)
        try:
            return [r.run(f)[0] for f in feeds]
        finally:
            r.close()
    if art.kind == "coreml":  # Core ML runs only on Apple platforms: its contract is checked structurally
        return None
    import torch

    with torch.no_grad():
        return [art.module(*to_torch_args(f, art.input_spec.names)).numpy() for f in feeds]


def _mean_cosine(ref, got) -> float:
    return float(np.mean([cosine_rows(r, g).mean() for r, g in zip(ref, got)]))


# ------------------------------------------------------------------------------------- structure helpers
def _onnx_ops(art) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(art.path), load_external_data=False).graph.node)


def _onnx_init_types(art) -> Counter:
    import onnx

    graph = onnx.load(str(art.path)).graph
    return Counter(onnx.TensorProto.DataType.Name(i.data_type) for i in graph.initializer)


def _ov_ops(art) -> Counter:
    import openvino as ov

    return Counter(op.get_type_name() for op in ov.Core().read_model(str(art.path)).get_ops())


QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
             "DynamicQuantizeMatMul", "QGemm", "QAttention", "FakeQuantize")


def _quantized(ops: Counter) -> int:
    return sum(n for op, n in ops.items() if op in QUANT_OPS or op.startswith("QLinear"))


def _module_types(art) -> Counter:
    return Counter(type(m).__name__ for m in art.module.modules())


def _params(art) -> int:
    return sum(p.numel() for p in art.module.parameters())


def _weights(module) -> list:
    from torch import nn

    return [m.weight for m in module.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]


# ------------------------------------------------------------------------------------- what each pass changes
def _converted_onnx(art, out, ctx, feeds):
    ops = _onnx_ops(out)
    assert ops["MatMul"] >= 12 and ops["Softmax"] == 2, f"the exported graph lacks the encoder's compute: {ops}"


def _converted_openvino(art, out, ctx, feeds):
    ops = _ov_ops(out)
    assert ops["MatMul"] >= 12 and out.path.with_suffix(".bin").stat().st_size > 0, ops


def _fp16(art, out, ctx, feeds):
    before, after = _onnx_init_types(art), _onnx_init_types(out)
    assert before["FLOAT16"] == 0 and after["FLOAT16"] > 0 and after["FLOAT"] < before["FLOAT"], (before, after)


def _fused(art, out, ctx, feeds):
    before, after = _onnx_ops(art), _onnx_ops(out)
    assert sum(after.values()) < sum(before.values()), "fusion removes nodes"
    assert set(after) - set(before), f"no fused op type appeared: {after}"


def _simplified(art, out, ctx, feeds):
    before, after = _onnx_ops(art), _onnx_ops(out)
    assert sum(after.values()) < sum(before.values()), (before, after)


def _onnx_quantized(art, out, ctx, feeds):
    before, after = _onnx_ops(art), _onnx_ops(out)
    assert _quantized(before) == 0 and _quantized(after) > 0, after
    types = _onnx_init_types(out)
    assert types["INT8"] + types["UINT8"] > 0, f"no integer weights stored: {types}"


def _session_tuned(art, out, ctx, feeds):
    import onnxruntime as ort

    chosen = out.meta.get("session") or {}
    assert chosen.get("threads", 0) >= 1 and chosen.get("provider") in ort.get_available_providers(), chosen
    assert out.sha256 == art.sha256, "session.tune chooses how to run the graph, never changes it"


def _spinning_set(art, out, ctx, feeds):
    assert out.meta["session"]["spinning"] is False and out.sha256 == art.sha256, "a session setting, same graph"


def _shapes_fixed(art, out, ctx, feeds):
    import onnx

    from edgeopt.passes.graph.static_shapes import dynamic_inputs

    assert dynamic_inputs(onnx.load(str(art.path))) and not dynamic_inputs(onnx.load(str(out.path)))


def _ov_quantized(art, out, ctx, feeds):
    before, after = _ov_ops(art), _ov_ops(out)
    assert before["FakeQuantize"] == 0 and after["FakeQuantize"] > 0, after


def _attention_swapped(art, out, ctx, feeds):
    """The output model's attention runs through edgeopt's kernels (counted at their dispatch table), the input's not."""
    from unittest import mock

    from edgeopt.kernels import attention as k

    calls: Counter = Counter()

    def counted(impl, fn):
        def run(*args):
            calls[impl] += 1
            return fn(*args)
        return run

    with mock.patch.dict(k._IMPL_FNS, {impl: counted(impl, fn) for impl, fn in k._IMPL_FNS.items()}):
        _outputs(art, feeds[:1])
        assert not calls, f"the input model already used edgeopt kernels: {dict(calls)}"
        _outputs(out, feeds[:1])
    assert calls == Counter({"flash": 2}), f"expected both attention layers on the flash kernel, got {dict(calls)}"


def _winograd(art, out, ctx, feeds):
    before, after = _module_types(art), _module_types(out)
    assert after["WinogradConv2d"] == 2 and after["Conv2d"] == before["Conv2d"] - 2, after


def _fused_norm(art, out, ctx, feeds):
    after = _module_types(out)
    assert after["GroupNormAct"] == 2 and after["GroupNorm"] == 0 and after["SiLU"] == 0, after


def _zeroed(art, out, ctx, feeds):
    zeros = [int((w == 0).sum()) for w in _weights(out.module)]
    assert sum(int((w == 0).sum()) for w in _weights(art.module)) == 0 and sum(zeros) > 0, zeros


def _fewer_params(art, out, ctx, feeds):
    assert _params(out) < _params(art), (_params(art), _params(out))


def _fewer_channels(art, out, ctx, feeds):
    _fewer_params(art, out, ctx, feeds)
    assert out.module[0].out_channels < art.module[0].out_channels, "the first conv lost channels"


def _depthwise(art, out, ctx, feeds):
    from torch import nn

    def depthwise(a):
        return sum(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in a.module.modules())

    assert depthwise(art) == 0 and depthwise(out) == 1, "the 16→16 conv became a depthwise-separable block"
    _fewer_params(art, out, ctx, feeds)


def _qdq_onnx(art, out, ctx, feeds):
    ops = _onnx_ops(out)
    assert ops["QuantizeLinear"] > 0 and ops["DequantizeLinear"] > 0, ops
    assert _onnx_init_types(out)["INT8"] >= 3, "each Conv/Linear weight is stored as int8"


CHANGED: dict[str, Callable[..., None]] = {
    "convert.onnx": _converted_onnx, "convert.openvino": _converted_openvino, "graph.fp16": _fp16,
    "graph.fuse": _fused, "graph.simplify": _simplified, "graph.quantize_dynamic": _onnx_quantized,
    "graph.quantize_static": _onnx_quantized, "graph.quantize_mixed": _onnx_quantized,
    "session.tune": _session_tuned, "session.spinning": _spinning_set, "graph.static_shapes": _shapes_fixed,
    "openvino.quantize": _ov_quantized, "kernels.attention": _attention_swapped,
    "kernels.winograd": _winograd, "kernels.fused_norm": _fused_norm, "prune.magnitude": _zeroed,
    "prune.channels": _fewer_channels, "prune.heads": _fewer_params, "prune.ffn": _fewer_params,
    "arch.depthwise": _depthwise,
    "distill": _fewer_params, "quant.qat": _qdq_onnx,
}


def _ofa_dense(art, out, ctx, feeds):
    kinds = {type(m).__name__ for m in out.module.modules()}
    assert not kinds & {"ElasticKernelConv", "ElasticInvertedResidual", "OFANet"}, "a plain dense subnet"
    assert out.meta["ofa"] == ctx.notes["compress.ofa"]["subnet"] and out.rebuild["builder"] == "compress.ofa"


CHANGED["compress.ofa"] = _ofa_dense


# ------------------------------------------------------------------------------------- what a reason promises
def _sparsity_reached(name, art, out, ctx, ref, got):
    target = CASES[name].config["sparsity"]
    before, after = _weights(art.module), _weights(out.module)
    total = sum(w.numel() for w in after)
    zeros = sum(int((w == 0).sum()) for w in after)
    assert abs(zeros / total - target) <= 1 / total, f"sparsity {zeros / total:.4f}, target {target}"
    for b, a in zip(before, after):
        kept = a != 0
        assert (a[kept] == b[kept]).all(), "a surviving weight changed its value"


def _scored(score: str, baseline: str | float, floor: float):
    """The pass's own held-out score (a note) is at least `baseline` (another note, or a number), and the mean
    cosine of the output model to the input on the contract feeds is at least `floor`."""

    def check(name, art, out, ctx, ref, got):
        notes = ctx.notes[name]
        lower = notes[baseline] if isinstance(baseline, str) else baseline
        assert notes[score] is not None and notes[score] >= lower, f"{score} {notes[score]} < {baseline} {lower}"
        cos = _mean_cosine(ref, got)
        assert cos >= floor, f"mean cosine to the input {cos:.4f} < {floor}"

    return check


def _ncnn_converted(art, out, ctx, feeds):
    from edgeopt.measure.ncnn import read_param

    types = [layer.type for layer in read_param(out.path).layers]
    assert types.count("Convolution") == 2 and types.count("InnerProduct") == 1, types
    assert out.path.with_suffix(".bin").exists() and sorted(p.name for p in out.path.parent.iterdir()) == [
        "model.ncnn.bin", "model.ncnn.param"], "only the param and bin are kept"


def _coreml_converted(art, out, ctx, feeds):
    notes = ctx.notes["coreml"]
    assert out.path.suffix == ".mlpackage" and out.path.is_dir()
    assert notes["ops"].get("conv") == 2, notes["ops"]


def _coreml_structural(name, art, out, ctx, ref, got):
    notes = ctx.notes["coreml"]
    assert notes["measured"] is False and "Apple" in notes["why"]
    assert [i["name"] for i in notes["inputs"]] == art.input_spec.names
    assert notes["outputs"][0]["shape"][1:] == list(ref[0].shape[1:]), (notes["outputs"], ref[0].shape)


def _litert_converted(art, out, ctx, feeds):
    from edgeopt.analyze.tflite import op_census

    c = op_census(out.path)
    assert c.get("CONV_2D") == 2 and c.get("FULLY_CONNECTED") == 1, c
    assert [p.name for p in out.path.parent.iterdir()] == ["model.tflite"]


def _llm_exported(art, out, ctx, feeds):
    from edgeopt.analyze.tflite import tflite_info

    assert set(tflite_info(out.path)["signatures"]) >= {"prefill_8", "decode", "score_16"}
    assert (out.path.parent / "llm.json").is_file() and out.meta["task"] == "causal-lm"


def _llm_quantized(art, out, ctx, feeds):
    from edgeopt.analyze.tflite import tflite_info

    assert "int8" in tflite_info(out.path)["weight_dtypes"] and out.size_bytes < 0.5 * art.size_bytes


def _top1_agrees(floor: float):
    """Next-token top-1 agreement of the output model's logits with the input's on the contract feeds."""

    def check(name, art, out, ctx, ref, got):
        agree = float(np.mean([(r.argmax(-1) == g.argmax(-1)).mean() for r, g in zip(ref, got)]))
        assert agree >= floor, f"top-1 agreement {agree:.3f} < {floor}"

    return check


CHANGED.update({"convert.ncnn": _ncnn_converted, "convert.coreml": _coreml_converted,
                "convert.litert": _litert_converted, "convert.litert_llm": _llm_exported,
                "quantize.litert_llm": _llm_quantized})


REASON_CHECKS: dict[str, Callable[..., None]] = {
    "convert.coreml": _coreml_structural,
    "prune.magnitude": _sparsity_reached,
    "prune.channels": _scored("score", "floor_score", 0.8),
    "prune.heads": _scored("score", "score_before_recovery", 0.9),
    "prune.ffn": _scored("score", "score_before_recovery", 0.9),
    "arch.depthwise": _scored("score_after_recovery", "score_before_recovery", 0.75),
    # a new network trained to match the input's outputs (no labels here): held-out cosine and contract-feed cosine
    "compress.ofa": _scored("val_accuracy", 0.8, 0.8),
    "distill": _scored("student_score", "student_score_before", 0.9),
    "quant.qat": _scored("score_qat_onnx", 0.9, 0.9),
    "convert.litert_llm": _top1_agrees(0.99),  # fp32: the same next tokens as the Hugging Face model
    "quantize.litert_llm": _top1_agrees(0.8),
}


# ------------------------------------------------------------------------------------- the tests
@pytest.mark.parametrize("name", sorted(registry()))
def test_every_pass_declares_a_tolerance_or_a_reason(name):
    cls = registry()[name]
    if cls.tolerance is not None:
        assert 0 < cls.tolerance <= 1, f"{name}: tolerance is a minimum cosine in (0, 1]"
    else:
        assert (cls.tolerance_reason or "").strip(), f"{name}: tolerance None needs a tolerance_reason"
        assert name in REASON_CHECKS, f"{name}: the contract checks what its tolerance_reason says: add a check"
    assert name in CASES and name in CHANGED, f"{name}: give it a fixture it transforms and a check of the change"


@pytest.mark.parametrize("name", sorted(registry()))
def test_pass_contract(name, request, tmp_path):
    cls = registry()[name]
    assert cls.name == name and cls.accepts, "a pass declares what it accepts"
    assert (cls.__doc__ or "").strip(), "a pass says what it does"
    assert name in CASES, f"{name}: no contract fixture"
    case = CASES[name]
    art = request.getfixturevalue(case.fixture)
    feeds = request.getfixturevalue(case.feeds)
    assert art.kind in cls.accepts, f"the {case.fixture} fixture is not a kind {name} accepts"
    before = content_sha256(art.kind, art.path) if art.path else None
    state_before = {k: v.clone() for k, v in art.module.state_dict().items()} if art.module is not None else None
    ctx = PassContext(stage_dir=tmp_path / "stage", calibration=feeds, evaluation=feeds)
    out = build_pass(name, case.config)(art, ctx)
    assert out.kind == (cls.produces or art.kind)
    if before is not None:
        assert content_sha256(art.kind, art.path) == before, "the input file is untouched"
    if state_before is not None:
        assert all((art.module.state_dict()[k] == v).all() for k, v in state_before.items()), "input module untouched"
    if out.path is not None:
        assert out.path.resolve().is_relative_to((tmp_path / "stage").resolve()), "outputs go to the stage folder"

    CHANGED[name](art, out, ctx, feeds)  # the fixture is one the pass applies to: it must change something
    ref, got = _outputs(art, feeds), _outputs(out, feeds)
    if got is not None:
        assert [r.shape for r in ref] == [g.shape for g in got], "outputs keep their shapes"
        assert all(np.isfinite(g).all() for g in got)
    if cls.tolerance is not None:
        worst = min(float(cosine_rows(r, g).min()) for r, g in zip(ref, got))
        assert worst >= cls.tolerance, f"{name}: min cosine {worst:.5f} < declared tolerance {cls.tolerance}"
    else:
        REASON_CHECKS[name](name, art, out, ctx, ref, got)
