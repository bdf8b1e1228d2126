"""The search: trials built, judged and timed, the front, dropped families, crashes recorded, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeopt.recipe import MeasureSpec, SearchSpec
from edgeopt.measure.fidelity import GateSpec
from edgeopt.search import study as study_mod
from edgeopt.search.study import TOLERANCE, SearchInput, dominates, front_of, pair_tolerance, run_search
from edgeopt.target import get_target


class Inline:
    """Runs tasks in this process (the local executor's behaviour), counting them."""

    name, slots = "inline", 1

    def __init__(self):
        self.log = []

    def _run(self, kind, fn, *a, **k):
        self.log.append((kind, fn.__name__))

        class Done:
            def __init__(self, fn, a, k):
                try:
                    self.value, self.exc = fn(*a, **k), None
                except BaseException as e:  # noqa: BLE001 - re-raised by result()
                    self.value, self.exc = None, e

            def result(self, timeout=None):
                if self.exc:
                    raise self.exc
                return self.value

            def done(self):
                return True

        return Done(fn, a, k)

    def build(self, fn, *a, **k):
        return self._run("build", fn, *a, **k)

    def measure(self, fn, *a, **k):
        return self._run("measure", fn, *a, **k)

    def close(self):
        pass


def _input(tmp_path, art, feeds, spec, executor=None, resume=False):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(art.path))
    ref = [sess.run(None, f)[0] for f in feeds]
    return SearchInput(root=art, root_name="baseline", baseline=art, calibration=feeds, evaluation=feeds, labels=None,
                       reference=ref, data_key="k" + str(len(feeds)), target=get_target("auto"),
                       measure=MeasureSpec(threads=1, warmup=1, runs=6, memory=False, block=3, settle=1, pause_ms=0),
                       gates=GateSpec(mean_cosine=0.9), spec=spec, out_dir=tmp_path, executor=executor or Inline(),
                       resume=resume)


def test_search_builds_judges_and_times_each_trial_and_keeps_a_front(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    spec = SearchSpec(families=("ort-fp32", "ort-int8-dynamic"), trials=3, runs=6, drop=False)
    ex = Inline()
    res = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec, ex))
    assert 1 <= len(res.trials) <= 3
    first = [r["family"] for r in res.trials[:2]]
    assert first == ["ort-fp32", "ort-int8-dynamic"]  # every family's defaults first, cheapest first
    for r in res.trials:
        assert r["status"] == "done", r.get("error")
        assert r["speedup"]["lo"] <= r["speedup"]["ratio"] <= r["speedup"]["hi"]
        assert 0.9 < r["fidelity_value"] <= 1.0 + 1e-6
        assert Path(r["artifact"]["path"]).is_file()
    int8 = next(r for r in res.trials if r["family"] == "ort-int8-dynamic")
    fp32 = next(r for r in res.trials if r["family"] == "ort-fp32")
    assert int8["size_mb"] < fp32["size_mb"]
    assert any(op in json.dumps(int8["steps"]) for op in ("quantize_dynamic",))
    assert res.front and all(r["gate"]["passed"] for r in res.front)
    assert any(r["family"] == "ort-int8-dynamic" for r in res.front)  # only an int8 trial can dominate an int8 trial
    kinds = [k for k, _ in ex.log]
    assert kinds.count("build") == len(res.trials) and kinds.count("measure") == len(res.trials)
    assert (tmp_path / "search" / "journal.log").is_file() and (tmp_path / "cas").is_dir()


def test_a_crashing_trial_is_recorded_and_the_search_goes_on(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, monkeypatch):
    real = study_mod.build_candidate

    def flaky(job):
        if any(p == "graph.quantize_dynamic" for p, _ in job["chain"]):
            raise RuntimeError("kernel exploded\nsecond line")
        return real(job)

    monkeypatch.setattr(study_mod, "build_candidate", flaky)
    spec = SearchSpec(families=("ort-fp32", "ort-int8-dynamic"), trials=2, runs=6, drop=False)
    res = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec))
    failed = [r for r in res.trials if r["status"] == "failed"]
    assert failed and failed[0]["error"] == "RuntimeError: kernel exploded"
    assert any(r["status"] == "done" for r in res.trials)
    assert all(r["status"] == "done" for r in res.front)


