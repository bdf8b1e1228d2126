"""Recipe: YAML validated into a typed recipe; every mistake is one line naming the field."""

from __future__ import annotations

import pytest

from edgeopt.errors import RecipeError
from edgeopt.recipe import bundled_recipes, load_recipe, parse_recipe


def test_bundled_default_recipe_validates():
    assert "cpu-int8" in bundled_recipes()
    r = load_recipe("cpu-int8")
    assert [s.pass_name for s in r.passes][:2] == ["convert.onnx", "graph.simplify"]
    assert r.measure.threads == 2 and r.measure.seq_len == 128
    assert [s.name for s in r.passes][0] == "onnx"


def test_stage_names_deduplicated():
    r = parse_recipe({"passes": ["graph.simplify", {"graph.simplify": {}}]})
    assert [s.name for s in r.passes] == ["graph.simplify", "graph.simplify#2"]


def test_unknown_pass_lists_known():
    with pytest.raises(RecipeError, match=r"unknown pass 'graph.turbo'.*graph.quantize_dynamic"):
        parse_recipe({"passes": [{"graph.turbo": {}}]})


def test_wrongly_typed_parameter_names_field():
    with pytest.raises(RecipeError, match="per_channel"):
        parse_recipe({"passes": [{"graph.quantize_dynamic": {"per_channel": "maybe"}}]})
    with pytest.raises(RecipeError, match="bogus"):
        parse_recipe({"passes": [{"graph.quantize_dynamic": {"bogus": 1}}]})


def test_bad_measure_and_gate_fields():
    with pytest.raises(RecipeError, match="measure.threads"):
        parse_recipe({"measure": {"threads": 0}})
    with pytest.raises(RecipeError, match="runtimes"):
        parse_recipe({"measure": {"runtimes": ["tensorrt"]}})
    with pytest.raises(RecipeError, match="gates"):
        parse_recipe({"gates": {"min_cosine": 2}})
    with pytest.raises(RecipeError, match="surprise.*Extra inputs"):
        parse_recipe({"surprise": 1})


def test_bad_yaml_and_missing_file(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("passes: [\n  - {graph.simplify: {}\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)
    with pytest.raises(RecipeError, match="no such recipe"):
        load_recipe(tmp_path / "nope.yaml")


def test_round_trip_to_dict():
    r = load_recipe("cpu-int8")
    again = parse_recipe(r.to_dict())
    assert again == r


@pytest.mark.parametrize("name", ["..", ".", "best", "baseline", "a/b", "../x", "", ".hidden", "x" * 65, 5])
def test_unsafe_or_reserved_stage_names_refused(name):
    with pytest.raises(RecipeError, match="stage"):
        parse_recipe({"passes": [{"graph.simplify": {"stage": name}}]})


def test_safe_stage_names_kept():
    r = parse_recipe({"passes": [{"graph.simplify": {"stage": "simplified-2.b_x"}}]})
    assert r.passes[0].name == "simplified-2.b_x"


@pytest.mark.parametrize("cfg", [5, "fast", [1, 2]])
def test_config_that_is_not_a_mapping_is_one_line(cfg):
    with pytest.raises(RecipeError, match=r"passes\[0\] graph.fuse: config must be a mapping"):
        parse_recipe({"passes": [{"graph.fuse": cfg}]})


def test_from_naming_its_own_stage_refused():
    with pytest.raises(RecipeError, match="from 'fused' names no earlier stage"):
        parse_recipe({"passes": [{"graph.simplify": {}}, {"graph.fuse": {"stage": "fused", "from": "fused"}}]})
    ok = parse_recipe({"passes": [{"graph.simplify": {"stage": "s"}}, {"graph.fuse": {"stage": "f", "from": "s"}}]})
    assert ok.passes[1].source == "s"


def test_when_limits_a_step_to_a_model_kind():
    r = parse_recipe({"passes": [{"convert.onnx": {"when": "torch"}}, "graph.simplify"]})
    assert [s.when for s in r.passes] == ["torch", None]
    assert parse_recipe(r.to_dict()).passes == r.passes
    with pytest.raises(RecipeError, match="when"):
        parse_recipe({"passes": [{"convert.onnx": {"when": "tflite-ish"}}]})
    assert load_recipe("auto").passes[0].when == "torch"


def _chain_breaks(recipe, baseline: str) -> str | None:
    """The first step whose input kind its pass does not accept, following `from:` and `when:` as the pipeline does
    (a step whose `when` does not match is skipped and passes its input on); None when the chain holds."""
    from edgeopt.passes.base import get_pass

    kinds = {"baseline": baseline}
    last = baseline
    for step in recipe.passes:
        kind = kinds[step.source] if step.source else last
        cls = get_pass(step.pass_name)
        if step.when and step.when != kind:
            out = kind
        elif kind not in cls.accepts:
            return f"{step.name} ({step.pass_name}) gets {kind}"
        else:
            out = cls.produces or kind
        kinds[step.name] = last = out
    return None


@pytest.mark.parametrize("name", sorted(bundled_recipes()))
def test_bundled_recipes_chain_model_kinds(name):
    """Every bundled recipe runs end to end for a torch or an ONNX model: a step fed a model kind its pass refuses
    (e.g. a second convert.litert_llm without `from: baseline`) fails here instead of mid-run."""
    r = load_recipe(name)
    breaks = {b: _chain_breaks(r, b) for b in ("torch", "onnx")}
    assert None in breaks.values(), breaks
