"""The cnn-course recipe: it validates, and a shortened course runs through the pipeline on a tiny CNN with every
stage measured (accuracy from the labelled digits test split, parameters, gate)."""

from __future__ import annotations

from edgeopt.recipe import load_recipe


def test_bundled_recipe_validates():
    r = load_recipe("cnn-course")
    assert [s.pass_name for s in r.passes] == ["distill", "prune.channels", "convert.onnx", "graph.quantize_static"]
    assert r.model.source == "zoo:digits-cnn" and r.gates.max_accuracy_drop == 1.5 and r.measure.batch == 16


def test_short_course_through_the_pipeline(tiny_digits_cnn, tmp_path):
    from edgeopt.pipeline import optimize

    recipe = load_recipe("cnn-course").to_dict()
    recipe["model"] = None
    recipe["passes"][0]["distill"]["train"] = {"epochs": 2, "lr": 0.01}
    recipe["passes"][1]["prune.channels"].update({"rounds": 1, "floor": None, "round_to": 4,
                                                  "train": {"epochs": 1, "lr": 0.005}})
    recipe["data"] = {"calibration": "zoo:digits[train][:64]", "eval": "zoo:digits[test][:96]"}
    recipe["measure"] = {"threads": 1, "batch": 16, "warmup": 0, "runs": 3, "block": 1, "settle": 0,
                         "memory": False, "energy": False}
    recipe["gates"] = {"max_accuracy_drop": 50.0}
    res = optimize(tiny_digits_cnn, recipe=recipe, out=tmp_path / "run", progress=False)
    stages = {s.name: s for s in res.ledger.stages}
    assert list(stages) == ["baseline", "student", "pruned", "onnx", "int8"]
    assert all(s.accuracy and 0.3 <= s.accuracy["top1"] <= 1.0 for s in stages.values())
    assert stages["student"].params < stages["baseline"].params and stages["pruned"].params < stages["student"].params
    assert stages["pruned"].notes["prune.channels"]["channel_sparsity"] > 0.4
    assert (tmp_path / "run" / "ledger.json").exists() and res.ledger.best in ("onnx", "int8")
