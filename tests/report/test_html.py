"""The offline HTML report: contents from real Ledger objects, offline-ness, bad ledgers, stage files kept in the run."""

from __future__ import annotations

import json
import os
import re

import pytest
from report.factory import DEFAULT_STAGES, make_ledger, make_llm_ledger, write_json, write_run

from edgeopt.errors import InputError
from edgeopt.report.html import build_report, load_run, profile_stages, resolve_runs, stage_model_file

FIGURE_TITLES = ("Incremental waterfall", "Pareto front: fidelity vs latency", "Pareto front: fidelity vs size")


def _scripts(html: str) -> list[str]:
    return re.findall(r"<script[^>]*>", html, flags=re.I)


def test_report_holds_stages_figures_and_inline_plotly(tmp_path):
    from plotly.offline import get_plotlyjs

    out = build_report([("demo", make_ledger())], tmp_path / "report.html")
    html = out.read_text()
    assert out == tmp_path / "report.html"
    for name, *_ in DEFAULT_STAGES:
        assert f">{name}" in html
    for title in FIGURE_TITLES:
        assert title in html
    assert "What each step bought" in html and "Environment" in html
    assert get_plotlyjs()[:2000] in html  # the library itself is inline
    assert html.count("Plotly.newPlot") == 3  # waterfall + two Pareto plots
    srcs = [s for s in _scripts(html) if "src=" in s.lower()]
    assert srcs == [], srcs  # nothing is loaded from anywhere: it opens offline
    assert not re.search(r"<link[^>]+href=['\"]?https?:", html)
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # written atomically: no temp file left


def test_incremental_table_numbers(tmp_path):
    html = build_report([("demo", make_ledger())], tmp_path / "r.html").read_text()
    table = html[html.index("<table class='incremental'>"):]
    table = table[: table.index("</table>")]
    # onnx: 40 -> 20 ms is -50% step and cumulative, 2x; int8: 16 -> 8 is -50% step, -80% cumulative, 5x
    assert "+ onnx" in table and "−50.0%" in table and "2.00×" in table
    assert "−80.0%" in table and "5.00×" in table
    assert "−70.0%" in table  # peak memory 400 -> 120 MB cumulative


def test_environment_block_names_cpu_isa_threads_and_versions(tmp_path):
    html = build_report([("demo", make_ledger())], tmp_path / "r.html").read_text()
    env = html[html.index("<dl class='env'>"):]
    env = env[: env.index("</dl>")]
    for text in ("Test CPU 9000", "avx512_vnni", "intra-op threads</dt><dd>2", "onnxruntime 1.31.1", "torch 2.13.0+cpu",
                 "cpu-avx512-vnni"):
        assert text in env


def test_failed_gate_and_failed_stage_are_marked(tmp_path):
    led = make_ledger()
    led.stages[2].status, led.stages[2].error, led.stages[2].latency_ms = "failed", "PassError: boom", None
    html = build_report([("demo", led)], tmp_path / "r.html").read_text()
    assert "PassError: boom" in html
    assert "class='fail'" in html
    assert "FAIL (mean_cosine 0.95)" in html


def test_stage_names_are_escaped(tmp_path):
    led = make_ledger()
    led.stages[1].name = "<script>alert(1)</script>"
    html = build_report([("<b>x</b>", led)], tmp_path / "r.html").read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_several_runs_from_directories(tmp_path):
    a = write_run(tmp_path / "runs" / "a")
    b = write_run(tmp_path / "other" / "a", best=None)  # same folder name: labels stay distinct
    runs = resolve_runs([a, b / "ledger.json"])
    assert [label for label, _ in runs] == ["a", "a (2)"]
    html = build_report([a, b], tmp_path / "r.html").read_text()
    assert "Run a (2)" in html
    assert "a: int8" in html and "a (2): int8" in html  # Pareto points labelled run: stage
    assert html.count("Incremental waterfall: ") == 2


