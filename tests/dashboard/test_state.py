"""Dashboard state: its config, run discovery, side-by-side comparison, and file parameters kept inside open folders."""

from __future__ import annotations

import json
import os

import pytest
from report.factory import write_llm_run, write_run

from edgeopt.dashboard import state as S
from edgeopt.errors import InputError
from edgeopt.ledger import SCHEMA_VERSION


def test_parse_args_takes_its_own_flags_and_ignores_others(tmp_path, monkeypatch):
    monkeypatch.delenv(S.ENV_RUNS, raising=False)
    cfg = S.parse_args(["-q", "tests/x", "--run", str(tmp_path / "a"), "--run", str(tmp_path / "b"),
                        "--root", str(tmp_path / "models"), "--workdir", str(tmp_path / "w"), "-p", "no:x"])
    assert cfg.run_dirs == (tmp_path / "a", tmp_path / "b")
    assert cfg.roots == (tmp_path / "models",) and cfg.workdir == tmp_path / "w"
    assert set(cfg.allowed) == {tmp_path / "a", tmp_path / "b", tmp_path / "models", tmp_path / "w"}
    assert S.parse_args(["--ru", "x"]).run_dirs == ()  # no abbreviations: pytest's own flags never match


def test_parse_args_falls_back_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(S.ENV_RUNS, os.pathsep.join([str(tmp_path / "a"), str(tmp_path / "b")]))
    assert S.parse_args([]).run_dirs == (tmp_path / "a", tmp_path / "b")


@pytest.mark.parametrize("candidate", [
    "../secret.onnx", "{run}/../secret.onnx", "{run}/../../etc/passwd", "/etc/passwd", "{run}/./../secret.onnx",
    "~/.ssh/id_rsa", "{run}/link/secret.onnx",
])
def test_safe_path_refuses_everything_outside_the_open_folders(tmp_path, candidate):
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    (tmp_path / "runs" / "secret.onnx").write_bytes(b"x")
    os.symlink(tmp_path / "runs", run / "link")  # a link inside the run pointing out of it
    with pytest.raises(InputError, match="outside the folders open to the dashboard") as e:
        S.safe_path(candidate.format(run=run), [run], "model")
    assert "\n" not in str(e.value)


def test_safe_path_accepts_paths_inside(tmp_path):
    run = tmp_path / "r1"
    (run / "onnx").mkdir(parents=True)
    assert S.safe_path("onnx/model.onnx", [run]) == run / "onnx" / "model.onnx"  # relative to the open folder
    assert S.safe_path(str(run / "onnx" / ".." / "x.yaml"), [run]) == run / "x.yaml"
    with pytest.raises(InputError, match="no path given"):
        S.safe_path("  ", [run])
    with pytest.raises(InputError, match="no folder is open"):
        S.safe_path("x", [])


def test_safe_model_source_names_pass_and_paths_are_checked(tmp_path):
    assert S.safe_model_source("zoo:minilm", []) == "zoo:minilm"
    assert S.safe_model_source(" demo:tiny-cnn ", []) == "demo:tiny-cnn"
    (tmp_path / "m.onnx").write_bytes(b"x")
    assert S.safe_model_source(str(tmp_path / "m.onnx"), [tmp_path]) == str(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="no such file"):
        S.safe_model_source("missing.onnx", [tmp_path])
    with pytest.raises(InputError, match="outside"):
        S.safe_model_source("/etc/hostname", [tmp_path])


def test_discover_runs_in_run_dirs_and_folders_of_runs(tmp_path):
    a = write_run(tmp_path / "runs" / "a")
    write_run(tmp_path / "runs" / "b")
    bad = tmp_path / "runs" / "broken"
    bad.mkdir()
    (bad / "ledger.json").write_text("{not json")
    (tmp_path / "runs" / "not-a-run").mkdir()
    runs = S.discover_runs([tmp_path / "runs", a])  # a twice: listed once
    assert [r.label for r in runs] == ["a", "b", "broken"]
    assert runs[0].ledger is not None and runs[2].ledger is None
    assert "not valid JSON" in runs[2].error and str(bad / "ledger.json") in runs[2].error


def test_compare_table_side_by_side(tmp_path):
    runs = S.discover_runs([write_run(tmp_path / "a")])
    keys = ["a: onnx", "a: int8", "a: nope"]
    table = S.compare_table(runs, keys)
    assert list(table) == ["a: onnx", "a: int8"]  # unknown stages are skipped
    onnx, int8 = table["a: onnx"], table["a: int8"]
    assert set(onnx) == set(S.COMPARE_METRICS)
    assert onnx["latency p50 (ms)"] == "20.000" and int8["latency p50 (ms)"] == "8.000"
    assert onnx["speedup vs its baseline"] == "2.00×" and int8["speedup vs its baseline"] == "5.00×"
    assert int8["vs first column"] == "2.50×" and int8["throughput (/s)"] == "125.0"
    assert int8["size (MB)"] == "23.00" and int8["gate"] == "pass"
    assert S.stage_options(runs)[:2] == ["a: baseline", "a: onnx"]
    assert S.onnx_stages(runs[0]) == ["onnx", "fused", "int8", "int8-aggressive"]


def test_compare_table_of_llm_stages_adds_their_figures(tmp_path):
    runs = S.discover_runs([write_llm_run(tmp_path / "llm"), write_run(tmp_path / "plain")])
    assert [r.label for r in S.llm_runs(runs)] == ["llm"]
    table = S.compare_table(runs, ["llm: baseline", "llm: litert-int4", "plain: int8"])
    assert S.compare_metrics(table) == (*S.COMPARE_METRICS, *S.COMPARE_LLM_METRICS)
    int4, plain = table["llm: litert-int4"], table["plain: int8"]
    assert int4["TTFT (ms)"] == "64.0 (prompt 128)" and int4["decode tok/s"] == "150.0" and int4["KL"] == "0.1500"
    assert int4["% of bandwidth limit"] == "34%" and int4["answer"] == "Paris, France | and the"
    assert int4["latency p50 (ms)"] == "6.667" and int4["speedup vs its baseline"] == "3.75×"  # per generated token
    assert int4["mean cosine"] == "—" and plain["decode tok/s"] == "—" and plain["mean cosine"] == "0.99200"
    only_plain = S.compare_table(runs, ["plain: int8"])
    assert S.compare_metrics(only_plain) == S.COMPARE_METRICS
    assert set(only_plain["plain: int8"]) == set(S.COMPARE_METRICS)


def test_session_open_run_stays_in_open_folders(tmp_path):
    inside = write_run(tmp_path / "runs" / "extra")
    outside = write_run(tmp_path / "elsewhere" / "run")
    sess = S.Session(S.as_config([tmp_path / "runs"], workdir=tmp_path / "work"))
    assert sess.open_run(str(inside)) == inside
    with pytest.raises(InputError, match="outside"):
        sess.open_run(str(outside))
    with pytest.raises(InputError, match="outside"):
        sess.open_run(str(tmp_path / "runs" / ".." / "elsewhere" / "run"))
    assert [r.label for r in sess.runs()] == ["extra"]
    data = json.loads((inside / "ledger.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION
