"""Ledger: versioned JSON records written atomically; bad files get one line naming file and field."""

from __future__ import annotations

import json

import pytest

from edgeopt.errors import InputError
from edgeopt.ledger import SCHEMA_VERSION, Latency, Ledger, Stage


def _ledger() -> Ledger:
    lat = Latency(p50=1.0, p90=1.5, p99=2.0, mean=1.1, std=0.1, n=10, runtime="onnxruntime", threads=2)
    return Ledger(stages=[Stage(name="baseline"), Stage(name="q", **{"pass": "graph.quantize_dynamic"}, latency_ms=lat)])


def test_round_trip(tmp_path):
    led = _ledger()
    led.save(tmp_path / "ledger.json")
    back = Ledger.load(tmp_path)
    assert back.stage("q").pass_ == "graph.quantize_dynamic"
    assert back.stage("q").latency_ms.p90 == 1.5
    assert json.loads((tmp_path / "ledger.json").read_text())["stages"][1]["pass"] == "graph.quantize_dynamic"
    assert not list(tmp_path.glob(".ledger.json.*"))  # no temp file left behind


def test_latency_record_is_the_stats_summary_without_samples(tmp_path):
    from edgeopt.measure.latency import LatencyStats

    st = LatencyStats.from_samples([1.0, 2.0, 3.0])
    lat = Latency(**dict(st), runtime="onnxruntime", threads=2)
    assert isinstance(lat, LatencyStats) and lat.samples == (1.0, 2.0, 3.0)
    rec = Stage(name="s", latency_ms=lat).to_json()["latency_ms"]
    assert list(rec) == ["p50", "p90", "p99", "mean", "std", "n", "runtime", "threads", "batch", "shapes"]
    Ledger(stages=[Stage(name="s", latency_ms=lat)]).save(tmp_path / "ledger.json")
    back = Ledger.load(tmp_path).stage("s").latency_ms
    assert back.samples == () and back.to_dict() == st.to_dict()


def test_put_replaces_same_name():
    led = _ledger()
    led.put(Stage(name="q", status="failed", error="boom"))
    assert len(led.stages) == 2 and led.stage("q").status == "failed"


def test_missing_corrupt_partial_and_old(tmp_path):
    with pytest.raises(InputError, match="no such ledger"):
        Ledger.load(tmp_path / "x.json")
    p = tmp_path / "ledger.json"
    p.write_text('{"schema_version": 1, "stages": [')
    with pytest.raises(InputError, match="not valid JSON"):
        Ledger.load(p)
    p.write_text(json.dumps({"stages": []}))
    with pytest.raises(InputError, match="schema_version"):
        Ledger.load(p)
    p.write_text(json.dumps({"schema_version": 0, "stages": []}))
    with pytest.raises(InputError, match="schema version 0"):
        Ledger.load(p)
    p.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "stages": [{"status": "done"}]}))
    with pytest.raises(InputError, match=r"stages\.0\.name"):
        Ledger.load(p)