def test_resume_keeps_finished_trials_and_builds_nothing_twice(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    spec = SearchSpec(families=("ort-fp32", "ort-int8-dynamic"), trials=2, runs=6, drop=False)
    run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec))
    ex = Inline()
    more = SearchSpec(families=("ort-fp32", "ort-int8-dynamic"), trials=3, runs=6, drop=False)
    res = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, more, ex, resume=True))
    assert [r["number"] for r in res.trials[:2]] == [0, 1]
    assert len(res.trials) == 3 and len([k for k, _ in ex.log if k == "build"]) == 1  # only the new trial ran
    fresh = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec, Inline(), resume=False))
    assert all(st["cached"] for r in fresh.trials for st in r["steps"])  # the stage cache already holds them


def test_ctrl_c_keeps_finished_trials_and_resume_continues(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, monkeypatch):
    real = study_mod.build_candidate
    calls = []

    def interrupted(job):
        calls.append(job)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(job)

    monkeypatch.setattr(study_mod, "build_candidate", interrupted)
    spec = SearchSpec(families=("ort-fp32", "ort-int8-dynamic"), trials=3, runs=6, drop=False)
    with pytest.raises(KeyboardInterrupt):
        run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec))
    monkeypatch.setattr(study_mod, "build_candidate", real)
    res = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec, resume=True))
    assert res.trials[0]["number"] == 0 and res.trials[0]["family"] == "ort-fp32"  # kept from before Ctrl-C
    assert [r["status"] for r in res.trials] == ["done"] * 3
    assert "ort-int8-dynamic" in [r["family"] for r in res.trials[1:]]  # the interrupted family is tried again


def test_a_family_without_gain_is_dropped_after_its_first_trial(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    s = study_mod.Search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds,
                                SearchSpec(families=("ort-fp32",), trials=2, runs=6)))
    s._root_figures(10.0, 100.0)
    rec = {"number": 0, "family": "ort-fp32", "label": "ort-fp32", "status": "done", "params": {},
           "speedup": {"ratio": 1.01, "lo": 0.97, "hi": 1.05}, "latency_ms": 9.9, "size_mb": 1.0 * s._root()["size_mb"],
           "peak_mb": 100.0, "fidelity_value": 1.0, "gate": {"passed": True}}
    s.records.append(rec)
    s._after(rec)
    assert "no gain on this target" in s.dropped["ort-fp32"] and "0.97–1.05" in s.dropped["ort-fp32"]
    faster = {**rec, "family": "ort-int8-dynamic", "speedup": {"ratio": 1.4, "lo": 1.3, "hi": 1.5}}
    s.records.append(faster)
    s._after(faster)
    assert "ort-int8-dynamic" not in s.dropped


def test_front_keeps_only_feasible_undominated_trials():
    def r(n, lat, fid, size, passed=True):
        return {"number": n, "status": "done", "gate": {"passed": passed}, "latency_ms": lat, "fidelity_value": fid,
                "size_mb": size, "peak_mb": 10.0}

    recs = [r(0, 10, 1.0, 90), r(1, 5, 0.99, 25), r(2, 6, 0.98, 30), r(3, 1, 0.5, 1, passed=False)]
    assert [x["number"] for x in front_of(recs)] == [0, 1]
    assert dominates((1, -1, 1, 1), (1, -1, 2, 1)) and not dominates((1, -1, 2, 1), (2, -1, 1, 1))
    assert not dominates((1, -1, 1, 1), (1, -1, 1, 1))
    # differences inside the measurement's resolution are ties: 0.2 % of size, 1e-5 of cosine, 1 % of latency
    tied = [r(0, 10.0, 1.0, 90.3), r(1, 9.9, 0.99999, 90.5)]
    assert [x["number"] for x in front_of(tied)] == [0]


