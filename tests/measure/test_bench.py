"""Bench: one shared feed, interleaved timing, speedups with paired intervals, table and JSON."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from edgeopt.errors import InputError
from edgeopt.measure import bench as bench_mod
from edgeopt.measure.bench import BenchResult, bench, render, summarize
from edgeopt.measure.latency import LatencyStats


def test_speedup_is_first_p50_over_p50():
    base = LatencyStats.from_samples([10.0] * 20)
    half = LatencyStats.from_samples([5.0] * 20)
    s = summarize({"base": base, "fast": half})
    assert (s["base"]["speedup"], s["base"]["speedup_lo"], s["base"]["speedup_hi"]) == (1.0, 1.0, 1.0)
    assert (s["fast"]["speedup"], s["fast"]["speedup_lo"], s["fast"]["speedup_hi"]) == (2.0, 2.0, 2.0)
    assert s["fast"]["p50"] == 5.0 and s["fast"]["n"] == 20


def test_bench_rows_from_fake_timings(tiny_mlp_onnx, tiny_mlp_torch, monkeypatch):
    """The measured samples reach the rows unchanged: p50, std and speedup come from them."""
    def fake_measure(runners, feed, warmup, runs, progress=None):
        assert list(runners) == [str(tiny_mlp_onnx.path), "module:Sequential"]
        assert feed["x"].shape == (1, 16) and runs == 4 and warmup == 2
        return {list(runners)[0]: LatencyStats.from_samples([8.0, 8.0, 12.0, 12.0]),
                list(runners)[1]: LatencyStats.from_samples([2.0, 2.0, 3.0, 3.0])}

    monkeypatch.setattr(bench_mod, "measure_interleaved", fake_measure)
    res = bench([tiny_mlp_onnx, tiny_mlp_torch], threads=1, runs=4, warmup=2)
    a, b = res.rows
    assert (a.p50, a.speedup, a.runtime, a.kind) == (10.0, 1.0, "onnxruntime", "onnx")
    assert (b.p50, b.speedup, b.runtime, b.kind) == (2.5, 4.0, "torch", "torch")
    assert b.std == pytest.approx(np.std([2, 2, 3, 3], ddof=1))
    assert b.speedup_lo == b.speedup_hi == 4.0  # every round is exactly 4x
    assert b.cosine == pytest.approx(1.0, abs=1e-5)  # torch vs its ONNX export on the bench feed


def test_bench_real_models_end_to_end(tiny_mlp_onnx, tiny_mlp_torch):
    res = bench([tiny_mlp_onnx, tiny_mlp_torch, tiny_mlp_onnx], threads=1, runs=5, warmup=1)
    assert isinstance(res, BenchResult)
    assert [r.name for r in res.rows] == [str(tiny_mlp_onnx.path), "module:Sequential", f"{tiny_mlp_onnx.path} #2"]
    assert res.rows[0].speedup == 1.0
    assert all(r.n == 5 and r.p50 > 0 and r.speedup_lo <= r.speedup <= r.speedup_hi for r in res.rows)
    assert res.rows[2].cosine == pytest.approx(1.0)
    assert res.shapes == {"x": [1, 16]} and res.threads == 1
    assert "onnxruntime" in res.versions and "torch" in res.versions
    d = json.loads(json.dumps(res.to_json()))
    assert [r["name"] for r in d["rows"]] == [r.name for r in res.rows]
    assert len(d["samples"][res.rows[1].name]) == 5
    assert set(d["rows"][0]) == {"name", "kind", "runtime", "threads", "p50", "p90", "p99", "mean", "std", "n",
                                 "speedup", "speedup_lo", "speedup_hi", "size_bytes", "cosine"}


def test_render_table(tiny_mlp_onnx):
    from rich.console import Console

    res = bench([tiny_mlp_onnx, tiny_mlp_onnx], threads=1, runs=3, warmup=0)
    table = render(res)
    assert table.row_count == 2
    out = io.StringIO()
    Console(file=out, width=200).print(table)
    text = out.getvalue()
    assert "speedup vs first" in text and "1.00x" in text and "threads 1" in text and "x (1, 16)" in text


def test_bench_uses_given_data(tiny_mlp_onnx, tmp_path):
    x = np.arange(2 * 3 * 16, dtype=np.float32).reshape(6, 16)
    np.savez(tmp_path / "d.npz", x=x)
    res = bench([tiny_mlp_onnx], threads=1, runs=3, warmup=0, data=str(tmp_path / "d.npz"), batch=2)
    assert res.shapes == {"x": [2, 16]} and res.data.endswith("d.npz")


def test_mismatching_inputs_name_the_input(tiny_mlp_onnx, tiny_cnn_onnx, tiny_bert_onnx):
    with pytest.raises(InputError) as e:
        bench([tiny_mlp_onnx, tiny_cnn_onnx], runs=3)
    assert "input 'x'" in str(e.value) and "(batch, 16)" in str(e.value) and "(batch, 3, 16, 16)" in str(e.value)
    with pytest.raises(InputError, match="input 'input_ids'"):
        bench([tiny_bert_onnx, tiny_mlp_onnx], runs=3)
    with pytest.raises(InputError, match="no models"):
        bench([], runs=3)
    with pytest.raises(InputError, match="is text, but no model given carries a tokenizer"):
        bench([tiny_bert_onnx], runs=3, data="zoo:sentences[0:4]")


def test_bench_loads_paths(tiny_mlp_onnx):
    res = bench([str(tiny_mlp_onnx.path)], threads=1, runs=3, warmup=0)
    assert res.rows[0].name == str(tiny_mlp_onnx.path) and res.rows[0].n == 3
    with pytest.raises(InputError, match="no such file"):
        bench([str(tiny_mlp_onnx.path) + ".missing"], runs=3)


def test_bench_feeds_a_litert_model_its_own_integer_width(tmp_path):
    """litert-torch stores int64 token ids as int32: bench times the ONNX file (int64) and the LiteRT file (int32)
    on one feed, in either order, and still refuses a dtype of another kind."""
    pytest.importorskip("litert_torch")
    import torch

    from edgeopt.artifact import Artifact, InputSpec, TensorSpec
    from edgeopt.measure.bench import bench, check_same_inputs
    from edgeopt.passes.base import PassContext, build_pass

    class Emb(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 8)
            self.lin = torch.nn.Linear(8, 4)

        def forward(self, input_ids):
            return self.lin(self.emb(input_ids)).mean(dim=1)

    from edgeopt.load import load_model

    torch.manual_seed(0)
    art = load_model(Emb().eval(), {"input_ids": torch.randint(0, 50, (1, 6))})
    onnx_art = build_pass("convert.onnx", {})(art, PassContext(stage_dir=tmp_path / "onnx"))
    tfl = build_pass("convert.litert", {"quantize": "none"})(art, PassContext(stage_dir=tmp_path / "litert"))
    tfl = Artifact.from_file("tflite", tfl.path)  # as a user's file: inputs read from it
    assert tfl.input_spec.inputs[0].dtype == "int32" and onnx_art.input_spec.inputs[0].dtype == "int64"
    data = tmp_path / "ids.npz"
    np.savez(data, input_ids=np.arange(6, dtype=np.int64)[None] * 7)
    for order in ((onnx_art, tfl), (tfl, onnx_art)):
        res = bench(list(order), runs=3, warmup=1, data=str(data), seq_len=6)
        assert res.rows[1].cosine is not None and res.rows[1].cosine > 0.9999
    floaty = Artifact.from_file("tflite", tfl.path, input_spec=InputSpec((TensorSpec("input_ids", "float32", (1, 6)),)))
    with pytest.raises(InputError, match="input 'input_ids'.*int64.*float32"):
        check_same_inputs([("onnx", onnx_art), ("tflite", floaty)])
