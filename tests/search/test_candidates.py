"""Candidate families: what each target rules out (with the reason), chains that build valid pass configs, bad spaces."""

from __future__ import annotations

import pytest

from edgeopt.passes.base import build_pass
from edgeopt.search.candidates import FAMILIES, ModelInfo, check_space, plan
from edgeopt.target import get_target

INFO = ModelInfo(kind="onnx", baseline_kind="torch", transformer=True, conv=False, labelled=False, source="zoo:minilm")


def test_avx2_target_skips_bf16_and_fp16_with_the_hardware_reason():
    p = plan(get_target("cpu-avx2"), INFO)
    assert "no bf16 units" in p.skipped["ov-bf16"] or "OpenVINO is not installed" in p.skipped["ov-bf16"]
    assert "no fp16 arithmetic" in p.skipped["ort-fp16"]
    names = [f.name for f in p.families]
    assert "ort-fp32" in names and "ort-int8-dynamic" in names
    costs = [f.cost for f in p.families]
    assert costs == sorted(costs)  # cheapest first


def test_structural_families_need_a_training_budget_and_the_torch_model():
    t = get_target("cpu-avx2")
    assert "training budget" in plan(t, INFO).skipped["structural-heads"]
    onnx_only = ModelInfo(kind="onnx", baseline_kind="onnx", transformer=True)
    assert "PyTorch model" in plan(t, onnx_only, train_minutes=5).skipped["structural-heads"]
    assert "structural-heads" in [f.name for f in plan(t, INFO, train_minutes=5).families]
    assert "convolutional classifier" in plan(t, INFO, train_minutes=5).skipped["structural-channels"]


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_setting_of_every_family_builds_valid_pass_configs(name):
    fam = FAMILIES[name]
    info = ModelInfo(kind="onnx", baseline_kind="torch", transformer=True, conv=True, labelled=True, source="zoo:x")
    for params in fam.combos():
        chain = fam.chain(params, info)
        assert chain, name
        for pass_name, cfg in chain:
            build_pass(pass_name, cfg)  # raises on an invalid config


def test_plan_restricts_to_named_families_and_overrides_their_space():
    p = plan(get_target("cpu-avx2"), INFO, ("ort-int8-dynamic",), {"ort-int8-dynamic": {"per_channel": [True]}})
    assert [f.name for f in p.families] == ["ort-int8-dynamic"]
    assert p.spaces["ort-int8-dynamic"]["per_channel"] == (True,)
    assert p.families[0].size(p.spaces["ort-int8-dynamic"]) == 3


@pytest.mark.parametrize("names, space, match", [
    (("ort-int9",), {}, "unknown candidate family 'ort-int9'"),
    ((), {"ort-int8-dynamic": {"colour": [1]}}, "unknown setting 'colour'"),
    ((), {"ort-int8-dynamic": {"per_channel": []}}, "non-empty list"),
    ((), {"ort-int8-static": {"method": ["median"]}}, "method='median' is not a valid graph.quantize_static config"),
])
def test_bad_spaces_are_refused_with_the_reason(names, space, match):
    with pytest.raises(ValueError, match=match):
        check_space(names, space)
