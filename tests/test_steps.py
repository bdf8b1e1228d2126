"""The stage cache: content-addressed folders written whole, reused when intact, rebuilt when torn."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort

from edgeopt.passes.base import PassContext
from edgeopt.steps import DONE_FILE, StageCache, cache_key, load_portable, portable


def test_build_then_get_reuses_the_stored_stage(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    cache = StageCache(tmp_path / "cas")
    key = cache_key(tiny_mlp_onnx.sha256, "graph.quantize_dynamic", {}, "data", "cpu")
    ctx = PassContext(stage_dir=tmp_path / "unused")
    art, rec = cache.build(key, "graph.quantize_dynamic", {}, tiny_mlp_onnx, ctx)
    assert art.path.parent == cache.folder(key) and (cache.folder(key) / DONE_FILE).is_file()
    ops = {n.op_type for n in __import__("onnx").load(str(art.path)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}  # structurally quantized
    assert art.size_bytes < tiny_mlp_onnx.size_bytes
    f = tiny_mlp_feeds[0]
    a = ort.InferenceSession(str(tiny_mlp_onnx.path)).run(None, f)[0]
    b = ort.InferenceSession(str(art.path)).run(None, f)[0]
    cos = (a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b)
    assert cos > 0.99  # numerically the same model
    again = cache.get(key, tiny_mlp_onnx, ctx)
    assert again is not None and again[0].sha256 == art.sha256 and again[1]["key"] == key
    assert not list((tmp_path / "cas").glob(".*"))  # no temporary folder left


def test_a_torn_stage_is_not_reused(tmp_path, tiny_mlp_onnx):
    cache = StageCache(tmp_path / "cas")
    key = cache_key(tiny_mlp_onnx.sha256, "graph.simplify", {}, "d", "cpu")
    art, _ = cache.build(key, "graph.simplify", {}, tiny_mlp_onnx, PassContext(stage_dir=tmp_path / "x"))
    art.path.write_bytes(art.path.read_bytes()[:100])
    assert cache.get(key, tiny_mlp_onnx, PassContext(stage_dir=tmp_path / "x")) is None
    rec = json.loads((cache.folder(key) / DONE_FILE).read_text())
    assert rec["pass"] == "graph.simplify"


def test_portable_descriptions_load_in_another_process_by_path(tiny_mlp_onnx):
    desc = portable(tiny_mlp_onnx)
    assert json.loads(json.dumps(desc)) == desc
    assert load_portable(desc).sha256 == tiny_mlp_onnx.sha256


def test_first_line_skips_lines_that_only_introduce_the_reason():
    from edgeopt.errors import first_line

    e = RuntimeError("Exception from src/inference/src/cpp/infer_request.cpp:224:\n"
                     "Check 'is_dynamic' failed at src/plugins/intel_cpu/src/infer_request.cpp:669:\n"
                     "The input tensor size is not equal to the model input type: got [8,1] expecting [16,1].\n\n")
    assert first_line(e) == "The input tensor size is not equal to the model input type: got [8,1] expecting [16,1]."
    assert first_line(ValueError("plain\nsecond")) == "plain" and first_line(KeyError()) == "KeyError"
