"""The pipeline: stages run and are measured, the ledger is written, failures stop it, --resume reuses."""

from __future__ import annotations

import json

import pytest

from edgeopt.errors import PassError
from edgeopt.ledger import Ledger
from edgeopt.pipeline import optimize

RECIPE = {
    "target": "cpu-avx512-vnni",
    "data": {"calibration": "random:8", "eval": "random:6"},
    "passes": [{"convert.onnx": {"stage": "onnx"}}, {"graph.quantize_dynamic": {"stage": "int8"}}],
    "measure": {"threads": 1, "seq_len": 16, "warmup": 1, "runs": 3, "memory": False},
    "gates": {"min_cosine": 0.9},
}


def test_run_writes_ledger_report_and_best(tmp_path, tiny_bert_torch):
    res = optimize(tiny_bert_torch, recipe=RECIPE, out=tmp_path / "run", progress=False)
    led = Ledger.load(tmp_path / "run")
    assert [s.name for s in led.stages] == ["baseline", "onnx", "int8"]
    assert led.stage("baseline").latency_ms.runtime == "torch"
    assert led.stage("int8").latency_ms.runtime == "onnxruntime"
    for s in led.stages:
        assert s.latency_ms.n >= 3 and s.fidelity["min_cosine"] > 0.9 and s.gate.passed
        assert s.energy_mj.method
    assert led.stage("onnx").fidelity["min_cosine"] > 0.9999
    assert led.stage("int8").artifact["size_bytes"] < led.stage("onnx").artifact["size_bytes"]
    assert led.best in ("onnx", "int8") and (res.best / "model.onnx").exists()
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert meta["passes"][1]["pass"] == "graph.quantize_dynamic" and "onnxruntime" in meta["versions"]
    assert "| int8 |" in (tmp_path / "run" / "report.md").read_text().replace(" ★", "")


def test_failed_gate_never_best(tmp_path, tiny_bert_torch):
    recipe = {**RECIPE, "gates": {"min_cosine": 0.99999999}}
    res = optimize(tiny_bert_torch, recipe=recipe, out=tmp_path / "run", progress=False)
    assert not res.ledger.stage("int8").gate.passed and res.ledger.best != "int8"


def test_failure_marks_stage_and_resume_reuses(tmp_path, tiny_bert_torch, monkeypatch):
    from edgeopt.passes.graph import quantize

    def boom(self, art, ctx):
        raise RuntimeError("quantizer exploded\nsecond line")

    monkeypatch.setattr(quantize.QuantizeDynamic, "run", boom)
    out = tmp_path / "run"
    with pytest.raises(PassError, match="stage int8 .* failed: RuntimeError: quantizer exploded$"):
        optimize(tiny_bert_torch, recipe=RECIPE, out=out, progress=False)
    led = Ledger.load(out)
    assert led.stage("onnx").status == "done" and led.stage("int8").status == "failed"
    assert not (out / "best").exists()
    monkeypatch.undo()
    res = optimize(tiny_bert_torch, recipe=RECIPE, out=out, resume=True, progress=False)
    assert res.ledger.stage("onnx").notes.get("cached") is True
    assert res.ledger.stage("int8").status == "done" and not res.ledger.stage("int8").notes.get("cached")


def test_accuracy_from_labelled_data(tmp_path, tiny_mlp_torch, monkeypatch):
    import numpy as np

    from edgeopt import data as data_mod

    real = data_mod.resolve

    def labelled(spec, art, **kw):
        feeds = real(spec, art, **kw)
        return [{**f, data_mod.LABEL_KEY: np.array([i % 8, (i + 1) % 8])} for i, f in enumerate(feeds)]

    monkeypatch.setattr(data_mod, "resolve", labelled)
    recipe = {"data": {"calibration": "random:4", "eval": "random:6"}, "passes": ["convert.onnx"],
              "measure": {"threads": 1, "warmup": 1, "runs": 3, "memory": False}, "gates": {"max_accuracy_drop": 0.5}}
    res = optimize(tiny_mlp_torch, recipe=recipe, out=tmp_path / "run", progress=False)
    base, onnx_stage = res.ledger.stage("baseline"), res.ledger.stage("convert.onnx")
    assert 0.0 <= base.accuracy["top1"] <= 1.0
    assert onnx_stage.accuracy["top1"] == base.accuracy["top1"]  # same model, same predictions
    assert onnx_stage.fidelity["accuracy_drop"] == 0.0 and onnx_stage.gate.passed


def test_report_html_has_per_layer_profile(tmp_path, tiny_bert_torch):
    optimize(tiny_bert_torch, recipe=RECIPE, out=tmp_path / "run", progress=False)
    html = (tmp_path / "run" / "report.html").read_text()
    assert "onnx" in html and "int8" in html
    assert "/encoder/" in html or "Attention" in html or "MatMul" in html  # per-layer rows from the profiler