def test_latencies_their_own_intervals_cannot_tell_apart_are_a_tie_on_the_front():
    """Two INT8 candidates 3.1 % apart in latency: both stay on the front when their speedup intervals are narrow
    (a real trade-off against fidelity), only the more faithful one when either interval is wider than the gap."""
    def r(n, lat, fid, ratio, lo, hi):
        return {"number": n, "status": "done", "gate": {"passed": True}, "latency_ms": lat, "fidelity_value": fid,
                "size_mb": 23.5, "peak_mb": 106.0, "speedup": {"ratio": ratio, "lo": lo, "hi": hi}}

    narrow = [r(0, 10.0, 0.9977, 2.86, 2.85, 2.87), r(1, 9.69, 0.9974, 2.95, 2.94, 2.96)]
    assert [x["number"] for x in front_of(narrow)] == [0, 1]
    wide = [r(0, 10.0, 0.9977, 2.86, 2.67, 3.33), r(1, 9.69, 0.9974, 2.95, 2.92, 3.03)]
    assert [x["number"] for x in front_of(wide)] == [0]
    assert pair_tolerance(wide[0], wide[1])[0][0] > 0.1 and pair_tolerance(narrow[0], narrow[1])[0] == TOLERANCE[0]
    no_interval = [{k: v for k, v in x.items() if k != "speedup"} for x in wide]  # older records: the fixed 3 %
    assert [x["number"] for x in front_of(no_interval)] == [0, 1]


@pytest.mark.slow
def test_the_search_on_a_two_node_ray_cluster_times_only_on_the_target_node(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    from helpers import two_node_ray_executor

    with two_node_ray_executor() as (ex, res_name):
        spec = SearchSpec(families=("ort-fp32", "ort-int8-dynamic"), trials=2, runs=6, drop=False)
        res = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec, ex))
    assert [r["status"] for r in res.trials] == ["done", "done"], [r.get("error") for r in res.trials]
    log = res.summary["executor_log"]
    timing = [r for r in log if r["kind"] == "measure"]
    assert len(timing) == 2 and all(res_name in r["resources"] for r in timing)
    assert sum(1 for r in log if r["kind"] == "build") == 2
    assert res.front


def test_a_recipe_space_decides_which_settings_a_family_tries_first(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    spec = SearchSpec(families=("ort-int8-dynamic",), trials=1, runs=6, drop=False,
                      space={"ort-int8-dynamic": {"per_channel": [False, True]}})
    res = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec))
    assert res.trials[0]["params"]["per_channel"] is False  # the family's own default would be None


@pytest.mark.slow
def test_litert_family_converts_from_the_pytorch_model_and_is_timed_against_the_root(tmp_path):
    """The litert family starts from the PyTorch baseline (not the ONNX root), builds a .tflite and is timed
    interleaved with the root like every other candidate."""
    pytest.importorskip("ai_edge_litert")
    from edgeopt.pipeline import optimize

    recipe = {"model": {"source": "zoo:digits-cnn"}, "target": "auto",
              "data": {"calibration": "zoo:digits[train][:16]", "eval": "zoo:digits[test][:32]"},
              "passes": [{"convert.onnx": {"stage": "onnx"}}],
              "search": {"families": ["litert"], "trials": 1, "runs": 6},
              "measure": {"threads": 1, "warmup": 1, "runs": 6, "memory": False, "energy": False},
              "gates": {"max_accuracy_drop": 5.0}}
    led = optimize(recipe=recipe, out=tmp_path / "run", progress=False).ledger
    (trial,) = led.search["trials"]
    assert trial["status"] == "done", trial.get("error")
    assert trial["family"] == "litert" and trial["params"] == {"quantize": "dynamic_int8"}
    assert trial["artifact"]["kind"] == "tflite" and trial["chain"] == [["convert.litert", {"quantize": "dynamic_int8", "smooth": 0.5}]]
    assert trial["speedup"]["lo"] <= trial["speedup"]["ratio"] <= trial["speedup"]["hi"]
    assert abs(trial["fidelity_value"] - led.stage("baseline").accuracy["top1"]) < 0.05


class Deferred(Inline):
    """An executor with two build slots whose builds run only when their result is asked for (as on a cluster,
    where they run in parallel): the search must submit a batch of builds before it times any."""

    name, slots = "deferred", 2

    def build(self, fn, *a, **k):
        self.log.append(("build", fn.__name__))
        outer = self

        class Later:
            value = None

            def result(self, timeout=None):
                if self.value is None:
                    outer.log.append(("build-ran", fn.__name__))
                    self.value = Inline._run(Inline(), "build", fn, *a, **k)
                return self.value.result()

            def done(self):
                return self.value is not None

        return Later()


