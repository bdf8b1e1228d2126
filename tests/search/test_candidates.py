"""Candidate families: what each target rules out (with the reason), chains that build valid pass configs, bad spaces."""

from __future__ import annotations

import pytest

from edgeopt.passes.base import build_pass
from edgeopt.search.candidates import FAMILIES, TRAIN_SENTENCES, ModelInfo, check_space, model_info, plan, train_data
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
    for info in (ModelInfo(kind="onnx", baseline_kind="torch", transformer=True, conv=True, labelled=True, source="zoo:x"),
                 ModelInfo(kind="onnx", baseline_kind="torch", transformer=True, source="zoo:x",
                           train_data=TRAIN_SENTENCES)):
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


def test_structural_fits_on_1000_generated_sentences_past_the_bundled_set():
    assert train_data("zoo:sentences[0:64]") == TRAIN_SENTENCES and train_data("zoo:digits[train]") is None
    info = ModelInfo(kind="onnx", baseline_kind="torch", transformer=True, source="zoo:minilm",
                     train_data=TRAIN_SENTENCES)
    chain = dict(FAMILIES["structural-heads"].chain({"ffn": 0.5, "heads": 0.25, "int8": None}, info))
    assert chain["prune.ffn"]["data"] == TRAIN_SENTENCES and chain["prune.ffn"]["samples"] == 1000
    assert chain["prune.heads"]["importance"] == "obs" and chain["prune.heads"]["limit"] == 1000
    assert chain["prune.ffn"]["recover"] == "none" and "train" not in chain["prune.ffn"]
    plain = dict(FAMILIES["structural-heads"].chain({"ffn": 0.5, "heads": 0.0, "int8": None}, INFO))
    assert "data" not in plain["prune.ffn"]  # other data: the run's calibration data
    # distilled after the pruning: 3000 generated sentences (the first 1000 calibrate the pruning), 2 epochs
    distilled = dict(FAMILIES["structural-heads"].chain({"ffn": 0.6, "heads": 0.0, "recover": "distill"}, info))
    assert distilled["prune.ffn"]["recover"] == "distill" and distilled["prune.ffn"]["train"] == {"epochs": 2}
    assert distilled["prune.ffn"]["data"] == "zoo:sentences[640:3640]" and distilled["prune.ffn"]["limit"] == 3000
    assert distilled["prune.ffn"]["samples"] == 1000
    on_own = dict(FAMILIES["structural-heads"].chain({"ffn": 0.6, "recover": "distill"}, INFO))["prune.ffn"]
    assert on_own["recover"] == "distill" and "data" not in on_own  # the run's calibration data
    from edgeopt.passes.base import build_pass

    build_pass("prune.ffn", distilled["prune.ffn"])  # a valid config
    assert model_info(None, None, False, "zoo:sentences").train_data == TRAIN_SENTENCES


def test_structural_int8_tails_and_openvino_int8_only_with_openvino():
    fam = FAMILIES["structural-heads"]
    assert [p for p, _ in fam.chain({"ffn": 0.5, "int8": "ov"}, INFO)][-2:] == ["convert.openvino", "openvino.quantize"]
    assert [p for p, _ in fam.chain({"ffn": 0.5, "int8": "ort"}, INFO)][-1] == "graph.quantize_dynamic"
    t = get_target("cpu-avx2")
    no_ov = type("T", (), {"isa": t.isa, "runtimes": {"onnxruntime": "1"}, "arch": "x86_64", "device": "cpu"})()
    assert "ov" not in plan(no_ov, INFO, ("structural-heads",), train_minutes=5).spaces["structural-heads"]["int8"]
    lite = fam.chain({"ffn": 0.5, "int8": "litert-int8"}, INFO)
    assert [p for p, _ in lite] == ["prune.ffn", "convert.litert"] and lite[-1][1] == {"quantize": "dynamic_int8", "smooth": 0.5}
    assert fam.chain({"ffn": 0.5, "int8": "litert"}, INFO)[-1] == ("convert.litert", {"quantize": "none"})


def test_structural_litert_tails_only_with_litert(monkeypatch):
    from edgeopt.search import candidates

    monkeypatch.setattr(candidates, "_no_litert", lambda *a: "LiteRT is not installed")
    tails = plan(get_target("cpu-avx2"), INFO, ("structural-heads",), train_minutes=5).spaces["structural-heads"]["int8"]
    assert not {"litert", "litert-int8"} & set(tails) and None in tails


def test_student_family_is_the_course_chain_for_labelled_cnns():
    cnn = ModelInfo(kind="onnx", baseline_kind="torch", conv=True, labelled=True, source="zoo:digits-cnn")
    p = plan(get_target("cpu-avx2"), cnn, train_minutes=5)
    assert "structural-student" in [f.name for f in p.families]
    chain = FAMILIES["structural-student"].chain(FAMILIES["structural-student"].defaults(), cnn)
    assert [n for n, _ in chain] == ["distill", "prune.channels", "convert.onnx", "graph.simplify", "graph.quantize_static"]
    assert chain[0][1]["student_width"] == 0.5
    assert "convolutional classifier" in plan(get_target("cpu-avx2"), INFO, train_minutes=5).skipped["structural-student"]


