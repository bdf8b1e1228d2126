"""compress.ofa: a supernet trained once per run folder, a subnet per budget, extracted dense and rebuildable."""

from __future__ import annotations

import pytest
import torch
from helpers import RecordingExecutor, two_node_ray_executor

from edgeopt.errors import RecipeError
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.passes.compress.ofa import rebuild_ofa

SPACE = {"depths": [1, 2], "kernel_sizes": [3, 5], "expand_ratios": [2, 3], "resolutions": [24, 32],
         "widths": [8, 16], "strides": [2, 2], "stem_width": 8, "stem_stride": 2, "head_width": 16}
CFG = {"space": SPACE, "epochs": 3, "samples": 6, "trials": 30, "threads": 1, "limit": 400,
       "train": {"lr": 0.01, "batch_size": 32}}


def test_subnets_for_two_budgets_from_one_supernet(tiny_digits_resnet, tmp_path):
    runs = {}
    for name, budget in (("fast", 0.1), ("slow", 0.9)):
        ctx = PassContext(stage_dir=tmp_path / name)
        out = build_pass("compress.ofa", {**CFG, "budget": budget})(tiny_digits_resnet, ctx)
        runs[name] = (out, ctx.notes["compress.ofa"])
    (fast, nf), (slow, ns) = runs["fast"], runs["slow"]
    assert nf["cache"] == ns["cache"]  # the second budget reused the supernet, table and samples
    for out, n in runs.values():
        kinds = {type(m).__name__ for m in out.module.modules()}
        assert not kinds & {"ElasticKernelConv", "ElasticInvertedResidual", "OFANet"}
        assert out.module(torch.zeros(2, 1, 32, 32)).shape == (2, 10)
        assert n["predicted_ms"] <= n["budget"] + 1e-9 and n["val_accuracy"] > 0.3  # 10 classes: chance is 0.1
        assert n["table_calibration"]["subnets"] == 8 and n["table_calibration"]["scale"] > 0
        assert out.meta["ofa"] == n["subnet"]
    assert nf["budget"] < ns["budget"] and nf["complexity"]["macs"] <= ns["complexity"]["macs"]
    # the resume builder rebuilds the same architecture; the saved weights then give the same outputs
    rebuilt = rebuild_ofa(tiny_digits_resnet, fast.rebuild["args"], None)
    rebuilt.load_state_dict(fast.module.state_dict())
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), fast.module(x))


def test_bad_space_and_budget_are_recipe_errors():
    with pytest.raises(RecipeError, match="kernel_sizes"):
        build_pass("compress.ofa", {"space": {"kernel_sizes": [3, 4]}})
    with pytest.raises(RecipeError, match="budget"):
        build_pass("compress.ofa", {"budget": 1.5})
    with pytest.raises(RecipeError, match="space"):
        build_pass("compress.ofa", {"space": {"kernels": [3]}})


def test_the_bundled_recipe_makes_each_budget_a_measured_stage(tiny_digits_resnet, tmp_path):
    """recipes/ofa-digits.yaml's steps on a tiny space and a few epochs (the bundled one trains ~15 CPU-minutes)."""
    from edgeopt.pipeline import optimize
    from edgeopt.recipe import load_recipe

    recipe = load_recipe("ofa-digits").to_dict()
    recipe["data"] = {"calibration": "zoo:digits[train][:64]", "eval": "zoo:digits[test][:64]"}
    recipe["measure"] = {"threads": 1, "batch": 1, "warmup": 1, "runs": 6, "block": 2, "settle": 0, "memory": False,
                         "energy": False}
    recipe["gates"] = {"max_accuracy_drop": 100}
    for step in recipe["passes"]:
        (name, cfg), = step.items()
        if name == "compress.ofa":
            cfg.update({k: v for k, v in CFG.items()}, space=SPACE)
    led = optimize(tiny_digits_resnet, recipe=recipe, out=tmp_path / "run", progress=False).ledger
    st = {s.name: s for s in led.stages}
    assert [n for n in st if n.startswith("ofa")] == ["ofa-fast", "ofa-fast-onnx", "ofa-mid", "ofa-mid-onnx",
                                                      "ofa-large", "ofa-large-onnx"]
    assert all(s.status == "done" and s.latency_ms and s.accuracy for n, s in st.items() if n.startswith("ofa"))
    assert st["ofa-fast-onnx"].latency_ms.runtime == "onnxruntime"
    caches = {st[n].notes["compress.ofa"]["cache"] for n in ("ofa-fast", "ofa-mid", "ofa-large")}
    assert len(caches) == 1  # one supernet for the three budgets
    assert "ofa-mid" in (tmp_path / "run" / "report.md").read_text()


