"""Preflight: dynamic shapes, threads vs cores, warm-up, runs, load, spinning and the frequency governor."""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from onnx import TensorProto, helper

from edgeopt.analyze import preflight as pf
from edgeopt.analyze.preflight import preflight, usable_cores
from edgeopt.artifact import Artifact
from edgeopt.errors import InputError


@pytest.fixture()
def quiet_machine(monkeypatch):
    """An idle machine with a performance governor, so only the condition under test shows."""
    monkeypatch.setattr(pf, "_load1", lambda: 0.0)
    monkeypatch.setattr(pf, "_governors", lambda: {"performance": [0]})


@pytest.fixture(scope="module")
def static_onnx(tmp_path_factory):
    """Relu on a fixed 2×16 input."""
    import onnx

    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 16])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    path = tmp_path_factory.mktemp("static") / "model.onnx"
    onnx.save(m, str(path))
    return Artifact.from_onnx(path)


def _kinds(lines: list[str]) -> list[str]:
    return [line.split(":", 1)[0] for line in lines]


def test_dynamic_shapes_flagged(quiet_machine, tiny_mlp_onnx, tiny_mlp_feeds, static_onnx):
    cores = usable_cores()
    lines = preflight(tiny_mlp_onnx, feed=tiny_mlp_feeds[0], target="auto", threads=cores, warmup=5, runs=50,
                      probe=False)
    (shape,) = [ln for ln in lines if ln.startswith("shapes:")]
    assert "'x'" in shape and "batch" in shape and "2×16" in shape and "make_dynamic_shape_fixed" in shape
    feed = {"x": np.ones((2, 16), np.float32)}
    assert preflight(static_onnx, feed=feed, target="auto", threads=cores, warmup=5, runs=50, probe=False) == []


def test_openvino_dynamic_unless_static_settings(quiet_machine, tiny_mlp_onnx, tiny_mlp_feeds, tmp_path):
    from edgeopt.passes.base import PassContext, build_pass

    ov = build_pass("convert.openvino", {"precision": "f32"})(tiny_mlp_onnx, PassContext(stage_dir=tmp_path))
    kw = dict(feed=tiny_mlp_feeds[0], target="auto", threads=usable_cores(), warmup=5, runs=50, probe=False)
    assert "static_shapes: true" in " ".join(preflight(ov, **kw))
    static = dataclasses.replace(ov, meta={**ov.meta, "openvino": {"precision": "f32", "static_shapes": {"x": [2, 16]}}})
    assert "shapes" not in _kinds(preflight(static, **kw))


def test_threads_against_cores(quiet_machine, static_onnx, monkeypatch):
    feed = {"x": np.ones((2, 16), np.float32)}
    cores = usable_cores()
    lines = preflight(static_onnx, feed=feed, target="auto", threads=cores + 1, warmup=5, runs=50, probe=False)
    (line,) = [ln for ln in lines if ln.startswith("threads:")]
    assert f"{cores + 1} intra-op threads on {cores} usable cores" in line and f"threads <= {cores}" in line

    monkeypatch.setattr(pf, "usable_cores", lambda: 4)  # an idle 4-core machine timed with 2 threads
    lines = preflight(static_onnx, feed=feed, target="auto", threads=2, warmup=5, runs=50, probe=False)
    assert any(ln.startswith("threads: 2 of 4 usable cores") for ln in lines)
    monkeypatch.setattr(pf, "_load1", lambda: 3.0)  # a busy one: fewer threads is the right call, load is flagged
    lines = preflight(static_onnx, feed=feed, target="auto", threads=2, warmup=5, runs=50, probe=False)
    assert _kinds(lines) == ["load"] and "3.00 on 4 usable cores" in lines[0]


def test_declared_target_with_fewer_cores(quiet_machine, static_onnx):
    from edgeopt.target import get_target

    phone = get_target("mobile-cpu")
    lines = preflight(static_onnx, feed={"x": np.ones((2, 16), np.float32)}, target=phone,
                      threads=phone.cores + 1, warmup=5, runs=50, probe=False)
    assert any(f"target mobile-cpu has {phone.cores} cores" in ln for ln in lines)


def test_warmup_and_runs(quiet_machine, static_onnx):
    feed = {"x": np.ones((2, 16), np.float32)}
    lines = preflight(static_onnx, feed=feed, target="auto", threads=usable_cores(), warmup=0, runs=5)
    assert _kinds(lines) == ["warm-up", "runs"]
    assert "0 untimed calls (< 3)" in lines[0] and "warmup >= 3" in lines[0]
    assert "runs >= 20" in lines[1]


def test_slow_first_timed_call_after_warmup(quiet_machine, static_onnx, monkeypatch):
    calls = []

    class ColdRunner:  # five slow calls, then fast: 3 warm-up calls are not enough
        def run(self, feed):
            calls.append(1)
            if len(calls) <= 5:
                time.sleep(0.03)

        def close(self):
            pass

    monkeypatch.setattr(pf, "make_runner", lambda art, threads, spinning=False: ColdRunner())
    lines = preflight(static_onnx, feed={"x": np.ones((2, 16), np.float32)}, target="auto", threads=usable_cores(),
                      warmup=3, runs=50)
    (line,) = lines
    assert line.startswith("warm-up: after 3 warm-up calls the first timed call took") and "raise warmup" in line
    assert len(calls) == 3 + pf.PROBE_STEADY


def test_spinning_and_governor(quiet_machine, static_onnx, monkeypatch):
    kw = dict(feed={"x": np.ones((2, 16), np.float32)}, target="auto", threads=usable_cores(), warmup=5, runs=50,
              probe=False)
    assert _kinds(preflight(static_onnx, spinning=True, **kw)) == ["spinning"]
    assert preflight(static_onnx, spinning=False, **kw) == []
    monkeypatch.setattr(pf, "_governors", lambda: {"powersave": [0, 1], "performance": [2]})
    (line,) = preflight(static_onnx, **kw)
    assert line.startswith("cpu frequency: governor 'powersave' on cpu 0,1") and "performance" in line


def test_torch_model_is_probed(quiet_machine, tiny_mlp_torch):
    feed = {"x": np.ones((2, 16), np.float32)}
    lines = preflight(tiny_mlp_torch, feed=feed, target="auto", threads=1, warmup=1, runs=50, spinning=True)
    assert "warm-up" in _kinds(lines) and "spinning" not in _kinds(lines)  # spinning is ONNX Runtime's


@pytest.mark.parametrize("bad", [{"threads": 0}, {"warmup": -1}, {"runs": 0}, {"feed": {}}, {"target": "tpu"}])
def test_bad_arguments(static_onnx, bad):
    kw = dict(feed={"x": np.ones((2, 16), np.float32)}, target="auto", threads=1, warmup=5, runs=50, probe=False)
    with pytest.raises(InputError):
        preflight(static_onnx, **{**kw, **bad})
    with pytest.raises(InputError):
        preflight("model.onnx", **kw)
