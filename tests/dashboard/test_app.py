"""The Streamlit page driven by Streamlit's AppTest: runs, comparison, refused paths, background jobs, live toggles,
generation on LLM runs."""

from __future__ import annotations

import time

import pytest
from dashboard.fake_llm import Opener
from report.factory import write_llm_run, write_run
from streamlit.testing.v1 import AppTest

from edgeopt.dashboard import APP
from edgeopt.dashboard import llm as G
from edgeopt.dashboard import state as S


def _app(run_dirs, tmp_path, query=None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["edgeopt_config"] = S.as_config(run_dirs, workdir=tmp_path / "work")
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def _until(at: AppTest, done, timeout=90.0) -> AppTest:
    """Rerun the page (as the polling fragment does) until `done(at)` or the timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        at.run()
        if done(at):
            return at
        time.sleep(0.3)
    raise AssertionError("the page never showed the job's result; errors: " + str([e.value for e in at.error]))


def _texts(at: AppTest) -> list[str]:
    return [m.value for m in at.markdown] + [m.value for m in at.caption]


@pytest.fixture()
def runs(tmp_path, tiny_mlp_onnx):
    root = tmp_path / "runs"
    write_run(root / "alpha", onnx_model=tiny_mlp_onnx.path)
    write_run(root / "beta")
    (root / "broken").mkdir()
    (root / "broken" / "ledger.json").write_text('{"schema_version": 0, "stages": []}')
    return root


def test_runs_listed_and_compared(runs, tmp_path):
    at = _app([runs], tmp_path)
    assert not at.exception
    assert at.multiselect(key="runs").value == ["alpha", "beta"]
    assert [s.value for s in at.subheader] == ["Run alpha", "Run beta", "Side by side"]
    assert any("written by an older edgeopt" in w.value for w in at.warning)  # the broken run says why
    assert at.multiselect(key="cmp").value == ["alpha: baseline", "alpha: int8", "beta: baseline", "beta: int8"]
    table = at.dataframe[2].value  # two stage tables, then the side-by-side one
    assert list(table.columns) == ["alpha: baseline", "alpha: int8", "beta: baseline", "beta: int8"]
    assert table.loc["latency p50 (ms)", "alpha: int8"] == "8.000"
    at.multiselect(key="runs").set_value(["beta"]).run()
    assert [s.value for s in at.subheader] == ["Run beta", "Side by side"]


def test_query_param_selects_runs_by_label_only(runs, tmp_path):
    at = _app([runs], tmp_path, {"run": "beta"})
    assert at.multiselect(key="runs").value == ["beta"]
    at = _app([runs], tmp_path, {"run": "/etc"})  # a path is no label: ignored
    assert at.multiselect(key="runs").value == ["alpha", "beta"]


def test_open_run_refuses_paths_outside_the_open_folders(runs, tmp_path):
    outside = write_run(tmp_path / "elsewhere" / "gamma")
    at = _app([runs / "alpha"], tmp_path)
    at.sidebar.text_input[0].input(str(runs / "alpha" / ".." / ".." / "elsewhere" / "gamma"))
    at.sidebar.button[0].click().run()
    assert any("outside the folders open to the dashboard" in e.value for e in at.error)
    assert at.multiselect(key="runs").options == ["alpha"]
    at = _app([runs / "alpha", tmp_path / "elsewhere"], tmp_path)
    at.sidebar.text_input[0].input(str(outside))
    at.sidebar.button[0].click().run()
    assert "gamma" in at.multiselect(key="runs").options


def test_run_tab_refuses_model_outside_and_analyzes_in_the_background(runs, tmp_path):
    at = _app([runs], tmp_path)
    at.text_input(key="run-model").input("/etc/hostname")
    at.button(key="run-go").click().run()
    assert any("outside the folders open to the dashboard" in e.value for e in at.error)
    at.text_input(key="run-model").input(str(runs / "alpha" / "onnx" / "model.onnx"))
    at.button(key="run-go").click().run()
    at = _until(at, lambda a: any(m.label == "parameters" for m in a.metric))
    assert not at.exception
    assert any("analyze" in t and "done" in t for t in _texts(at))


def test_per_layer_profile_job(runs, tmp_path):
    at = _app([runs], tmp_path)
    at.selectbox(key="prof-run").set_value("alpha")
    at.multiselect(key="prof-stages").set_value(["onnx", "int8"])
    at.number_input(key="prof-runs").set_value(2)
    at.button(key="prof-go").click().run()
    at = _until(at, lambda a: any(e.label.endswith("top layers") for e in a.expander))
    assert [e.label for e in at.expander if e.label.endswith("top layers")] == ["onnx: top layers", "int8: top layers"]
    assert not at.error


def test_live_toggle_measures_the_new_combination(runs, tmp_path):
    at = _app([runs], tmp_path)
    at.selectbox(key="live-model").set_value("demo:tiny-cnn").run()
    at.number_input(key="live-runs").set_value(5).run()
    at.checkbox(key="live-memory").uncheck().run()
    assert not any("Latest measurement" in t for t in _texts(at))  # nothing measured on opening
    at.toggle(key="tg-quantize").set_value(True).run()
    at = _until(at, lambda a: any("Latest measurement: onnx + int8" in t for t in _texts(a)))
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["latency p50"].endswith(" ms") and metrics["throughput"].endswith("/s")
    assert metrics["peak memory"] == "—"  # memory was switched off
    at.toggle(key="tg-quantize").set_value(False)
    at.toggle(key="tg-fuse").set_value(True).run()
    at = _until(at, lambda a: any("Latest measurement: onnx + fuse" in t for t in _texts(a)))
    assert len(at.dataframe[-1].value) == 2  # the history holds both measurements


def _guarded(runs, tmp_path, token, query=None) -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["edgeopt_config"] = S.as_config([runs], workdir=tmp_path / "work", token=token)
    for k, v in (query or {}).items():
        at.query_params[k] = v
    return at.run()


def _page_shown(at: AppTest) -> bool:
    return bool(at.tabs) or "run-go" in [b.key for b in at.button] or bool(at.multiselect)


def test_with_a_token_the_page_shows_nothing_until_it_is_given(runs, tmp_path):
    token = "the-right-token-1234"
    at = _guarded(runs, tmp_path, token)
    assert not at.exception and not _page_shown(at)  # no runs, no Run tab, no Start button: no job can start
    assert "edgeopt" not in at.session_state and "worker" not in at.session_state
    assert not _page_shown(_guarded(runs, tmp_path, token, {"token": "wrong-token-123456"}))
    at = _guarded(runs, tmp_path, token, {"token": "wrong-token-123456"})
    assert any("wrong access token" in e.value for e in at.error)
    at.text_input(key="token-input").input("still-wrong-token")
    at.button[0].click().run()
    assert not _page_shown(at) and any("wrong access token" in e.value for e in at.error)
    at.text_input(key="token-input").input(token)
    at.button[0].click().run()
    assert _page_shown(at) and at.button(key="run-go") and at.multiselect(key="runs").value == ["alpha", "beta"]
    at = _guarded(runs, tmp_path, token, {"token": token})  # the address printed by `edgeopt dashboard`
    assert not at.exception and _page_shown(at) and not at.error


def test_without_a_token_the_page_asks_for_none(runs, tmp_path):
    at = _guarded(runs, tmp_path, None)
    assert _page_shown(at) and "token-input" not in [t.key for t in at.text_input]


def _llm_app(tmp_path, opener) -> AppTest:
    root = tmp_path / "runs"
    write_llm_run(root / "llm")
    write_run(root / "plain")
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["edgeopt_config"] = S.as_config([root], workdir=tmp_path / "work")
    at.session_state["llm_cache"] = G.GeneratorCache(opener)  # a fake model: nothing is loaded
    return at.run()


def test_generate_tab_streams_text_and_the_meter_for_an_llm_run(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path / "cache"))  # SmolLM2's folder not built: baseline not offered
    opener = Opener()
    at = _llm_app(tmp_path, opener)
    assert not at.exception
    assert [t.label for t in at.tabs] == ["Compare", "Per-layer", "Run a model", "Live", "Generate (LLM)"]
    assert at.selectbox(key="llm-run").options == ["llm"]
    assert at.selectbox(key="llm-variant").value == "litert-int8"  # the run's best stage first
    assert any("Not offered here: baseline" in c.value for c in at.caption)  # its folder is not cached here
    at.text_area(key="llm-prompt").input("   ")
    at.button(key="llm-go").click().run()
    assert [e.value for e in at.error] == ["prompt: empty; type something to continue"]
    at.text_area(key="llm-prompt").input("What is the capital of France?")
    at.number_input(key="llm-max").set_value(8)
    at.button(key="llm-go").click().run()
    at = _until(at, lambda a: any(m.label == "tokens" and m.value == "4 / 8" for m in a.metric)
                and any(c.value == "Paris. It is" for c in a.code))
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["decode"] == "100.0 tok/s" and metrics["TTFT"] == "20 ms" and metrics["prefill"] == "300 tok/s"
    assert opener.opened[0][0].name == "litert-int8" and opener.opened[0][2].calls[0]["max_new_tokens"] == 8
    history = at.dataframe[-1].value
    assert list(history["variant"]) == ["litert-int8"] and list(history["new tokens"]) == [4]


def test_an_llm_run_compares_with_its_llm_figures_and_plain_runs_get_no_generate_tab(tmp_path):
    at = _llm_app(tmp_path, Opener())
    at.multiselect(key="runs").set_value(["llm"]).run()
    assert not at.exception
    assert any(m.value == "**LLM: tokens/s, fidelity, answers**" for m in at.markdown)
    table = at.dataframe[-1].value  # the side-by-side table
    assert table.loc["decode tok/s", "llm: litert-int8"] == "120.0"
    assert table.loc["answer", "llm: baseline"] == "Paris. It is"
    at.multiselect(key="runs").set_value(["plain"]).run()
    assert [t.label for t in at.tabs] == ["Compare", "Per-layer", "Run a model", "Live"]
    assert "decode tok/s" not in at.dataframe[-1].value.index