def test_profiles_add_per_layer_and_op_type_figures(tmp_path):
    prof = {"version": "1.31.1", "threads": 2, "runs": 5, "inputs": {"x": [1, 16]},
            "nodes": [{"name": f"/layer.{i}/MatMul", "op_type": "MatMul", "ms": 1.0 / (i + 1), "share": 0.1}
                      for i in range(20)],
            "op_types": [{"op_type": "MatMul", "nodes": 20, "ms": 3.0, "share": 0.9},
                         {"op_type": "Add", "nodes": 2, "ms": 0.3, "share": 0.1}]}
    html = build_report([("demo", make_ledger())], tmp_path / "r.html", profiles={"onnx": prof, "int8": prof}).read_text()
    assert "Per-layer latency: top 15 layers" in html and "Op-type breakdown" in html
    assert "layer.0" in html and "layer.14" in html and "layer.15" not in html  # the top 15 only
    assert html.count("Plotly.newPlot") == 5


def test_without_profiles_the_report_says_how_to_get_them(tmp_path):
    html = build_report([("demo", make_ledger())], tmp_path / "r.html").read_text()
    assert "No per-layer profile" in html and "profile_stages" in html


def test_report_on_a_folder_is_refused(tmp_path):
    with pytest.raises(InputError, match="is a folder"):
        build_report([("demo", make_ledger())], tmp_path)


# ---------------------------------------------------------------------------------------- bad ledgers

def test_load_run_reads_a_directory_or_its_ledger(tmp_path):
    d = write_run(tmp_path / "run")
    assert [s.name for s in load_run(d).stages] == [s[0] for s in DEFAULT_STAGES]
    assert load_run(d / "ledger.json").best == "int8"


@pytest.mark.parametrize("setup, match", [
    (lambda d: d, r"no such run directory"),
    (lambda d: (d.mkdir(), d)[1], r"no ledger.json in this folder"),
    (lambda d: (d.mkdir(), (d / "ledger.json").write_text('{"schema_version": 1, "stag'), d)[2], r"not valid JSON"),
    (lambda d: (d.mkdir(), (d / "ledger.json").write_bytes(b"\xff\xfe\x00garbage"), d)[2], r"not valid JSON"),
    (lambda d: write_json(d / "ledger.json", [1, 2]), r"a ledger is a JSON object"),
])
def test_missing_or_corrupt_ledger_is_one_line_naming_the_file(tmp_path, setup, match):
    target = setup(tmp_path / "run")
    with pytest.raises(InputError, match=match) as e:
        load_run(target)
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "run") in msg


def test_partial_ledger_names_the_stage_and_the_field(tmp_path):
    d = write_run(tmp_path / "run")
    data = json.loads((d / "ledger.json").read_text())
    del data["stages"][3]["latency_ms"]["p50"]  # the int8 stage was cut short
    write_json(d / "ledger.json", data)
    with pytest.raises(InputError) as e:
        load_run(d)
    msg = str(e.value)
    assert str(d / "ledger.json") in msg and "stage 'int8'" in msg and "latency_ms.p50" in msg


def test_ledger_without_stages_is_refused(tmp_path):
    d = write_run(tmp_path / "run")
    data = json.loads((d / "ledger.json").read_text())
    data["stages"] = []
    write_json(d / "ledger.json", data)
    with pytest.raises(InputError, match="field 'stages' is empty"):
        load_run(d)