def test_trials_are_built_as_many_at_once_as_the_executor_has_slots(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    spec = SearchSpec(families=("ort-fp32", "ort-int8-dynamic"), trials=2, runs=6, drop=False)
    ex = Deferred()
    res = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec, ex))
    assert [r["status"] for r in res.trials] == ["done", "done"], [r.get("error") for r in res.trials]
    assert [r["label"] for r in res.trials] == ["ort-fp32", "ort-int8-dynamic"]
    kinds = [k for k, _ in ex.log]
    assert kinds[:2] == ["build", "build"]  # both builds submitted before any waits or timing
    assert kinds.index("measure") > kinds.index("build-ran")


def test_a_small_trial_budget_still_reaches_the_structural_families():
    """Cheapest first, but with fewer trials than families the structural ones (asked for by a training budget)
    take the last places inside the budget; a budget for every family keeps the cost order."""
    from edgeopt.search.candidates import ModelInfo, plan
    from edgeopt.search.study import enqueue_order
    from edgeopt.target import get_target

    cnn = ModelInfo(kind="onnx", baseline_kind="torch", conv=True, labelled=True, source="zoo:digits-cnn")
    fams = plan(get_target("cpu-avx2"), cnn, train_minutes=10).families
    structural = [f.name for f in fams if f.structural]
    assert len(structural) == 2 and len(fams) > 6
    names = [f.name for f in enqueue_order(fams, 6)]
    assert sorted(names) == sorted(f.name for f in fams)  # nothing dropped, only reordered
    assert set(names[:6]) >= set(structural) and names[:4] == [f.name for f in fams if not f.structural][:4]
    assert enqueue_order(fams, len(fams)) == fams and enqueue_order(fams, 1)[0].structural


def test_resume_keeps_the_executor_log_of_the_runs_it_continues(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    """The ledger's executor log covers the whole search: a resumed run lists the earlier run's build and timing
    tasks and then its own (a fully resumed Ray search otherwise showed 0 timing tasks)."""
    from edgeopt.executor import LocalExecutor

    spec = SearchSpec(families=("ort-fp32", "ort-int8-dynamic"), trials=2, runs=6, drop=False)
    first = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec, LocalExecutor())).summary["executor_log"]
    assert first and {r["kind"] for r in first} >= {"build", "measure"}
    again = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, spec, LocalExecutor(), resume=True))
    assert again.summary["executor_log"] == first  # nothing new ran, nothing was forgotten
    more = SearchSpec(families=("ort-fp32", "ort-int8-dynamic"), trials=3, runs=6, drop=False)
    grown = run_search(_input(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, more, LocalExecutor(), resume=True))
    log = grown.summary["executor_log"]
    assert log[:len(first)] == first and sum(r["kind"] == "measure" for r in log) > sum(r["kind"] == "measure" for r in first)


def test_a_family_follow_up_runs_after_every_familys_first_trial_when_the_budget_reaches_it(tmp_path, tiny_mlp_onnx,
                                                                                         tiny_mlp_feeds, monkeypatch):
    """candidates.Plan.followups (a CNN student's INT8 after its fp32 on a CPU without int8 dot products) are queued
    after every family's first settings: a budget of one trial per family runs none, one more runs the follow-up."""
    from edgeopt.executor import LocalExecutor
    from edgeopt.search import candidates

    real = candidates.plan

    def with_followup(*a, **k):
        p = real(*a, **k)
        p.followups["ort-fp32"] = [{**{key: v[0] for key, v in p.spaces["ort-fp32"].items()}, "ort_transformer": False}]
        return p

    monkeypatch.setattr(candidates, "plan", with_followup)
    fams = ("ort-fp32", "ort-int8-dynamic")
    spec = SearchSpec(families=fams, trials=2, runs=6, drop=False)
    two = run_search(_input(tmp_path / "a", tiny_mlp_onnx, tiny_mlp_feeds, spec, LocalExecutor())).summary["trials"]
    assert [t["family"] for t in two] == list(fams) and two[0]["params"]["ort_transformer"] != False  # noqa: E712
    spec = SearchSpec(families=fams, trials=3, runs=6, drop=False)
    three = run_search(_input(tmp_path / "b", tiny_mlp_onnx, tiny_mlp_feeds, spec, LocalExecutor())).summary["trials"]
    assert [t["family"] for t in three] == [*fams, "ort-fp32"] and three[2]["params"]["ort_transformer"] is False
