"""The contract every registered pass keeps: declared kinds, input untouched, outputs within tolerance."""

from __future__ import annotations

import pytest
from helpers import cosine_rows, run_onnx

from edgeopt.artifact import content_sha256
from edgeopt.data import to_torch_args
from edgeopt.passes.base import PassContext, build_pass, registry

# The input each kind of pass is checked on; passes needing a specific model family name their fixture.
FIXTURE_FOR = {"onnx": "tiny_bert_onnx", "torch": "tiny_bert_torch", "openvino": "tiny_bert_openvino"}
SPECIAL = {}  # pass name -> (fixture, config) where the default tiny model doesn't fit


def _outputs(art, feeds):
    if art.kind == "onnx":
        return run_onnx(art.path, feeds)
    if art.kind == "openvino":
        from edgeopt.measure.runners import make_runner

        r = make_runner(art, threads=1)
        return [r.run(f)[0] for f in feeds]
    import torch

    with torch.no_grad():
        return [art.module(*to_torch_args(f, art.input_spec.names)).numpy() for f in feeds]


@pytest.mark.parametrize("name", sorted(registry()))
def test_pass_contract(name, request, tmp_path, tiny_bert_feeds):
    cls = registry()[name]
    assert cls.name == name and cls.accepts, "a pass declares what it accepts"
    assert (cls.__doc__ or "").strip(), "a pass says what it does"
    fixture, config = SPECIAL.get(name, (FIXTURE_FOR[cls.accepts[0]], {}))
    art = request.getfixturevalue(fixture)
    feeds = tiny_bert_feeds if "bert" in fixture else request.getfixturevalue(fixture.replace("_onnx", "_feeds").replace("_torch", "_feeds"))
    before = content_sha256(art.kind, art.path) if art.path else None
    state_before = {k: v.clone() for k, v in art.module.state_dict().items()} if art.module is not None else None
    ctx = PassContext(stage_dir=tmp_path / "stage", calibration=feeds, evaluation=feeds)
    out = build_pass(name, config)(art, ctx)
    assert out.kind == (cls.produces or art.kind)
    if before is not None:
        assert content_sha256(art.kind, art.path) == before, "the input file is untouched"
    if state_before is not None:
        assert all((art.module.state_dict()[k] == v).all() for k, v in state_before.items()), "input module untouched"
    if out.path is not None:
        assert out.path.resolve().is_relative_to((tmp_path / "stage").resolve()), "outputs go to the stage folder"
    if cls.tolerance is not None:
        ref, got = _outputs(art, feeds), _outputs(out, feeds)
        worst = min(float(cosine_rows(r, g).min()) for r, g in zip(ref, got))
        assert worst >= cls.tolerance, f"{name}: min cosine {worst:.5f} < declared tolerance {cls.tolerance}"