@pytest.mark.parametrize("version, match", [
    (0, r"schema_version' is 0: written by an older edgeopt; this edgeopt reads versions 1-3; rerun"),
    (None, r"'schema_version' is missing: the ledger predates versioned ledgers"),
    (7, r"schema_version' is 7: written by a newer edgeopt.*upgrade"),
])
def test_other_schema_versions_are_refused_with_what_to_do(tmp_path, version, match):
    d = write_run(tmp_path / "run")
    data = json.loads((d / "ledger.json").read_text())
    if version is None:
        del data["schema_version"]
    else:
        data["schema_version"] = version
    write_json(d / "ledger.json", data)
    with pytest.raises(InputError, match=match) as e:
        load_run(d)
    assert str(d / "ledger.json") in str(e.value)
    with pytest.raises(InputError):
        build_report([d], tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()  # no partial output


# ---------------------------------------------------------------------------------------- stage files

def test_stage_model_file_stays_inside_the_run(tmp_path, tiny_mlp_onnx):
    d = write_run(tmp_path / "run", onnx_model=tiny_mlp_onnx.path)
    assert stage_model_file(d, "int8") == (d / "int8" / "model.onnx").resolve()
    led = load_run(d)
    outside = tmp_path / "secret" / "model.onnx"
    outside.parent.mkdir()
    outside.write_bytes(b"not yours")
    led.stages[3].artifact["path"] = str(d / ".." / "secret" / "model.onnx")
    led.save(d / "ledger.json")
    # the ledger points outside: the run's own copy is used instead, never the outside file
    assert stage_model_file(d, "int8") == (d / "int8" / "model.onnx").resolve()
    (d / "int8" / "model.onnx").unlink()
    with pytest.raises(InputError, match="outside the run directory"):
        stage_model_file(d, "int8")


def test_stage_model_file_refuses_a_symlink_out_of_the_run(tmp_path, tiny_mlp_onnx):
    d = write_run(tmp_path / "run", onnx_model=tiny_mlp_onnx.path)
    (d / "onnx" / "model.onnx").unlink()
    os.symlink(tiny_mlp_onnx.path, d / "onnx" / "model.onnx")  # resolves outside the run
    with pytest.raises(InputError, match="no model file in the run directory"):
        stage_model_file(d, "onnx")
    with pytest.raises(InputError, match="no stage 'nope'"):
        stage_model_file(d, "nope")
    with pytest.raises(InputError, match="is a torch model"):
        stage_model_file(d, "baseline")


def test_profile_stages_profiles_the_run_models(tmp_path, tiny_mlp_onnx):
    d = write_run(tmp_path / "run", onnx_model=tiny_mlp_onnx.path)
    profiles = profile_stages(d, ["onnx", "int8"], threads=1, runs=3, warmup=1)
    assert set(profiles) == {"onnx", "int8"}
    p = profiles["onnx"]
    assert p["nodes"] and p["op_types"] and p["threads"] == 1 and p["runs"] == 3
    assert {r["op_type"] for r in p["op_types"]} & {"Gemm", "MatMul"}
    html = build_report([d], tmp_path / "r.html", profiles=profiles).read_text()
    assert "Per-layer latency" in html


def test_report_and_dashboard_modules_import_lean():
    import subprocess
    import sys

    code = ("import sys, edgeopt.report.html, edgeopt.report.markdown, edgeopt.report.png, edgeopt.report.figures, "
            "edgeopt.dashboard, edgeopt.dashboard.state, edgeopt.dashboard.worker; "
            "print(sorted(m for m in ('plotly', 'matplotlib', 'streamlit', 'torch', 'onnxruntime') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_llm_run_has_its_table_and_tokens_per_second_chart(tmp_path):
    html = build_report([("demo-llm", make_llm_ledger())], tmp_path / "r.html").read_text()
    sec = html[html.index("<section id='llm-demo-llm'>"):]
    sec = sec[: sec.index("</section>")]
    assert "LLM: tokens/s, fidelity, answers" in sec
    assert "Copy bandwidth <b>40.0 GB/s</b>; prompt <b>128</b> tokens" in sec
    assert "<th class=''>TTFT ms (prompt 128)</th>" in sec and "<th class=''>% of bandwidth limit</th>" in sec
    assert "<td class='l'>int4 dyn b32 + emb int8 dyn</td>" in sec
    assert "title=' Paris, France | and\nthe'>“Paris, France | and the”</td>" in sec  # the whole answer on hover
    assert "<tr class='best'><td class='l'>litert-int8 ★</td>" in sec
    assert "<tr class='fail'><td class='l'>litert-int4" in sec
    assert "Tokens per second" in sec and "decode ceiling (memory bandwidth)" in sec
    assert html.count("Plotly.newPlot") == 4  # waterfall, tokens/s, two Pareto plots
    stages = html[html.index("<table class='stages'>"):]
    stages = stages[: stages.index("</table>")]
    assert "top-1 agr." in stages and "mean cos" not in stages
    assert "decode latency p50 (ms per token)" in html and "Pareto front: fidelity vs decode latency" in html
    assert "LLM runs: latency is the decode time per generated token" in html


def test_report_of_a_plain_run_has_no_llm_section(tmp_path):
    html = build_report([("demo", make_ledger())], tmp_path / "r.html").read_text()
    assert "llm-demo" not in html and "Tokens per second" not in html and "LLM runs" not in html


def test_llm_and_plain_runs_in_one_report(tmp_path):
    html = build_report([("llm", make_llm_ledger()), ("plain", make_ledger())], tmp_path / "r.html").read_text()
    assert "<section id='llm-llm'>" in html and "llm-plain" not in html
    assert "LLM and other runs mixed" in html
