"""Figure data: waterfall steps, Pareto fronts, layer rows, environment rows, and the plotly figures built on them."""

from __future__ import annotations

import pytest
from report.factory import DEFAULT_STAGES, make_ledger, make_llm_ledger, make_stage

from edgeopt.ledger import Gate
from edgeopt.report import figures as F


def test_waterfall_steps_latency():
    steps = F.waterfall_steps(make_ledger(), "latency")
    assert [s.label for s in steps] == ["baseline", "+ onnx", "+ fused", "+ int8", "+ int8-aggressive"]
    base, onnx, fused, int8, _ = steps
    assert base.delta is None and base.cumulative_pct == 0 and base.ratio == 1
    assert onnx.delta == -20 and onnx.delta_pct == -50 and onnx.ratio == 2
    assert fused.delta == pytest.approx(-4) and fused.delta_pct == pytest.approx(-20)
    assert int8.cumulative_pct == pytest.approx(-80) and int8.ratio == pytest.approx(5)
    assert F.step_text(onnx, "ms") == "−20 ms (−50.0%)"
    assert F.step_text(base, "ms") == "40 ms"


def test_waterfall_skips_unmeasured_stages_when_computing_changes():
    led = make_ledger()
    led.stages[2].status = "failed"  # fused: no value; int8's step is against onnx
    steps = F.waterfall_steps(led, "memory")
    assert steps[2].value is None and steps[2].delta is None
    assert steps[3].delta == pytest.approx(120 - 200) and steps[3].delta_pct == pytest.approx(-40)


def test_pareto_front_dominance():
    # (cost, quality): lower cost, higher quality is better
    pts = [(10, 0.9), (5, 0.8), (20, 0.95), (12, 0.85), (5, 0.8)]
    assert F.pareto_front(pts) == [True, True, True, False, True]
    # a quality better only by float noise does not keep a slower point on the front
    assert F.pareto_front([(1, 0.9999999999997), (9, 1.0)]) == [True, False]


def test_pareto_points_and_front_on_a_ledger():
    led = make_ledger()
    points, title = F.pareto_points([("demo", led)])
    assert title == "fidelity (mean cosine to baseline)"
    flags = {p.stage: on for p, on in F.front_of(points, "latency_ms")}
    # baseline and onnx are dominated by fused (as faithful to within 1e-6, and faster); the rest trade cosine for speed
    assert flags == {"baseline": False, "onnx": False, "fused": True, "int8": True, "int8-aggressive": True}
    sizes = {p.stage: on for p, on in F.front_of(points, "size_mb")}
    assert sizes["baseline"] is False and sizes["int8-aggressive"] is True


def test_accuracy_is_preferred_over_fidelity_when_recorded():
    led = make_ledger()
    for i, s in enumerate(led.stages):
        s.accuracy = {"top1": 0.9 - 0.01 * i}
    points, title = F.pareto_points([("demo", led)])
    assert title == "accuracy (top1)" and points[0].quality == pytest.approx(0.9)


def test_pareto_figure_fades_dominated_and_crosses_failed_gates():
    led = make_ledger()
    led.stages[4].gate = Gate(passed=False, why="too far")
    fig = F.pareto_figure([("demo", led)], "latency_ms")
    by_name = {t.name: t for t in fig.data}
    # the overall front, then one trace group per runtime (its points, then its own front, hidden)
    assert list(by_name) == ["Pareto front", "torch", "front (torch)", "onnxruntime", "front (onnxruntime)"]
    ort = by_name["onnxruntime"]
    assert list(ort.text) == ["fused", "int8", "int8-aggressive", "onnx"]  # the front first (the legend icon)
    assert list(ort.marker.opacity) == [1.0, 1.0, 1.0, 0.45]  # onnx is dominated by fused
    assert list(ort.marker.symbol) == ["circle", "circle", "x", "circle"]
    assert [c[1] for c in ort.customdata] == ["on the front", "on the front", "gate failed", "dominated"]
    assert ort.marker.color == F.RUNTIME_COLORS["onnxruntime"] != by_name["torch"].marker.color
    assert list(by_name["Pareto front"].x) == [7.0, 8.0, 16.0]
    assert fig.layout.xaxis.type == "linear"  # 7..40 ms: no log axis needed


def test_waterfall_figure_has_both_metrics_and_a_total():
    fig = F.waterfall_figure(make_ledger(), "demo")
    assert [t.type for t in fig.data] == ["waterfall", "waterfall"]
    lat = fig.data[0]
    assert list(lat.measure) == ["absolute"] + ["relative"] * 4 + ["total"]
    assert lat.text[1] == "−20 ms (−50.0%)" and lat.x[-1] == "total (int8-aggressive)"
    assert "Incremental waterfall: demo" in fig.layout.title.text
    assert "onnxruntime 1.31.1" in fig.layout.title.text and "2 threads" in fig.layout.title.text


def test_layer_rows_and_op_type_table():
    prof = {"nodes": [{"name": f"n{i}", "op_type": "MatMul" if i % 2 else "Add", "ms": 10 - i, "share": 0.05}
                      for i in range(10)],
            "op_types": [{"op_type": f"Op{i}", "nodes": 1, "ms": 20 - i, "share": 0.05} for i in range(15)]}
    assert [r["name"] for r in F.layer_rows(prof, 3)] == ["n0", "n1", "n2"]
    order = F.op_type_order({"a": prof}, top=12)
    assert order[:2] == ["Op0", "Op1"] and order[-1] == "other" and len(order) == 13
    table = F.op_type_table(prof, order)
    assert table["other"]["ms"] == pytest.approx(sum(20 - i for i in range(12, 15)))
    assert F.short_names(["x" * 50 + "a", "y" * 50 + "a", "x" * 50 + "a"], 10) == \
        ["…xxxxxxxxa", "…yyyyyyyya", "…xxxxxxxxa #2"]


def test_environment_rows_and_caption():
    rows = dict(F.environment_rows(make_ledger()))
    assert rows["CPU"] == "Test CPU 9000" and "avx512_vnni" in rows["ISA flags"]
    assert rows["intra-op threads"] == "2" and rows["target"] == "cpu-avx512-vnni"
    assert "onnxruntime 1.31.1" in rows["runtimes timed"] and "torch 2.13.0+cpu" in rows["runtimes timed"]
    assert "edgeopt 0.1.0" in rows["versions"]
    cap = F.caption(make_ledger())
    assert cap.startswith("onnxruntime 1.31.1, torch 2.13.0+cpu · 2 threads · x 1×16 · Test CPU 9000")


def test_waterfall_follows_the_branch_to_the_best_stage():
    from edgeopt.ledger import Latency, Ledger, Stage
    from edgeopt.report.figures import lineage, waterfall_steps

    def st(name, parent, ms):
        return Stage(name=name, parent=parent, **{"pass": None if parent is None else "p"},
                     latency_ms=Latency(p50=ms, p90=ms, p99=ms, mean=ms, std=0, n=3, runtime="x", threads=1))

    led = Ledger(stages=[st("baseline", None, 10), st("onnx", "baseline", 8), st("fused", "onnx", 7),
                         st("ov", "onnx", 4), st("ov-int8", "ov", 2)], best="ov-int8")
    assert [s.name for s in lineage(led)] == ["baseline", "onnx", "ov", "ov-int8"]
    steps = waterfall_steps(led, "latency")
    assert [s.delta for s in steps[1:]] == [-2, -4, -2]  # "ov" is measured against its parent, not "fused"


def _runtime_ledger():
    """Stages on three runtimes, plus a Core ML stage that this host cannot time."""
    led = make_ledger(stages=(
        ("onnx", "convert.onnx", "onnxruntime", 20.0, 200.0, 9_000_000, 0.99999, True),
        ("int8", "graph.quantize_dynamic", "onnxruntime", 9.0, 120.0, 2_300_000, 0.992, True),
        ("litert", "convert.litert", "litert", 15.0, 150.0, 9_000_000, 0.99999, True),
        ("litert-int8", "convert.litert", "litert", 8.0, 110.0, 2_400_000, 0.990, True),
        ("ncnn", "convert.ncnn", "ncnn", 12.0, 100.0, 9_000_000, 0.99998, True),
    ), best="litert-int8")
    core = make_stage("coreml", "convert.coreml", "coreml", 1.0, None, 4_500_000, 1.0, True)
    core.latency_ms, core.fidelity, core.gate, core.energy_mj = None, None, None, None
    core.artifact["kind"] = "coreml"
    core.notes["not_measured"] = "Core ML runs only on Apple platforms: not measured on this host"
    led.put(core)
    return led


def test_pareto_points_keep_each_stage_runtime():
    points, _ = F.pareto_points([("m", _runtime_ledger())])
    by = {p.stage: p for p in points}
    assert by["litert"].runtime == "litert" and by["ncnn"].runtime == "ncnn" and by["int8"].runtime == "onnxruntime"
    assert by["coreml"].runtime == "coreml" and "Apple" in by["coreml"].not_measured
    assert by["coreml"].latency_ms is None and by["litert"].not_measured is None
    assert F.runtimes_of(points) == ["onnxruntime", "litert", "ncnn", "coreml"]


@pytest.mark.parametrize("x", ["latency_ms", "size_mb"])
def test_pareto_figure_runtime_dropdown_shows_one_runtime_at_a_time(x):
    fig = F.pareto_figure([("m", _runtime_ledger())], x)
    (menu,) = fig.layout.updatemenus
    labels = [b.label for b in menu.buttons]
    assert labels == ["runtime: all", "runtime: onnxruntime", "runtime: litert", "runtime: ncnn"]
    names = [t.name for t in fig.data]
    # the legend toggles runtimes: one legend entry per runtime, plus the overall front
    assert [t.name for t in fig.data if t.showlegend is not False] == ["Pareto front", "onnxruntime", "litert", "ncnn"]
    vis = dict(zip(names, menu.buttons[2].args[0]["visible"]))  # "runtime: litert"
    assert {n for n, v in vis.items() if v} == {"litert", "front (litert)"}
    front = next(t for t in fig.data if t.name == "front (litert)")
    assert list(front.x) == sorted(front.x) and set(front.x) <= set(next(t for t in fig.data if t.name == "litert").x)
    shown_all = {n for n, v in zip(names, menu.buttons[0].args[0]["visible"]) if v}
    assert shown_all == {"Pareto front", "onnxruntime", "litert", "ncnn"}
    # every button's visibility list covers every trace
    assert all(len(b.args[0]["visible"]) == len(fig.data) for b in menu.buttons)
    # Core ML has no latency here: named in the subtitle, not dropped silently, and not a runtime to pick
    assert "not measured on this host: coreml" in fig.layout.title.text
    assert "coreml" not in names and "not plotted" not in fig.layout.title.text


def test_pareto_figure_per_runtime_front_is_recomputed_among_its_points():
    led = _runtime_ledger()
    fig = F.pareto_figure([("m", led)], "latency_ms")
    by = {t.name: t for t in fig.data}
    # among ORT's own points its fp32 export is on the front; among all runtimes LiteRT fp32 (as faithful,
    # faster) dominates it
    assert list(by["front (onnxruntime)"].x) == [9.0, 20.0]
    assert list(by["front (litert)"].x) == [8.0, 15.0]
    assert list(by["Pareto front"].x) == [8.0, 9.0, 12.0, 15.0]


def test_pareto_figure_with_one_runtime_has_no_dropdown():
    led = make_ledger(stages=tuple(s for s in DEFAULT_STAGES if s[2] == "onnxruntime"))
    fig = F.pareto_figure([("demo", led)], "latency_ms")
    assert not fig.layout.updatemenus
    assert [t.name for t in fig.data] == ["Pareto front", "onnxruntime"]


def test_llm_speeds_and_figure():
    led = make_llm_ledger()
    rows = F.llm_speeds(led)
    assert [r.stage for r in rows] == ["baseline", "litert", "litert-int8", "litert-int4"]
    int8 = rows[2]
    assert (int8.decode_tok_s, int8.prefill_tok_s, int8.runtime, int8.gate_passed) == (120.0, 2600.0, "litert", True)
    assert int8.ceiling_tok_s == pytest.approx(40e9 / 140e6) and int8.bandwidth_pct == pytest.approx(42, abs=0.1)
    fig = F.llm_speed_figure(led, "demo-llm")
    decode, prefill, ceiling = fig.data
    assert (decode.type, prefill.type, ceiling.type) == ("bar", "bar", "scatter")
    assert list(decode.x) == list(prefill.x) == list(ceiling.x) == [r.stage for r in rows]
    assert list(decode.y) == [40.0, 60.0, 120.0, 150.0] and list(prefill.y) == [900.0, 1500.0, 2600.0, 2000.0]
    assert ceiling.offsetgroup == decode.offsetgroup  # the ceiling sits over its decode bar
    assert fig.layout.barmode == "group" and fig.layout.yaxis.type == "log"  # 40 to 2600 tok/s: more than 20×
    assert decode.marker.color[3] == F.FAILED and "failed its fidelity gate (litert-int4)" in fig.layout.title.text
    assert "copy bandwidth 40.0 GB/s" in fig.layout.title.text and "prompt 128 tokens" in fig.layout.title.text
    assert F.llm_speeds(make_ledger()) == []


def test_pareto_of_an_llm_run_is_decode_ms_per_token_against_top1_agreement():
    runs = [("llm", make_llm_ledger())]
    assert F.quality_metric(runs)[0] == "fidelity.top1_agreement"
    assert F.quality_metric([("x", make_ledger())])[0] == "fidelity.mean_cosine"
    pts, _ = F.pareto_points(runs)
    assert [(p.stage, round(p.latency_ms, 2), p.quality) for p in pts][2] == ("litert-int8", 8.33, 0.97)
    fig = F.pareto_figure(runs, "latency_ms")
    assert fig.layout.xaxis.title.text == "decode latency p50 (ms per token)"
    assert F.latency_title([("x", make_ledger())]) == "latency p50 (ms)"
    wf = F.waterfall_figure(make_llm_ledger())
    assert wf.layout.annotations[0].text == "decode latency p50 (ms per token)"
