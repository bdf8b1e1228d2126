"""Op census, parameter count, model facts, and the analyze() report as a whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeopt.analyze import analyze
from edgeopt.analyze.census import model_info, op_census, param_stats
from edgeopt.errors import InputError


def _load(art):
    import onnx

    return onnx.load(str(art.path))


def test_census_counts_tiny_mlp(tiny_mlp_onnx):
    model = _load(tiny_mlp_onnx)
    census = op_census(model)
    assert census["Gemm"] == 2
    assert census["LayerNormalization"] == 1
    assert census["Erf"] == 1
    assert sum(census.values()) == len(model.graph.node)
    counts = list(census.values())
    assert counts == sorted(counts, reverse=True)


def test_census_counts_tiny_cnn(tiny_cnn_onnx):
    census = op_census(_load(tiny_cnn_onnx))
    assert census["Conv"] == 2 and census["Relu"] == 2 and census["Gemm"] == 1


def test_census_prefixes_non_default_domains():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Gelu", ["r"], ["y"], domain="com.microsoft")]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]))
    assert op_census(model) == {"Relu": 1, "com.microsoft.Gelu": 1}


def test_param_count_matches_torch(tiny_mlp_onnx, tiny_mlp_torch):
    stats = param_stats(_load(tiny_mlp_onnx))
    torch_count = sum(p.numel() for p in tiny_mlp_torch.module.parameters())
    assert stats["count"] == torch_count  # scalar constants (sqrt 2, 0.5, 1) are not parameters
    assert stats["by_dtype"]["float32"]["bytes"] >= 4 * torch_count
    assert stats["bytes"] == sum(r["bytes"] for r in stats["by_dtype"].values())


def test_param_bytes_by_dtype():
    inits = [numpy_helper.from_array(np.zeros((4, 8), np.int8), "w8"),
             numpy_helper.from_array(np.zeros((8,), np.float16), "b16"),
             numpy_helper.from_array(np.array([1, 2], np.int64), "shape")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y], inits))
    stats = param_stats(model)
    assert stats["count"] == 32 + 8  # int64 shape constants are not parameters
    assert stats["by_dtype"]["int8"] == {"count": 32, "bytes": 32, "tensors": 1}
    assert stats["by_dtype"]["float16"]["bytes"] == 16
    assert stats["by_dtype"]["int64"]["bytes"] == 16
    assert stats["bytes"] == 32 + 16 + 16


def test_model_info(tiny_cnn_onnx):
    info = model_info(_load(tiny_cnn_onnx), tiny_cnn_onnx.path)
    assert info["opset"] == 13
    assert info["ir_version"] > 0
    assert info["producer"].startswith("pytorch")
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 3, 16, 16]}]


def test_analyze_report_is_json_and_complete(tiny_bert_onnx):
    report = analyze(tiny_bert_onnx.path, seq_len=16)
    json.dumps(report)  # serializable as is
    for key in ("model", "census", "params", "flops", "memory", "opportunities", "quantizable_flops_share",
                "no_int8_ops", "suggested_passes", "warnings"):
        assert key in report
    assert report["model"]["opset"] == 17 and report["model"]["path"] == str(tiny_bert_onnx.path)
    assert report["shapes"]["dims"] == {"batch": 1, "sequence": 16}
    assert report["flops"]["total"] > 0 and not report["flops"]["unestimated"]
    assert report["memory"]["weight_bytes"] == report["params"]["bytes"]
    assert 0.8 < report["quantizable_flops_share"] <= 1.0


def test_analyze_takes_an_artifact_and_exports_torch(tiny_cnn_onnx, tiny_mlp_torch):
    assert analyze(tiny_cnn_onnx, target=None)["census"]["Conv"] == 2
    report = analyze(tiny_mlp_torch, target=None, batch=2)
    assert report["model"]["exported_from"] == "torch"
    assert report["census"]["Gemm"] == 2
    # Linear(16, 64) and Linear(64, 8) at batch 2: 2 * 2 * (16*64 + 64*8) MAC flops + bias adds
    gemm = report["flops"]["by_op_type"]["Gemm"]
    assert gemm["macs"] == 2 * (16 * 64 + 64 * 8)
    assert gemm["flops"] == 2 * gemm["macs"] + 2 * (64 + 8)


def test_analyze_corrupt_file_is_input_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 3)
    with pytest.raises(InputError):
        analyze(bad, target=None)
    with pytest.raises(InputError):
        analyze(tmp_path / "missing.onnx", target=None)


def test_edgeopt_analyze_callable_after_submodule_import(tiny_cnn_onnx):
    import edgeopt
    import edgeopt.analyze.render  # noqa: F401  (rebinds the attribute edgeopt.analyze to the package)

    assert edgeopt.analyze(tiny_cnn_onnx.path, target=None)["census"]["Conv"] == 2