def test_an_extracted_subnet_converts_to_litert_with_the_same_outputs(tmp_path):
    pytest.importorskip("litert_torch")
    import numpy as np

    from edgeopt.load import load_model
    from edgeopt.measure.runners import make_runner
    from edgeopt.nn import ofa

    torch.manual_seed(0)
    net = ofa.OFANet(ofa.OFAConfig(**{**SPACE, "num_classes": 10})).eval()
    ex = ofa.OFASubNetworkExtractor(net)
    sub = ex.sample_random(seed=1)
    x = torch.randn(1, 1, sub.r, sub.r)
    art = load_model(ex.extract(sub), {"image": x})
    out = build_pass("convert.litert", {})(art, PassContext(stage_dir=tmp_path / "litert"))
    assert out.kind == "tflite"
    r = make_runner(out, threads=1)
    try:
        got = r.run({"image": x.numpy()})[0]
    finally:
        r.close()
    with torch.no_grad():
        np.testing.assert_allclose(got, art.module(x).numpy(), atol=1e-4, rtol=1e-3)


def _tiny_task():
    """An untrained tiny supernet and a few digits-like samples split into fit and held-out parts."""
    from edgeopt.nn import ofa
    from edgeopt.train import TensorData

    torch.manual_seed(0)
    net = ofa.OFANet(ofa.OFAConfig(**{**SPACE, "num_classes": 10})).eval()
    g = torch.Generator().manual_seed(0)
    data = TensorData((torch.randn(96, 1, 32, 32, generator=g),), torch.randint(0, 10, (96,), generator=g))
    return net, ofa.OFASubNetworkExtractor(net), *data.split(0.25)


def test_predictor_samples_through_a_cluster_executor_match_the_local_ones(tmp_path):
    from edgeopt.passes.compress.ofa import OnceForAll

    net, ex, fit, val = _tiny_task()
    local = OnceForAll._samples(net, ex, fit, val, tmp_path / "local", 5, 0)
    remote = RecordingExecutor()
    spread = OnceForAll._samples(net, ex, fit, val, tmp_path / "remote", 5, 0, remote)
    assert remote.log == [("build", "evaluate_subnets")] * 2  # one task per slot
    assert [s.to_dict() for s in spread[0]] == [s.to_dict() for s in local[0]]
    assert spread[1] == pytest.approx(local[1])
    # cached: a second call reads the samples back, no task runs
    OnceForAll._samples(net, ex, fit, val, tmp_path / "remote", 5, 0, remote)
    assert len(remote.log) == 2


def test_a_worker_that_cannot_see_the_run_folder_says_so(tmp_path):
    from edgeopt.errors import InputError
    from edgeopt.passes.compress.ofa import evaluate_subnets

    with pytest.raises(InputError, match="not visible on this worker"):
        evaluate_subnets({"space": SPACE, "weights": str(tmp_path / "w.safetensors"),
                          "data": str(tmp_path / "d.safetensors"), "subnets": []})


def test_the_table_runtime_is_validated():
    with pytest.raises(RecipeError, match="runtime"):
        build_pass("compress.ofa", {"runtime": "tensorrt"})
    with pytest.raises(RecipeError, match="calibrate: 0 .* or at least 3"):
        build_pass("compress.ofa", {"calibrate": 2})


@pytest.mark.slow
def test_on_a_two_node_ray_cluster_the_table_is_timed_only_on_the_target_node(tiny_digits_resnet, tmp_path):
    """The pass with the run's executor on Ray: the latency table's timing is one measure task on the node with
    the target's resource; the predictor's samples are build tasks over both nodes."""
    with two_node_ray_executor() as (ex, res_name):
        ctx = PassContext(stage_dir=tmp_path / "ofa", executor=ex)
        out = build_pass("compress.ofa", {**CFG, "epochs": 2, "budget": 0.5})(tiny_digits_resnet, ctx)
        log = [r.to_dict() for r in ex.log]
    notes = ctx.notes["compress.ofa"]
    assert notes["executor"] == "ray" and out.module(torch.zeros(1, 1, 32, 32)).shape == (1, 10)
    timing = [r for r in log if r["kind"] == "measure"]
    builds = [r for r in log if r["kind"] == "build"]
    assert [r["function"].rsplit(".", 1)[-1] for r in timing] == ["time_parts"]  # parts and calibration subnets
    assert all(res_name in r["resources"] for r in timing) and all(r["ok"] for r in log)
    assert len(builds) == 2 and {r["function"].rsplit(".", 1)[-1] for r in builds} == {"evaluate_subnets"}
