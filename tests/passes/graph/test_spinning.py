"""session.spinning: the setting travels in meta["session"] and the runners and session options follow it."""

from __future__ import annotations

from edgeopt.measure.runners import make_runner
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.graph.session import session_options


def test_the_runner_follows_the_models_spinning_setting(tiny_bert_onnx, tiny_bert_feeds, tmp_path):
    out = build_pass("session.spinning", {"spinning": False})(tiny_bert_onnx, PassContext(stage_dir=tmp_path))
    assert out.meta["session"] == {"spinning": False} and out.sha256 == tiny_bert_onnx.sha256
    r = make_runner(out, threads=1, spinning=True)  # the recipe's measure.spinning says on; the model says off
    try:
        assert r.spinning is False and r.run(tiny_bert_feeds[0])
    finally:
        r.close()
    r = make_runner(tiny_bert_onnx, threads=1, spinning=True)
    try:
        assert r.spinning is True
    finally:
        r.close()
    so = session_options(out.meta["session"], 1)
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
