"""Per-node latency from ONNX Runtime's profiler: shares, names, warm-up exclusion, clean-up."""

from __future__ import annotations

import json

import onnx
import pytest

from edgeopt.analyze.profile import parse_trace, profile
from edgeopt.errors import InputError


def test_profile_cnn_unoptimized_names_exist(tiny_cnn_onnx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = profile(tiny_cnn_onnx.path, threads=1, runs=3, warmup=1, graph_optimization="none")
    json.dumps(r)
    names = {n.name for n in onnx.load(str(tiny_cnn_onnx.path)).graph.node}
    assert r["n_nodes"] == len(names)
    assert all(e["name"] in names and e["in_model"] for e in r["nodes"])
    assert abs(sum(e["share"] for e in r["nodes"]) + r["other"]["share"] - 1) < 1e-9
    assert abs(sum(o["share"] for o in r["op_types"]) - 1) < 1e-9
    assert {o["op_type"] for o in r["op_types"]} >= {"Conv", "Relu", "Gemm"}
    assert r["wall_ms"]["p50"] > 0 and r["node_total_ms"] > 0
    assert r["inputs"] == {"x": [1, 3, 16, 16]}
    assert not list(tmp_path.iterdir())  # no trace file left behind


def test_profile_bert_top_and_feeds(tiny_bert_onnx, tiny_bert_feeds):
    r = profile(tiny_bert_onnx, threads=1, runs=3, warmup=1, data=tiny_bert_feeds[:2], top=5)
    assert len(r["nodes"]) == 5 and r["other"]["nodes"] == r["n_nodes"] - 5
    assert abs(sum(e["share"] for e in r["nodes"]) + r["other"]["share"] - 1) < 1e-9
    ms = [e["ms"] for e in r["nodes"]]
    assert ms == sorted(ms, reverse=True)
    assert r["inputs"]["input_ids"] == [1, 16]


def test_profile_random_inputs_at_seq_len(tiny_bert_onnx):
    r = profile(tiny_bert_onnx.path, threads=1, runs=2, warmup=0, seq_len=8, batch=2)
    assert r["inputs"]["input_ids"] == [2, 8] and r["n_nodes"] > 0


def test_parse_trace_skips_warmup_runs():
    def run(ts):
        return {"cat": "Session", "name": "model_run", "ts": ts, "dur": 100}

    def node(ts, dur, name="n1", op="MatMul"):
        return {"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur, "args": {"op_name": op}}

    events = [run(0), node(10, 1000), run(200), node(210, 30), node(220, 5, "n2", "Add"), run(400), node(410, 50),
              {"cat": "Node", "name": "n1_fence_before", "ts": 411, "dur": 0}]
    nodes, runs = parse_trace(events, runs=2)
    assert nodes["n1"]["us"] == 80 and nodes["n1"]["op_type"] == "MatMul"  # the warm-up's 1000 µs excluded
    assert nodes["n2"]["us"] == 5
    assert runs == [100.0, 100.0]


def test_profile_refuses_bad_options(tiny_cnn_onnx):
    with pytest.raises(InputError):
        profile(tiny_cnn_onnx.path, graph_optimization="max")
    with pytest.raises(InputError):
        profile(tiny_cnn_onnx.path, runs=0)
