"""The live mode switcher: which passes a toggle combination runs, and real measurements on a small model."""

from __future__ import annotations

import pytest

from edgeopt.dashboard import live as L


def test_normalize_orders_toggles_and_implies_the_export():
    assert L.normalize({}, "torch") == {}
    assert L.normalize({"quantize": True, "fuse": False, "bogus": True}, "torch") == {"onnx": True, "quantize": True}
    assert list(L.normalize({"quantize": True, "attention": "sdpa", "fuse": True}, "torch")) == \
        ["attention", "onnx", "fuse", "quantize"]
    # an ONNX model is always in ONNX Runtime and has no PyTorch-level toggles
    assert L.normalize({"attention": "flash", "winograd": True}, "onnx") == {"onnx": True}


def test_steps_and_labels():
    s = L.normalize({"attention": "flash", "quantize": True}, "torch")
    assert L.steps(s) == [("attention", "kernels.attention", {"impl": "flash"}),
                          ("onnx", "convert.onnx", {}), ("quantize", "graph.quantize_dynamic", {})]
    assert L.label(s) == "attention=flash + onnx + int8"
    assert L.label({}) == "torch eager"
    assert L.label({}, "onnx") == "onnx"


def test_availability_by_model_kind():
    torch_av, onnx_av = L.availability("torch"), L.availability("onnx")
    assert set(torch_av) == {t.key for t in L.TOGGLES}
    assert torch_av["quantize"] is None and torch_av["fuse"] is None
    assert "already ONNX" in onnx_av["winograd"] and "always on" in onnx_av["onnx"]


def test_every_toggle_names_a_registered_pass():
    from edgeopt.passes.base import registry

    known = registry()
    for t in L.TOGGLES:
        if t.level != "torch":  # the kernel toggles are hooks: shown disabled until their pass is registered
            assert t.pass_name in known


def test_unknown_demo_model():
    from edgeopt.errors import InputError

    with pytest.raises(InputError, match="unknown demo model"):
        L.demo_model("demo:nope")


@pytest.fixture(scope="module")
def cnn_bench():
    bench = L.LiveBench("demo:tiny-cnn", threads=1)
    yield bench
    bench.close()


def test_measure_plain_then_int8_on_a_real_model(cnn_bench):
    plain = cnn_bench.measure({}, runs=5, warmup=1, memory=False, min_time_s=0)
    assert plain.label == "torch eager" and plain.runtime == "torch"
    assert plain.speedup == 1.0 and plain.cosine == pytest.approx(1.0) and plain.p50 > 0
    seen = []
    m = cnn_bench.measure({"quantize": True}, runs=5, warmup=1, memory=True, min_time_s=0,
                          progress=lambda f, msg: seen.append(msg))
    assert m.label == "onnx + int8" and m.runtime == "onnxruntime"
    assert m.p50 > 0 and m.p90 >= m.p50 and m.n >= 5
    assert m.throughput == pytest.approx(1000 / m.p50)
    assert m.speedup == pytest.approx(m.plain_p50 / m.p50)
    assert m.peak_mb is not None and m.peak_mb > 10
    assert m.cosine is not None and m.cosine > 0.95
    assert m.size_mb is not None and m.size_mb < cnn_bench.build({"onnx": True}).size_bytes / 1e6
    assert any("timing" in s for s in seen) and any("graph.quantize_dynamic" in s for s in seen)
    assert [h.label for h in cnn_bench.history] == ["torch eager", "onnx + int8"]


def test_variants_are_built_once(cnn_bench):
    a = cnn_bench.build({"onnx": True})
    assert cnn_bench.build({"onnx": True}) is a
    assert cnn_bench.build({"quantize": True}) is cnn_bench.build({"onnx": True, "quantize": True})


# ---------------------------------------------------------------------------------------- runtimes

def _all_installed(monkeypatch, missing: tuple[str, ...] = ()):
    """Pretend every runtime's modules import and its pass is registered, except the `missing` modules."""
    monkeypatch.setattr(L, "available", lambda m: m not in missing)
    monkeypatch.setattr(L, "registered", lambda name: True)


def test_runtimes_offered_for_a_torch_source_and_an_onnx_source(monkeypatch):
    _all_installed(monkeypatch)
    assert [r.key for r in L.RUNTIMES] == ["onnxruntime", "openvino", "litert", "ncnn"]
    assert L.runtime_availability("torch") == {"onnxruntime": None, "openvino": None, "litert": None, "ncnn": None}
    onnx = L.runtime_availability("onnx")
    assert onnx["onnxruntime"] is None and onnx["openvino"] is None
    assert onnx["litert"].startswith("needs the PyTorch model") and onnx["ncnn"].startswith("needs the PyTorch model")


