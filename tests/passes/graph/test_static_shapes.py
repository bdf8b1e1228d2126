"""graph.static_shapes: dynamic input dims fixed to the data's shapes, the same outputs, refusals named."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import run_onnx

from edgeopt.errors import PassError
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.graph.static_shapes import dynamic_inputs


def test_dims_are_fixed_to_the_first_feed_and_outputs_are_unchanged(tiny_bert_onnx, tiny_bert_feeds, tmp_path):
    import onnx

    before = dynamic_inputs(onnx.load(str(tiny_bert_onnx.path)))
    assert before and all(isinstance(d, str) for shape in before.values() for d in shape[:2])
    ctx = PassContext(stage_dir=tmp_path, calibration=tiny_bert_feeds, evaluation=tiny_bert_feeds)
    out = build_pass("graph.static_shapes", {})(tiny_bert_onnx, ctx)
    model = onnx.load(str(out.path))
    assert dynamic_inputs(model) == {}
    assert ctx.notes["static_shapes"]["after"] == {n: [1, 16] for n in before}
    out_dims = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    assert out_dims[0] == 1 and all(d > 0 for d in out_dims)  # outputs re-inferred as static too
    for a, b in zip(run_onnx(tiny_bert_onnx.path, tiny_bert_feeds), run_onnx(out.path, tiny_bert_feeds)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_data_of_another_shape_and_a_static_model_are_refused(tiny_bert_onnx, tiny_bert_feeds, tmp_path):
    short = [{k: v[:, :8] for k, v in tiny_bert_feeds[0].items()}]
    ctx = PassContext(stage_dir=tmp_path / "a", calibration=tiny_bert_feeds[:2], evaluation=short)
    with pytest.raises(PassError, match=r"fixed to \[1, 16\], but feed 2 of the data has \[1, 8\]"):
        build_pass("graph.static_shapes", {})(tiny_bert_onnx, ctx)
    fixed = build_pass("graph.static_shapes", {"seq_len": 8})(tiny_bert_onnx, PassContext(stage_dir=tmp_path / "b"))
    with pytest.raises(PassError, match="already has a fixed shape"):
        build_pass("graph.static_shapes", {})(fixed, PassContext(stage_dir=tmp_path / "c"))


def test_a_smaller_last_batch_is_padded_by_the_runner(tiny_cnn_onnx, tmp_path):
    """Data of 11 images in batches of 4 ends with a batch of 3: the pass fixes batch 4 (only a data set's last
    batch may be smaller), and ONNX Runtime's runner pads that batch and returns 3 rows equal to the dynamic model's."""
    import onnx

    from edgeopt.measure.runners import OrtRunner

    x = np.random.default_rng(0).standard_normal((11, 3, 16, 16)).astype(np.float32)
    feeds = [{"x": x[i:i + 4]} for i in range(0, 11, 4)]
    assert [f["x"].shape[0] for f in feeds] == [4, 4, 3]
    ctx = PassContext(stage_dir=tmp_path / "a", calibration=feeds, evaluation=feeds)
    out = build_pass("graph.static_shapes", {})(tiny_cnn_onnx, ctx)
    assert dynamic_inputs(onnx.load(str(out.path))) == {} and ctx.notes["static_shapes"]["after"] == {"x": [4, 3, 16, 16]}
    with OrtRunner(out.path, 1) as fixed, OrtRunner(tiny_cnn_onnx.path, 1) as dynamic:
        assert fixed.fixed_batch == 4 and dynamic.fixed_batch is None
        for f in feeds:
            got, want = fixed.run(f)[0], dynamic.run(f)[0]
            assert got.shape == want.shape == (f["x"].shape[0], 4)
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    ragged_first = [feeds[2], feeds[0]]  # a small batch that is not the last: still refused
    with pytest.raises(PassError, match=r"fixed to \[3, 3, 16, 16\], but feed 1 of the data has \[4, 3, 16, 16\]"):
        build_pass("graph.static_shapes", {})(tiny_cnn_onnx, PassContext(stage_dir=tmp_path / "b", calibration=ragged_first))