def test_litert_family_needs_the_pytorch_model():
    onnx_only = ModelInfo(kind="onnx", baseline_kind="onnx", transformer=True)
    assert "needs the PyTorch model" in plan(get_target("cpu-avx2"), onnx_only).skipped["litert"]
    chain = FAMILIES["litert"].chain(FAMILIES["litert"].defaults(), INFO)
    assert chain == [("convert.litert", {"quantize": "dynamic_int8", "smooth": 0.5})] and FAMILIES["litert"].from_baseline


def test_session_family_fixes_shapes_after_the_fusions_and_turns_spinning_off_last():
    fam = FAMILIES["ort-session"]
    chains = {p["settings"]: [n for n, _ in fam.chain(p, INFO)] for p in fam.combos()}
    assert chains == {"static": ["graph.simplify", "graph.fuse", "graph.static_shapes"],
                      "static+nospin": ["graph.simplify", "graph.fuse", "graph.static_shapes", "session.spinning"],
                      "nospin": ["graph.simplify", "graph.fuse", "session.spinning"]}
    with pytest.raises(ValueError, match="unknown setting 'warp'"):
        check_space((), {"ort-session": {"settings": ["static+warp"]}})


def test_openvino_int8_family_offers_nncf_accuracy_control():
    fam = FAMILIES["ov-int8"]
    quant = [dict(fam.chain(p, INFO))["openvino.quantize"] for p in fam.combos()]
    assert {q.get("max_drop") for q in quant} == {None, 0.004}
    assert fam.combos()[0]["max_drop"] is None  # plain NNCF first: it is the cheaper one


def test_structural_family_tries_first_what_this_cpu_class_measured_best():
    """With int8 dot products and room to distil, the first structural trial is light pruning, distilled, then
    INT8 (LiteRT when installed); without them it stays fp32 and prunes harder; a small budget or the recipe's own
    choices keep their order; nothing is dropped from the space."""
    first = lambda p: {k: v[0] for k, v in p.spaces["structural-heads"].items()}  # noqa: E731
    vnni, avx2 = get_target("cpu-avx512-vnni"), get_target("cpu-avx2")
    assert vnni.has_int8_dot and not avx2.has_int8_dot
    got = first(plan(vnni, INFO, ("structural-heads",), train_minutes=30))
    assert (got["heads"], got["recover"]) == (0.0, "distill") and got["int8"] in ("litert-int8", "ov", "ort")
    assert got["ffn"] == (0.35 if got["int8"] == "litert-int8" else 0.25)  # SmoothQuant only on the LiteRT tail
    assert first(plan(avx2, INFO, ("structural-heads",), train_minutes=30)) == \
        {"ffn": 0.6, "heads": 0.0, "recover": "distill", "int8": None}
    defaults = FAMILIES["structural-heads"].defaults()
    assert first(plan(vnni, INFO, ("structural-heads",), train_minutes=5)) == defaults  # no time to distil
    mine = plan(vnni, INFO, ("structural-heads",), {"structural-heads": {"ffn": [0.5, 0.25]}}, train_minutes=30)
    assert first(mine)["ffn"] == 0.5 and first(mine)["recover"] == "distill"  # the recipe's own order stays
    full = plan(vnni, INFO, ("structural-heads",), train_minutes=30).spaces["structural-heads"]
    assert {k: set(v) for k, v in full.items()} == {k: set(v) for k, v in FAMILIES["structural-heads"].space.items()}


def test_cnn_structural_families_try_fp32_first_without_int8_dot_products_and_int8_after():
    """Without VNNI the small models a CNN student / channel pruning makes ran faster in fp32, and their INT8 is half
    the size: fp32 comes first, the INT8 setting follows when the budget allows; with VNNI INT8 stays first."""
    cnn = ModelInfo(kind="onnx", baseline_kind="torch", conv=True, labelled=True, source="zoo:digits-cnn")
    avx2 = plan(get_target("cpu-avx2"), cnn, train_minutes=10)
    for fam in ("structural-student", "structural-channels"):
        sp = avx2.spaces[fam]
        assert sp["int8"][0] is False and set(sp["int8"]) == {True, False}
        assert avx2.followups[fam] == [{**{k: v[0] for k, v in sp.items()}, "int8": True}]
    vnni = plan(get_target("cpu-avx512-vnni"), cnn, train_minutes=10)
    assert vnni.spaces["structural-student"]["int8"][0] is True and not vnni.followups
    given = plan(get_target("cpu-avx2"), cnn, space={"structural-student": {"int8": [True, False]}}, train_minutes=10)
    assert given.spaces["structural-student"]["int8"] == (True, False) and "structural-student" not in given.followups
    assert "structural-heads" not in plan(get_target("cpu-avx2"), INFO, train_minutes=10).followups