def test_a_runtime_whose_modules_are_missing_is_offered_with_the_install_hint(monkeypatch):
    _all_installed(monkeypatch, missing=("openvino", "ai_edge_litert"))
    av = L.runtime_availability("torch")
    assert av["onnxruntime"] is None and av["ncnn"] is None
    assert "openvino" in av["openvino"] and "edgeopt[openvino]" in av["openvino"]
    assert "ai_edge_litert" in av["litert"] and "edgeopt[mobile]" in av["litert"]
    monkeypatch.setattr(L, "registered", lambda name: name != "convert.ncnn")
    monkeypatch.setattr(L, "available", lambda m: True)
    assert L.runtime_availability("torch")["ncnn"] == "pass convert.ncnn is not available in this edgeopt"


def test_normalize_steps_and_labels_with_a_runtime():
    # OpenVINO converts the ONNX export: it implies the export and comes after the graph passes
    ov = L.normalize({"runtime": "openvino", "quantize": True}, "torch")
    assert ov == {"onnx": True, "quantize": True, "runtime": "openvino"}
    assert L.steps(ov)[-1] == ("runtime", "convert.openvino", {})
    assert L.label(ov) == "onnx + int8 + openvino" and L.label({"runtime": "openvino"}, "onnx") == "onnx + openvino"
    # LiteRT and ncnn convert the PyTorch model: the ONNX-level toggles drop out, the kernel swaps stay
    lt = L.normalize({"runtime": "litert", "winograd": True, "onnx": True, "fuse": True}, "torch")
    assert lt == {"winograd": True, "runtime": "litert"}
    assert L.steps(lt) == [("winograd", "kernels.winograd", {"tile": 4}), ("runtime", "convert.litert", {})]
    assert L.label({"runtime": "ncnn"}) == "ncnn"
    # ...and on an ONNX source they fall back to ONNX Runtime; the default and unknown runtimes add nothing
    assert L.normalize({"runtime": "ncnn", "fuse": True}, "onnx") == {"onnx": True, "fuse": True}
    assert L.normalize({"runtime": "onnxruntime"}, "torch") == {} == L.normalize({"runtime": "tvm"}, "torch")


def test_toggle_availability_follows_the_runtime(monkeypatch):
    _all_installed(monkeypatch)
    lt = L.availability("torch", "litert")
    assert lt["winograd"] is None
    assert "not used with LiteRT" in lt["quantize"] and "not used with LiteRT" in lt["onnx"]
    assert "always on" in L.availability("torch", "openvino")["onnx"]
    assert L.availability("torch", "openvino")["quantize"] is None


def test_an_unavailable_runtime_is_refused_with_its_reason(cnn_bench, monkeypatch):
    from edgeopt.errors import InputError

    cnn_bench.load()
    monkeypatch.setattr(L, "available", lambda m: m != "ncnn")
    with pytest.raises(InputError, match="ncnn: needs ncnn, which is not installed"):
        cnn_bench.build({"runtime": "ncnn"})


def test_openvino_runtime_measures_an_openvino_artifact(cnn_bench):
    pytest.importorskip("openvino", reason="OpenVINO (the [openvino] extra) is not installed")
    m = cnn_bench.measure({"runtime": "openvino", "fuse": True}, runs=5, warmup=1, memory=False, min_time_s=0)
    art = cnn_bench.build({"runtime": "openvino", "fuse": True})
    assert art.kind == "openvino" and art.path.name == "model.xml"
    assert m.runtime == "openvino" and m.label == "onnx + fuse + openvino"
    assert m.settings == {"onnx": True, "fuse": True, "runtime": "openvino"}
    assert m.p50 > 0 and m.cosine is not None and m.cosine > 0.999
    # the ONNX prefix is shared with the ONNX Runtime variant (built once)
    assert cnn_bench.build({"fuse": True}) is cnn_bench._variants[(("onnx", True), ("fuse", True))]


@pytest.mark.parametrize("runtime, module, kind", [
    pytest.param("litert", "edgeopt.passes.convert.litert", "tflite", marks=pytest.mark.slow),  # litert-torch: ~15 s
    ("ncnn", "edgeopt.passes.convert.ncnn", "ncnn")])
def test_mobile_runtimes_convert_the_torch_model_and_measure_it(cnn_bench, runtime, module, kind):
    pytest.importorskip(module, reason=f"{module} is not in this edgeopt yet")
    why = L.runtime_availability("torch")[runtime]
    if why:
        pytest.skip(f"{runtime}: {why}")
    m = cnn_bench.measure({"runtime": runtime, "quantize": True}, runs=5, warmup=1, memory=False, min_time_s=0)
    art = cnn_bench.build({"runtime": runtime})
    assert art.kind == kind and m.runtime == runtime and m.label == runtime  # INT8 is an ONNX pass: left out
    assert m.p50 > 0 and m.cosine is not None and m.cosine > 0.999
