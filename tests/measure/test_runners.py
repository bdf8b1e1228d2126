"""Runners give the same outputs as direct ONNX Runtime / torch calls and apply the session settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import run_onnx

from edgeopt.artifact import Artifact, InputSpec
from edgeopt.errors import InputError
from edgeopt.measure.runners import OrtRunner, Runner, TorchRunner, make_runner


def _options(runner: OrtRunner):
    return runner._sess.get_session_options()


def test_onnx_runner_matches_direct_onnxruntime(tiny_bert_onnx, tiny_bert_feeds):
    runner = make_runner(tiny_bert_onnx, threads=1)
    assert isinstance(runner, Runner) and runner.name == "onnxruntime"
    want = run_onnx(tiny_bert_onnx.path, tiny_bert_feeds)
    got = [runner.run(f)[0] for f in tiny_bert_feeds]
    runner.close()
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)


def test_torch_runner_matches_direct_torch(tiny_mlp_torch, tiny_mlp_feeds):
    runner = make_runner(tiny_mlp_torch, threads=1)
    assert isinstance(runner, Runner) and runner.name == "torch"
    for f in tiny_mlp_feeds:
        with torch.no_grad():
            want = tiny_mlp_torch.module(torch.from_numpy(f["x"])).numpy()
        got = runner.run(f)
        assert len(got) == 1 and isinstance(got[0], np.ndarray)
        np.testing.assert_array_equal(got[0], want)


def test_torch_and_onnx_runners_agree_on_bert(tiny_bert_torch, tiny_bert_onnx, tiny_bert_feeds):
    rt, ro = make_runner(tiny_bert_torch, 1), make_runner(tiny_bert_onnx, 1)
    for f in tiny_bert_feeds[:3]:
        np.testing.assert_allclose(rt.run(f)[0], ro.run(f)[0], atol=1e-5)


def test_torch_runner_feeds_inputs_in_forward_order(tiny_bert_torch, tiny_bert_feeds):
    """The feed is a dict; the module receives its tensors in meta['input_names'] order, whatever the dict order."""
    f = tiny_bert_feeds[0]
    shuffled = {k: f[k] for k in reversed(list(f))}
    r = make_runner(tiny_bert_torch, 1)
    np.testing.assert_array_equal(r.run(shuffled)[0], r.run(f)[0])


def test_torch_runner_pins_threads_and_restores_them_on_close(tiny_mlp_torch, tiny_mlp_feeds):
    torch.set_num_threads(1)
    r = make_runner(tiny_mlp_torch, threads=2)
    r.run(tiny_mlp_feeds[0])
    assert torch.get_num_threads() == 2
    r.close()
    assert torch.get_num_threads() == 1
    with pytest.raises(InputError, match="closed"):
        r.run(tiny_mlp_feeds[0])


def test_torch_runner_flattens_tuple_and_dict_outputs():
    class Two(torch.nn.Module):
        def forward(self, x):
            return {"a": x + 1, "b": (x * 2, None, x.to(torch.bfloat16))}

    r = TorchRunner(Two(), ["x"], threads=1)
    out = r.run({"x": np.ones((1, 2), np.float32)})
    assert [o.tolist() for o in out] == [[[2, 2]], [[2, 2]], [[1, 1]]]
    assert out[2].dtype == np.float32


def test_session_defaults_no_spinning_sequential_one_inter_op(tiny_mlp_onnx):
    import onnxruntime as ort

    r = make_runner(tiny_mlp_onnx, threads=2)
    so = _options(r)
    assert so.intra_op_num_threads == 2 and so.inter_op_num_threads == 1 and r.threads == 2
    assert so.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.log_severity_level == 3
    spinning = make_runner(tiny_mlp_onnx, threads=2, spinning=True)
    assert _options(spinning).get_session_config_entry("session.intra_op.allow_spinning") == "1"


def test_session_dict_and_meta_session_are_applied(tiny_mlp_onnx, tiny_mlp_feeds):
    import onnxruntime as ort

    r = make_runner(tiny_mlp_onnx, threads=2, session={"threads": 1, "graph_optimization_level": "basic",
                                                         "provider": "cpu"})
    so = _options(r)
    assert r.threads == 1 and so.intra_op_num_threads == 1
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert r._sess.get_providers() == ["CPUExecutionProvider"]
    tuned = Artifact.from_onnx(tiny_mlp_onnx.path, meta={"session": {"graph_optimization_level": "disable"}})
    r2 = make_runner(tuned, threads=2)
    assert _options(r2).graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    np.testing.assert_allclose(r2.run(tiny_mlp_feeds[0])[0], r.run(tiny_mlp_feeds[0])[0], atol=1e-6)
    # an explicit session wins over the artifact's
    r3 = make_runner(tuned, threads=2, session={"graph_optimization_level": "extended"})
    assert _options(r3).graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED


@pytest.mark.parametrize("session, match", [
    ({"graph_optimization_level": "turbo"}, "graph_optimization_level 'turbo'"),
    ({"provider": "NoSuchExecutionProvider"}, "'NoSuchExecutionProvider' is not available"),
    ({"thread": 2}, "unknown session setting 'thread'"),
])
def test_bad_session_settings_are_one_line_input_errors(tiny_mlp_onnx, session, match):
    with pytest.raises(InputError, match=match):
        make_runner(tiny_mlp_onnx, threads=1, session=session)


def test_corrupt_onnx_file_is_input_error_naming_it(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"\x08\x07garbage that is not a protobuf" * 10)
    art = Artifact(kind="onnx", path=bad, input_spec=InputSpec(()), sha256="0", size_bytes=bad.stat().st_size)
    with pytest.raises(InputError) as e:
        make_runner(art, threads=1)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)
    missing = Artifact(kind="onnx", path=tmp_path / "nope.onnx", input_spec=InputSpec(()), sha256="0", size_bytes=0)
    with pytest.raises(InputError, match="nope.onnx: no such model file"):
        make_runner(missing, threads=1)


def test_unknown_kind_and_missing_module_are_input_errors(tiny_mlp_torch):
    tfl = Artifact(kind="tflite", path=None, input_spec=InputSpec(()), sha256="0", size_bytes=0)
    with pytest.raises(InputError, match="no runner for 'tflite'"):
        make_runner(tfl, threads=1)
    no_module = Artifact(kind="torch", path=None, input_spec=tiny_mlp_torch.input_spec, sha256="0", size_bytes=0)
    with pytest.raises(InputError, match="no live module"):
        make_runner(no_module, threads=1)


def test_feed_without_an_input_names_it(tiny_mlp_onnx, tiny_mlp_torch):
    for art in (tiny_mlp_onnx, tiny_mlp_torch):
        with pytest.raises(InputError, match="feed has no input 'x'"):
            make_runner(art, 1).run({"y": np.zeros((1, 16), np.float32)})


def test_wrong_dtype_is_one_line_input_error(tiny_mlp_onnx):
    with pytest.raises(InputError, match="run failed") as e:
        make_runner(tiny_mlp_onnx, 1).run({"x": np.zeros((1, 16), np.int64)})
    assert "\n" not in str(e.value)


def test_openvino_static_shapes_still_run_a_shorter_last_batch(tmp_path, tiny_cnn_onnx):
    pytest.importorskip("openvino")
    from edgeopt.passes.base import PassContext, build_pass
    from edgeopt.recipe import MeasureSpec

    ov_art = build_pass("convert.openvino", {"static_shapes": True, "precision": "f32"})(
        tiny_cnn_onnx, PassContext(stage_dir=tmp_path / "ov", measure=MeasureSpec(batch=4)))
    ref = make_runner(tiny_cnn_onnx, threads=1)
    r = make_runner(ov_art, threads=1)
    rng = np.random.default_rng(0)
    for n in (4, 3, 4):  # the static batch, a shorter last batch, the static batch again
        feed = {"x": rng.standard_normal((n, 3, 16, 16)).astype(np.float32)}
        np.testing.assert_allclose(r.run(feed)[0], ref.run(feed)[0], rtol=1e-3, atol=1e-4)
    assert ov_art.meta["openvino"]["static_shapes"]["x"][0] == 4
    r.close()
    ref.close()
