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
