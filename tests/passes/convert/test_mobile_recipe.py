"""The mobile recipe end to end: one PyTorch CNN on ONNX Runtime, LiteRT, ncnn and Core ML in one ledger, timed side
by side on the simulated mobile-cpu target, Core ML kept but not timed on this host."""

from __future__ import annotations

import pytest

from edgeopt.recipe import load_recipe

pytest.importorskip("ai_edge_litert")
pytest.importorskip("ncnn")
pytest.importorskip("coremltools")


def test_bundled_mobile_recipe_validates():
    r = load_recipe("mobile")
    assert r.target == "mobile-cpu"
    assert [s.pass_name for s in r.passes].count("convert.litert") == 3
    assert {s.pass_name for s in r.passes} >= {"convert.ncnn", "convert.coreml", "graph.quantize_static"}


@pytest.mark.slow
def test_mobile_recipe_compares_the_runtimes_in_one_ledger(tiny_digits_resnet, tmp_path):
    """The bundled recipe's passes and measurement on a tiny trained digits CNN (the converters take minutes on
    the zoo model's ~0.9M parameters; tests/passes/convert converts that one to each runtime once)."""
    from edgeopt.pipeline import optimize

    recipe = load_recipe("mobile").to_dict()
    recipe["data"] = {"calibration": "zoo:digits[train][:32]", "eval": "zoo:digits[test][:64]"}
    recipe["measure"] = {"threads": 1, "batch": 1, "warmup": 1, "runs": 6, "block": 2, "settle": 0, "memory": False,
                         "energy": False}
    for step in recipe["passes"]:
        cfg = next(iter(step.values()))
        if "samples" in cfg:
            cfg["samples"] = 16
    led = optimize(tiny_digits_resnet, recipe=recipe, out=tmp_path / "run", progress=False).ledger
    st = {s.name: s for s in led.stages}
    assert list(st) == ["baseline", "onnx", "ort-int8", "litert", "litert-int8-dynamic", "litert-int8", "ncnn", "coreml"]
    runtimes = {n: s.latency_ms.runtime for n, s in st.items() if s.latency_ms}
    assert runtimes["litert"] == runtimes["litert-int8"] == "litert" and runtimes["ncnn"] == "ncnn"
    assert runtimes["onnx"] == "onnxruntime" and "coreml" not in runtimes
    base_acc = st["baseline"].accuracy["top1"]
    for n in ("onnx", "litert", "ncnn"):  # fp32 exports: the same predictions
        assert st[n].accuracy["top1"] == pytest.approx(base_acc, abs=1 / 64), n
        assert st[n].fidelity["min_cosine"] > 0.9999, n
    assert st["litert-int8"].artifact["size_bytes"] < 0.5 * st["litert"].artifact["size_bytes"]
    assert "Apple" in st["coreml"].notes["not_measured"] and st["coreml"].fidelity is None
    assert led.environment["simulation"]["threads"] == 1 and "simulat" in led.environment["simulation"]["note"]
    assert led.best in runtimes
    md = (tmp_path / "run" / "report.md").read_text()
    assert "not measured on this host" in md and "| litert " in md.replace("|litert", "| litert ")
    html = (tmp_path / "run" / "report.html").read_text()
    assert "class='unmeasured'" in html
