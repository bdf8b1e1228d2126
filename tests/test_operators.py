"""The operator-optimizer facade: targets, config keys, analysis by operator family, and optimized artifacts."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeopt.errors import InputError
from edgeopt.operators import (OperatorOptimizer, OperatorType, OptimizationTarget, check_config, operator_type,
                               optimize_operators, recipe_for)


def test_targets_parse_by_value_or_name_and_unknown_is_an_error():
    assert OptimizationTarget.parse("cpu_avx2") is OptimizationTarget.CPU_AVX2
    assert OptimizationTarget.parse("CPU_AVX512") is OptimizationTarget.CPU_AVX512
    assert OptimizationTarget.parse("mobile-gpu") is OptimizationTarget.MOBILE_GPU
    with pytest.raises(InputError, match="unknown optimization target 'cpu_avx9'.*cpu_avx2"):
        OptimizationTarget.parse("cpu_avx9")


def test_config_keys_map_to_settings_and_unknown_keys_are_named():
    cfg = check_config({"cpu_threads": 8, "enable_fusion": False})
    r = recipe_for(OptimizationTarget.CPU_AVX2, cfg)
    assert r["measure"]["threads"] == 8 and r["target"] == "cpu-avx2"
    assert [next(iter(p)) for p in r["passes"]] == ["convert.onnx", "graph.quantize_dynamic"]  # no fusion
    with pytest.raises(InputError, match="unknown config key 'threads'"):
        check_config({"threads": 8})
    with pytest.raises(InputError, match="'cpu_threads': expected int"):
        check_config({"cpu_threads": "8"})


def test_each_target_gets_its_precision():
    kinds = {t: [next(iter(p)) for p in recipe_for(t, {})["passes"]][-1] for t in OptimizationTarget}
    assert kinds[OptimizationTarget.NPU] == "graph.quantize_static"
    assert kinds[OptimizationTarget.CUDA] == kinds[OptimizationTarget.MPS] == "graph.fp16"
    assert kinds[OptimizationTarget.MOBILE_GPU] == "graph.fp16"
    assert kinds[OptimizationTarget.CPU_AVX2] == kinds[OptimizationTarget.MOBILE_CPU] == "graph.quantize_dynamic"


def test_operator_families():
    assert operator_type("Conv") is OperatorType.CONV and operator_type("LSTM") is OperatorType.LSTM
    assert operator_type("com.microsoft.Attention") is OperatorType.ATTENTION
    assert operator_type("GRU") is OperatorType.GRU and operator_type("Foo") is OperatorType.OTHER


def _out(path, feed):
    s = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return s.run(None, feed)[0]


def test_optimize_operators_writes_a_quantized_model_close_to_the_original(tiny_mlp_onnx, tiny_mlp_feeds, tmp_path):
    out = tmp_path / "m.opt.onnx"
    res = optimize_operators(tiny_mlp_onnx.path, out, target="cpu", config={"cpu_threads": 1, "runs": 5})
    assert out.exists() and res["measured_here"] is True
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    if res["from_stage"] == "int8":  # the pipeline keeps the fastest stage that passes its gate
        assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    assert {s["stage"] for s in res["stages"]} >= {"baseline", "fused", "int8"}
    fam = res["analysis"]["operators"]
    dense = [fam.get(k, {"count": 0, "flops": 0}) for k in ("matmul", "gemm")]
    assert sum(e["count"] for e in dense) > 0
    assert sum(e["flops"] for e in dense) > 0  # FLOPs land on their family
    assert sum(e["flops_share"] for e in fam.values()) == pytest.approx(1.0, abs=0.01)
    feed = tiny_mlp_feeds[0]
    a, b = _out(tiny_mlp_onnx.path, feed).ravel(), _out(out, feed).ravel()
    assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.99


def test_a_gpu_target_gets_its_fp16_artifact_marked_not_measured(tiny_mlp_onnx, tmp_path):
    opt = OperatorOptimizer(tiny_mlp_onnx.path, OptimizationTarget.CUDA, {"cpu_threads": 1, "runs": 5})
    res = opt.apply_optimizations(tmp_path / "m.fp16.onnx")
    assert res["measured_here"] is False and "not measured here" in res["note"]
    m = onnx.load(str(tmp_path / "m.fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    meta = json.loads(opt.save_optimization_metadata(tmp_path / "meta.json").read_text())
    assert meta["target"] == "cuda" and meta["result"]["measured_here"] is False


def test_a_missing_model_is_a_one_line_error(tmp_path):
    with pytest.raises(InputError, match="no such model"):
        OperatorOptimizer(tmp_path / "nope.onnx")
