"""Diagnosis of a stage against its parent: per-op diff, precision that ran, Q/DQ, float fallback, hardware facts.

Host-independent: the targets are declared and the GEMM peaks given, so nothing depends on this CPU's flags,
and no test asserts which model is faster.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from edgeopt.analyze.diagnose import Diagnosis, diagnose
from edgeopt.artifact import Artifact
from edgeopt.errors import InputError
from edgeopt.measure.peaks import GemmPeaks
from edgeopt.target import get_target

PEAKS = GemmPeaks(fp32_gflops=188.0, int8_gops=202.0, ratio=1.074, threads=1, size=512, fp32_ms=1.43, int8_ms=1.33,
                  fp32_p50_ms=1.5, int8_p50_ms=1.4, runs=20, int8_kernel="DynamicQuantizeMatMul",
                  cpu_model="test CPU", isa=("avx", "avx2", "fma"), onnxruntime="1.0", measured_at=0.0)


@pytest.fixture(scope="module")
def mlp_int8(tmp_path_factory, tiny_mlp_onnx):
    """The tiny MLP (Linear, GELU, LayerNorm, Linear) through graph.quantize_dynamic for an AVX2 target."""
    from edgeopt.passes.base import PassContext, build_pass

    ctx = PassContext(stage_dir=tmp_path_factory.mktemp("int8"), target=get_target("cpu-avx2"))
    return build_pass("graph.quantize_dynamic", {})(tiny_mlp_onnx, ctx)


@pytest.fixture(scope="module")
def mlp_qdq(tmp_path_factory, tiny_mlp_onnx, tiny_mlp_feeds):
    """The tiny MLP statically quantized in QDQ form."""
    from edgeopt.passes.base import PassContext, build_pass

    ctx = PassContext(stage_dir=tmp_path_factory.mktemp("qdq"), calibration=tiny_mlp_feeds)
    return build_pass("graph.quantize_static", {"format": "QDQ", "samples": 8})(tiny_mlp_onnx, ctx)


def _line(d: Diagnosis, prefix: str) -> str:
    found = [ln for ln in d.lines if ln.startswith(prefix)]
    assert len(found) == 1, f"one {prefix!r} line expected in:\n" + "\n".join(d.lines)
    return found[0]


def test_int8_stage_on_avx2_target(tiny_mlp_onnx, mlp_int8, tiny_mlp_feeds):
    d = diagnose(tiny_mlp_onnx, mlp_int8, get_target("cpu-avx2"), feed=tiny_mlp_feeds[0], threads=1,
                 speedup=(0.98, 0.95, 1.01), peaks=PEAKS, spinning=True, stage_name="int8", parent_name="onnx",
                 runs=5, warmup=1)
    assert (d.stage, d.parent) == ("int8", "onnx")
    assert d.summary.startswith("int8 vs onnx (0.98×, 95% CI 0.95–1.01): no VNNI")
    # per-op diff: the float Gemms left, the int8 kernels came
    diff = {r["op_type"]: r for r in d.facts["op_diff"]}
    assert diff["DynamicQuantizeMatMul"]["parent_nodes"] == 0 and diff["DynamicQuantizeMatMul"]["stage_nodes"] == 2
    assert "DynamicQuantizeMatMul" in _line(d, "op time vs parent (ONNX Runtime profiler, 5 runs, 1 thread)")
    # precision that ran, and where
    prec = _line(d, "precision (ONNX Runtime kernels that ran)")
    assert "2 of 2 MatMul-like ops ran in int8 (DynamicQuantizeMatMul ×2), 0 ran in float" in prec
    assert "CPUExecutionProvider" in prec
    assert d.facts["precision"]["int8"] == 2 and d.facts["precision"]["matmul_like"] == 2
    assert _line(d, "Q/DQ:").startswith("Q/DQ: none left")
    # LayerNormalization has no int8 kernel: it ran in float
    fb = _line(d, "float fallback:")
    assert "LayerNormalization ×1" in fb
    assert "LayerNormalization" in {r["op_type"] for r in d.facts["float_fallback"]}
    # hardware facts: the declared AVX2 target has no VNNI
    hw = [ln for ln in d.lines if ln.startswith("hardware: no VNNI (AVX2 only) on target cpu-avx2")]
    assert len(hw) == 1 and "int8 only saves memory bandwidth" in hw[0]
    assert any("202 GOP/s" in ln and "188 GFLOP/s" in ln for ln in d.lines)  # the measured peaks are quoted
    assert any(ln.startswith("hardware: reduce_range on") for ln in d.lines)
    assert "spinning on" in _line(d, "threads: 1 intra-op thread")
    assert d.facts["hardware"]["has_vnni"] is False
    back = json.loads(d.to_json())
    assert back["summary"] == d.summary and back["lines"] == list(d.lines) and back["facts"]["gemm_peaks"]["ratio"] == 1.074


def test_int8_stage_on_vnni_target(tiny_mlp_onnx, mlp_int8, tiny_mlp_feeds):
    d = diagnose(tiny_mlp_onnx, mlp_int8, get_target("cpu-avx512-vnni"), feed=tiny_mlp_feeds[0], threads=1,
                 peaks=PEAKS, runs=5, warmup=1)
    text = "\n".join(d.lines)
    assert "hardware: VNNI present (avx512_vnni) on target cpu-avx512-vnni" in text
    assert "no VNNI" not in text and "no VNNI" not in d.summary and "reduce_range" not in text
    assert "202 GOP/s" in text  # quoted either as the target's or as this machine's
    assert d.facts["hardware"]["has_vnni"] is True


def test_qdq_left_unfused_around_float_ops(tiny_mlp_onnx, mlp_qdq, tiny_mlp_feeds):
    d = diagnose(tiny_mlp_onnx, mlp_qdq, "cpu-avx512-vnni", feed=tiny_mlp_feeds[0], threads=1, peaks=PEAKS,
                 runs=5, warmup=1)
    qdq = d.facts["qdq"]
    assert qdq["left"] > 0 and "LayerNormalization" in qdq["around"]
    line = _line(d, "Q/DQ:")
    assert "left unfused in ONNX Runtime's optimized graph" in line and "LayerNormalization" in line
    assert d.facts["precision"]["int8"] >= 1
    assert "Q/DQ nodes unfused" in d.summary


def test_parent_torch_is_not_profiled_but_stage_is(tiny_mlp_torch, tiny_mlp_onnx, tiny_mlp_feeds):
    d = diagnose(tiny_mlp_torch, tiny_mlp_onnx, "cpu-avx2", feed=tiny_mlp_feeds[0], threads=1, runs=3, warmup=1)
    assert any(ln.startswith("not profiled: parent") and "torch" in ln for ln in d.lines)
    assert "op_diff" not in d.facts
    assert "0 of 2 MatMul-like ops ran in int8" in _line(d, "precision")
    assert "gemm_peaks" not in d.facts  # no int8 involved: nothing measured
    assert "parent not profiled" in d.summary


@pytest.fixture(scope="module")
def mlp_litert(tmp_path_factory, tiny_mlp_torch):
    """The tiny MLP converted to LiteRT: dynamic int8 and weight-only int8."""
    pytest.importorskip("litert_torch")
    from edgeopt.passes.base import PassContext, build_pass

    return {q: build_pass("convert.litert", {"quantize": q, "min_cosine": 0.9})(
        tiny_mlp_torch, PassContext(stage_dir=tmp_path_factory.mktemp(q)))
        for q in ("dynamic_int8", "weight_only_int8")}


def test_litert_int8_stage_reads_its_precision_from_the_file_and_names_the_missing_vnni(
        tiny_mlp_onnx, mlp_litert, tiny_mlp_feeds):
    """LiteRT has no per-op profiler in Python: the stage's precision comes from its file, and a dynamic-int8 stage
    gets the hardware facts of an int8 stage (no VNNI on the AVX2 target, the measured GEMM peaks)."""
    d = diagnose(tiny_mlp_onnx, mlp_litert["dynamic_int8"], "cpu-avx2", feed=tiny_mlp_feeds[0], threads=1,
                 speedup=(1.06, 1.05, 1.07), peaks=PEAKS, stage_name="litert", parent_name="onnx", runs=3, warmup=1)
    assert "LiteRT has no per-op profiler" in _line(d, "not profiled: stage litert (tflite)")
    prec = _line(d, "precision (LiteRT file: the types each op reads)")
    assert "2 of 2 MatMul-like ops ran in int8 (FULLY_CONNECTED (int8 weights, dynamic int8 activations) ×2)" in prec
    assert d.facts["precision"]["int8"] == 2 and "op_diff" not in d.facts
    assert d.summary.startswith("litert vs onnx (1.06×, 95% CI 1.05–1.07): no VNNI")
    assert any(ln.startswith("hardware: no VNNI (AVX2 only) on target cpu-avx2") for ln in d.lines)
    assert any("202 GOP/s" in ln and "188 GFLOP/s" in ln for ln in d.lines)
    assert not any(ln.startswith("hardware: reduce_range") for ln in d.lines), "an ONNX Runtime setting"
    w = diagnose(tiny_mlp_onnx, mlp_litert["weight_only_int8"], "cpu-avx2", feed=tiny_mlp_feeds[0], threads=1,
                 peaks=PEAKS, runs=3, warmup=1)
    assert "0 of 2 MatMul-like ops ran in int8" in _line(w, "precision (LiteRT file")
    assert not any("no VNNI" in ln for ln in w.lines), "weight-only int8 computes in float: no int8 facts"


def test_unreadable_stage_is_recorded_not_raised(tiny_mlp_onnx, tiny_mlp_feeds, tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a model")
    art = Artifact(kind="onnx", path=bad, input_spec=tiny_mlp_onnx.input_spec, sha256="0" * 64, size_bytes=11)
    d = diagnose(tiny_mlp_onnx, art, "cpu-avx2", feed=tiny_mlp_feeds[0], threads=1, runs=2, warmup=0)
    assert any(ln.startswith("not profiled: stage") for ln in d.lines)
    assert "stage not profiled" in d.summary
    json.loads(d.to_json())


def test_openvino_int8_precision_from_runtime_model(tiny_mlp_onnx, mlp_qdq, tiny_mlp_feeds, tmp_path):
    from edgeopt.passes.base import PassContext, build_pass

    conv = build_pass("convert.openvino", {"precision": "f32"})
    ov = conv(tiny_mlp_onnx, PassContext(stage_dir=tmp_path / "f32"))
    ov_int8 = conv(mlp_qdq, PassContext(stage_dir=tmp_path / "int8"))  # OpenVINO reads QDQ as FakeQuantize
    d = diagnose(ov, ov_int8, "cpu-avx2", feed=tiny_mlp_feeds[0], threads=1, peaks=PEAKS, runs=5, warmup=1)
    assert "OpenVINO perf counters" in _line(d, "op time vs parent")
    prec = d.facts["precision"]
    assert prec["matmul_like"] == 2 and prec["int8"] >= 1 and prec["int8"] + prec["float"] == 2
    assert _line(d, "precision (OpenVINO runtime model)")
    assert any(ln.startswith("hardware: no VNNI") for ln in d.lines)

    bf16 = dataclasses.replace(ov, meta={**ov.meta, "openvino": {"precision": "bf16"}})
    d = diagnose(ov, bf16, "cpu-avx2", feed=tiny_mlp_feeds[0], threads=1, runs=3, warmup=1)
    assert any(ln.startswith("hardware: no bf16 units on target cpu-avx2") for ln in d.lines)
    assert d.summary.split(": ", 1)[1].startswith("no bf16 units")


def test_peaks_measured_when_not_given(tiny_mlp_onnx, mlp_int8, tiny_mlp_feeds, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))
    d = diagnose(tiny_mlp_onnx, mlp_int8, "cpu-avx2", feed=tiny_mlp_feeds[0], threads=1, runs=3, warmup=1)
    assert d.facts["gemm_peaks"]["int8_kernel"] == "DynamicQuantizeMatMul"
    assert len(list((tmp_path / "peaks").iterdir())) == 1


def test_profile_cache_reuses_the_parent(tiny_mlp_onnx, mlp_int8, mlp_qdq, tiny_mlp_feeds):
    cache: dict = {}
    kw = dict(feed=tiny_mlp_feeds[0], threads=1, peaks=PEAKS, runs=3, warmup=1, profile_cache=cache)
    diagnose(tiny_mlp_onnx, mlp_int8, "cpu-avx2", **kw)
    assert len(cache) == 2
    diagnose(tiny_mlp_onnx, mlp_qdq, "cpu-avx2", **kw)
    assert len(cache) == 3


@pytest.mark.parametrize("bad", [{"threads": 0}, {"feed": {}}, {"feed": {"x": [1.0]}}, {"speedup": (1.0, 2.0)},
                                 {"speedup": (1.0, -1.0, 2.0)}, {"target": "tpu"}, {"runs": 0}, {"peaks": {}}])
def test_bad_arguments(tiny_mlp_onnx, mlp_int8, tiny_mlp_feeds, bad):
    kw = dict(target="cpu-avx2", feed=tiny_mlp_feeds[0], threads=1, peaks=PEAKS)
    kw.update(bad)
    target = kw.pop("target")
    with pytest.raises(InputError):
        diagnose(tiny_mlp_onnx, mlp_int8, target, **kw)
    with pytest.raises(InputError):
        diagnose("parent.onnx", mlp_int8, "cpu-avx2", feed=tiny_mlp_feeds[0], threads=1)


@pytest.mark.parametrize("kernel, named", [("jit_gemm_I8", True), ("brgemm_avx512_I8", False)])
def test_openvino_int8_on_its_generic_gemm_is_named_in_the_summary(tiny_mlp_onnx, mlp_qdq, tiny_mlp_feeds, tmp_path,
                                                                 monkeypatch, kernel, named):
    """Without VNNI OpenVINO runs int8 FullyConnected layers on jit_gemm (MiniLM: 0.75x its fp32 root), with it on
    brgemm: the kernel each int8 layer ran with, read from the runtime model, goes into the summary when generic."""
    import edgeopt.analyze.diagnose as dg
    from edgeopt.passes.base import PassContext, build_pass

    conv = build_pass("convert.openvino", {"precision": "f32"})
    ov = conv(tiny_mlp_onnx, PassContext(stage_dir=tmp_path / "f32"))
    ov_int8 = conv(mlp_qdq, PassContext(stage_dir=tmp_path / "int8"))
    real = dg._profile_openvino

    def as_kernel(*a, **k):
        p = real(*a, **k)
        for n in p["nodes"]:
            if n["precision"] == "int8" and n["op_type"] in dg.OV_MATMUL_LIKE:
                n["exec_type"] = kernel
        return p

    monkeypatch.setattr(dg, "_profile_openvino", as_kernel)
    d = diagnose(ov, ov_int8, "cpu-avx2", feed=tiny_mlp_feeds[0], threads=1, peaks=PEAKS, runs=3, warmup=1,
                 speedup=(0.75, 0.74, 0.76))
    n = d.facts["precision"]["int8"]
    assert n >= 1 and kernel in _line(d, "precision (OpenVINO runtime model)")
    assert (f"{n} of {n} int8 MatMul-like ops on OpenVINO's generic jit_gemm kernels, not brgemm" in d.summary) is named
