"""session.tune: measured choice of threads / optimization level / provider; model copied unchanged."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from helpers import run_onnx

from edgeopt.artifact import Artifact, sha256_file
from edgeopt.errors import PassError, RecipeError
from edgeopt.passes.base import PassContext, build_pass, registry
from edgeopt.passes.graph.session import _thread_candidates, session_options, session_providers
from edgeopt.target import get_target

FAST = {"runs": 3, "warmup": 1}


def _run_with_meta(art: Artifact, feeds):
    import onnxruntime as ort

    meta = art.meta["session"]
    sess = ort.InferenceSession(str(art.path), session_options(meta), providers=session_providers(meta))
    return [sess.run(None, f)[0] for f in feeds]


def test_registered():
    assert "session.tune" in registry()


def test_tune_copies_model_and_records_choice(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    before = sha256_file(tiny_mlp_onnx.path)
    target = get_target("cpu")
    ctx = PassContext(stage_dir=tmp_path / "stage", target=target, calibration=tiny_mlp_feeds)
    out = build_pass("session.tune", {**FAST, "levels": ["basic", "all"]})(tiny_mlp_onnx, ctx)

    # a new file in the stage folder, byte-identical to the input, which is untouched
    assert out.path.parent == tmp_path / "stage" and out.path != tiny_mlp_onnx.path
    assert out.path.read_bytes() == tiny_mlp_onnx.path.read_bytes()
    assert sha256_file(tiny_mlp_onnx.path) == before and out.sha256 == before
    assert out.kind == "onnx" and out.input_spec == tiny_mlp_onnx.input_spec

    s = out.meta["session"]
    assert set(s) == {"threads", "graph_optimization_level", "provider"}
    assert 1 <= s["threads"] <= target.cores
    assert s["graph_optimization_level"] in ("basic", "all")
    assert s["provider"] == "CPUExecutionProvider"
    assert "session" not in tiny_mlp_onnx.meta  # the input artifact's meta is not mutated

    notes = ctx.notes["session_tune"]
    table = notes["table"]
    assert len(table) == target.cores * 2  # threads 1..cores x 2 levels x 1 provider
    assert {(r["threads"], r["graph_optimization_level"]) for r in table} == {
        (t, lv) for t in range(1, target.cores + 1) for lv in ("basic", "all")}
    assert all(r["n"] == 3 and r["p50_ms"] > 0 and r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] for r in table)
    best = min(table, key=lambda r: r["p50_ms"])
    assert (best["threads"], best["graph_optimization_level"], best["provider"]) == (
        s["threads"], s["graph_optimization_level"], s["provider"])
    assert notes["feed_shapes"] == {"x": [2, 16]}

    # the tuned session computes the same outputs as the untouched model
    ref = run_onnx(tiny_mlp_onnx.path, tiny_mlp_feeds)
    got = _run_with_meta(out, tiny_mlp_feeds)
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_tune_random_feed_from_measure_settings(tmp_path, tiny_bert_onnx, tiny_bert_feeds):
    ctx = PassContext(stage_dir=tmp_path, target=get_target("cpu"), measure={"batch": 1, "seq_len": 16})
    out = build_pass("session.tune", {**FAST, "threads": [1], "levels": ["extended"]})(tiny_bert_onnx, ctx)
    assert out.meta["session"] == {"threads": 1, "graph_optimization_level": "extended",
                                   "provider": "CPUExecutionProvider"}
    assert all(shape == [1, 16] for shape in ctx.notes["session_tune"]["feed_shapes"].values())
    ref = run_onnx(tiny_bert_onnx.path, tiny_bert_feeds[:2])
    got = _run_with_meta(out, tiny_bert_feeds[:2])
    for a, b in zip(ref, got):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_tune_keeps_external_data(tmp_path, tiny_cnn_onnx):
    import onnx

    src = tmp_path / "src"
    src.mkdir()
    model = onnx.load(str(tiny_cnn_onnx.path))
    onnx.save_model(model, str(src / "cnn.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="cnn.onnx.data", size_threshold=0)
    art = Artifact.from_onnx(src / "cnn.onnx")
    before = sha256_file(art.path)
    ctx = PassContext(stage_dir=tmp_path / "stage", target=get_target("cpu"))
    out = build_pass("session.tune", {**FAST, "threads": [1], "levels": ["all"]})(art, ctx)
    assert (tmp_path / "stage" / "cnn.onnx.data").read_bytes() == (src / "cnn.onnx.data").read_bytes()
    assert out.sha256 == before == sha256_file(art.path)
    assert out.size_bytes == art.size_bytes
    feeds = [{"x": np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype(np.float32)}]
    np.testing.assert_allclose(run_onnx(art.path, feeds)[0], _run_with_meta(out, feeds)[0], rtol=1e-5, atol=1e-6)


def test_thread_counts_above_cores_are_skipped(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    one_core = dataclasses.replace(get_target("cpu"), cores=1, threads=1)
    ctx = PassContext(stage_dir=tmp_path, target=one_core, calibration=tiny_mlp_feeds)
    out = build_pass("session.tune", {**FAST, "threads": [1, 4], "levels": ["basic"]})(tiny_mlp_onnx, ctx)
    assert out.meta["session"]["threads"] == 1
    assert [r["threads"] for r in ctx.notes["session_tune"]["table"]] == [1]
    assert any("[4]" in w for w in ctx.warnings)
    with pytest.raises(PassError, match="cores"):
        build_pass("session.tune", {**FAST, "threads": [3]})(tiny_mlp_onnx, PassContext(stage_dir=tmp_path / "b",
                                                                                         target=one_core))


def test_missing_provider_is_refused(tmp_path, tiny_mlp_onnx):
    ctx = PassContext(stage_dir=tmp_path, target=get_target("cpu"))
    with pytest.raises(PassError) as e:
        build_pass("session.tune", {**FAST, "providers": ["NoSuchExecutionProvider"]})(tiny_mlp_onnx, ctx)
    assert "NoSuchExecutionProvider" in str(e.value) and "CPUExecutionProvider" in str(e.value)


@pytest.mark.parametrize("values, field", [
    ({"runs": 2}, "runs"),
    ({"warmup": -1}, "warmup"),
    ({"threads": [0, 2]}, "threads"),
    ({"threads": []}, "threads"),
    ({"levels": ["fast"]}, "levels"),
    ({"levels": []}, "levels"),
    ({"providers": []}, "providers"),
    ({"thread": [1]}, "thread"),
])
def test_bad_config_names_the_field(values, field):
    with pytest.raises(RecipeError) as e:
        build_pass("session.tune", values)
    assert field in str(e.value) and "session.tune" in str(e.value)


def test_session_options_from_meta():
    import onnxruntime as ort

    meta = {"threads": 3, "graph_optimization_level": "extended", "provider": "CPUExecutionProvider"}
    so = session_options(meta)
    assert so.intra_op_num_threads == 3
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    assert session_options(meta, 1).intra_op_num_threads == 3  # the tuned count wins, as in OrtRunner
    assert session_options({"graph_optimization_level": "all"}, 2).intra_op_num_threads == 2
    assert session_options(None, 2).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    quiet = session_options({"graph_optimization_level": "basic"}, 2, allow_spinning=False)
    assert quiet.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert quiet.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    with pytest.raises(ValueError, match="graph_optimization_level"):
        session_options({"graph_optimization_level": "max"})
    assert session_providers(meta) == ["CPUExecutionProvider"]
    assert session_providers({"provider": "CUDAExecutionProvider"}) == ["CUDAExecutionProvider", "CPUExecutionProvider"]


def test_thread_candidates():
    assert _thread_candidates(2, 2) == [1, 2]
    assert _thread_candidates(8, 8) == list(range(1, 9))
    assert _thread_candidates(48, 16) == [1, 2, 4, 8, 16, 32, 48]
    assert _thread_candidates(1, 1) == [1]


def test_input_without_file_is_refused(tmp_path, tiny_mlp_onnx):
    gone = dataclasses.replace(tiny_mlp_onnx, path=Path(tmp_path / "missing.onnx"))
    with pytest.raises(PassError, match="file on disk"):
        build_pass("session.tune", FAST)(gone, PassContext(stage_dir=tmp_path / "s", target=get_target("cpu")))


@pytest.mark.parametrize("target", [None, "cpu-avx2"])
def test_target_from_name_or_detected(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds, target):
    ctx = PassContext(stage_dir=tmp_path, target=target, calibration=tiny_mlp_feeds)
    out = build_pass("session.tune", {**FAST, "levels": ["all"]})(tiny_mlp_onnx, ctx)
    expected = get_target(target or "auto")
    assert ctx.notes["session_tune"]["target"] == expected.name
    assert len(ctx.notes["session_tune"]["table"]) == expected.cores
    assert out.meta["session"]["threads"] <= expected.cores


def test_tuned_session_does_not_follow_a_changed_model(tmp_path, tiny_mlp_onnx, tiny_mlp_feeds):
    from edgeopt.passes.base import PassContext, build_pass

    ctx = PassContext(stage_dir=tmp_path / "t", calibration=tiny_mlp_feeds)
    tuned = build_pass("session.tune", {"threads": [1], "levels": ["basic"], "runs": 3, "warmup": 0})(tiny_mlp_onnx, ctx)
    assert tuned.meta["session"]["threads"] == 1
    q = build_pass("graph.quantize_dynamic", {})(tuned, PassContext(stage_dir=tmp_path / "q"))
    assert "session" not in q.meta
