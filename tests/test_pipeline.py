"""The pipeline: stages run and are measured, the ledger is written, failures stop it, --resume reuses."""

from __future__ import annotations

import json

import pytest
from helpers import record_reused

from edgeopt.errors import PassError
from edgeopt.ledger import Ledger
from edgeopt.pipeline import optimize

RECIPE = {
    "target": "auto",  # numbers are compared below: quantize for the host (a VNNI format saturates on AVX2)
    "data": {"calibration": "random:8", "eval": "random:6"},
    "passes": [{"convert.onnx": {"stage": "onnx"}}, {"graph.quantize_dynamic": {"stage": "int8"}}],
    "measure": {"threads": 1, "seq_len": 16, "warmup": 1, "runs": 3, "memory": False},
    "gates": {"min_cosine": 0.9},
}


def test_run_writes_ledger_report_and_best(tmp_path, tiny_bert_torch):
    res = optimize(tiny_bert_torch, recipe=RECIPE, out=tmp_path / "run", progress=False)
    led = Ledger.load(tmp_path / "run")
    assert [s.name for s in led.stages] == ["baseline", "onnx", "int8"]
    assert led.stage("baseline").latency_ms.runtime == "torch"
    assert led.stage("int8").latency_ms.runtime == "onnxruntime"
    for s in led.stages:
        assert s.latency_ms.n >= 3 and s.fidelity["min_cosine"] > 0.9 and s.gate.passed
        assert s.energy_mj.method
    assert led.stage("onnx").fidelity["min_cosine"] > 0.9999
    assert led.stage("int8").artifact["size_bytes"] < led.stage("onnx").artifact["size_bytes"]
    assert led.best in ("onnx", "int8") and (res.best / "model.onnx").exists()
    meta = json.loads((tmp_path / "run" / "metadata.json").read_text())
    assert meta["passes"][1]["pass"] == "graph.quantize_dynamic" and "onnxruntime" in meta["versions"]
    assert "| int8 |" in (tmp_path / "run" / "report.md").read_text().replace(" ★", "")


def test_failed_gate_never_best(tmp_path, tiny_bert_torch):
    recipe = {**RECIPE, "gates": {"min_cosine": 0.99999999}}
    res = optimize(tiny_bert_torch, recipe=recipe, out=tmp_path / "run", progress=False)
    assert not res.ledger.stage("int8").gate.passed and res.ledger.best != "int8"


def test_failure_marks_stage_and_resume_reuses(tmp_path, tiny_bert_torch, monkeypatch):
    from edgeopt.passes.graph import quantize

    def boom(self, art, ctx):
        raise RuntimeError("quantizer exploded\nsecond line")

    monkeypatch.setattr(quantize.QuantizeDynamic, "run", boom)
    out = tmp_path / "run"
    res = optimize(tiny_bert_torch, recipe=RECIPE, out=out, progress=False)
    assert list(res.failed) == ["int8"] and res.failed["int8"].endswith("failed: RuntimeError: quantizer exploded")
    led = Ledger.load(out)
    assert led.stage("onnx").status == "done" and led.stage("int8").status == "failed"
    assert led.best == "onnx" and led.stage("onnx").latency_ms is not None  # the finished stages are measured
    monkeypatch.undo()
    res = optimize(tiny_bert_torch, recipe=RECIPE, out=out, resume=True, progress=False)
    assert res.ledger.stage("onnx").notes.get("cached") is True
    assert res.ledger.stage("int8").status == "done" and not res.ledger.stage("int8").notes.get("cached")


def test_accuracy_from_labelled_data(tmp_path, tiny_mlp_torch, monkeypatch):
    import numpy as np

    from edgeopt import data as data_mod

    real = data_mod.resolve

    def labelled(spec, art, **kw):
        feeds = real(spec, art, **kw)
        return [{**f, data_mod.LABEL_KEY: np.array([i % 8, (i + 1) % 8])} for i, f in enumerate(feeds)]

    monkeypatch.setattr(data_mod, "resolve", labelled)
    recipe = {"data": {"calibration": "random:4", "eval": "random:6"}, "passes": ["convert.onnx"],
              "measure": {"threads": 1, "warmup": 1, "runs": 3, "memory": False}, "gates": {"max_accuracy_drop": 0.5}}
    res = optimize(tiny_mlp_torch, recipe=recipe, out=tmp_path / "run", progress=False)
    base, onnx_stage = res.ledger.stage("baseline"), res.ledger.stage("convert.onnx")
    assert 0.0 <= base.accuracy["top1"] <= 1.0
    assert onnx_stage.accuracy["top1"] == base.accuracy["top1"]  # same model, same predictions
    assert onnx_stage.fidelity["accuracy_drop"] == 0.0 and onnx_stage.gate.passed


def test_report_html_has_per_layer_profile(tmp_path, tiny_bert_torch):
    optimize(tiny_bert_torch, recipe=RECIPE, out=tmp_path / "run", progress=False)
    html = (tmp_path / "run" / "report.html").read_text()
    assert "onnx" in html and "int8" in html
    assert "/encoder/" in html or "Attention" in html or "MatMul" in html  # per-layer rows from the profiler


def _conv_attention_net():
    import torch
    from torch import nn

    from edgeopt.kernels.attention import MultiHeadSelfAttention

    class Net(nn.Module):
        """3×3 conv → GroupNorm → SiLU → self-attention over the pixels → linear: one layer for each kernel pass."""

        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU())
            self.attn = MultiHeadSelfAttention(8, 2)
            self.head = nn.Linear(8, 4)

        def forward(self, x):
            h = self.body(x).flatten(2).transpose(1, 2)  # (B, HW, C)
            return self.head(self.attn(h).mean(1))  # (B, 4)

    torch.manual_seed(0)
    return Net().eval()


def test_resume_rebuilds_torch_stages_without_running_their_passes(tmp_path, monkeypatch):
    """Torch stages are saved as safetensors + a rebuild recipe; --resume rebuilds them from the stage before
    (Winograd convs, fused norms, attention choices, magnitude-pruned weights) instead of running the passes,
    and the rebuilt models compute exactly what the first run's did."""
    import torch

    from edgeopt.load import load_model
    from edgeopt.passes.base import registry

    model = load_model(_conv_attention_net(), {"x": torch.randn(2, 3, 8, 8)})
    recipe = {"data": {"calibration": "random:4", "eval": "random:4"},
              "passes": [{"kernels.winograd": {"stage": "wino", "tile": 2, "measure": False}},
                         {"kernels.fused_norm": {"stage": "fused", "measure": False}},
                         {"kernels.attention": {"stage": "attn", "impl": "flash", "measure": False}},
                         {"prune.magnitude": {"stage": "sparse", "sparsity": 0.3}},
                         {"prune.magnitude": {"stage": "last", "sparsity": 0.6}}],
              "measure": {"threads": 1, "warmup": 0, "runs": 3, "memory": False, "energy": False}}
    names = ("kernels.winograd", "kernels.fused_norm", "kernels.attention", "prune.magnitude")
    ran: list[str] = []
    made: dict[str, object] = {}
    interrupt = {"stage": "last"}
    for name in names:
        cls, real = registry()[name], registry()[name].run

        def run(self, art, ctx, real=real):
            ran.append(ctx.stage_dir.name)
            if ctx.stage_dir.name == interrupt["stage"]:
                raise KeyboardInterrupt
            made[ctx.stage_dir.name] = real(self, art, ctx)
            return made[ctx.stage_dir.name]
        monkeypatch.setattr(cls, "run", run)
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        optimize(model, recipe=recipe, out=out, progress=False)
    assert ran == ["wino", "fused", "attn", "sparse", "last"]
    led = Ledger.load(out)
    assert led.stage("last").status == "interrupted"
    assert all((out / s / "model.safetensors").is_file() and (out / s / "rebuild.json").is_file()
               for s in ("wino", "fused", "attn", "sparse"))

    ran.clear()
    interrupt["stage"] = None
    reused = record_reused(monkeypatch)
    res = optimize(model, recipe=recipe, out=out, resume=True, progress=False)
    assert ran == ["last"], "finished torch stages were run again"
    assert [s.name for s in res.ledger.stages if s.notes.get("cached")] == ["wino", "fused", "attn", "sparse"]
    assert type(reused["wino"].module.body[0]).__name__ == "WinogradConv2d"
    assert reused["attn"].module.attn.impl == "flash"
    x = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        for stage in ("wino", "fused", "attn", "sparse"):
            assert reused[stage].sha256 == made[stage].sha256
            assert torch.equal(reused[stage].module(x), made[stage].module(x)), stage


def test_resume_runs_a_torch_stage_again_when_its_weights_changed(tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file, save_file

    from edgeopt.load import load_model
    from edgeopt.passes.compress.prune_magnitude import PruneMagnitude

    model = load_model(_conv_attention_net(), {"x": torch.randn(2, 3, 8, 8)})
    recipe = {"data": {"calibration": "random:4", "eval": "random:4"},
              "passes": [{"prune.magnitude": {"stage": "sparse", "sparsity": 0.3}}],
              "measure": {"threads": 1, "warmup": 0, "runs": 3, "memory": False, "energy": False}}
    out = tmp_path / "run"
    optimize(model, recipe=recipe, out=out, progress=False)
    weights = out / "sparse" / "model.safetensors"
    tensors = load_file(str(weights))
    tensors["head.bias"] = tensors["head.bias"] + 1
    save_file(tensors, str(weights))
    calls = []
    real = PruneMagnitude.run
    monkeypatch.setattr(PruneMagnitude, "run", lambda self, art, ctx: calls.append(1) or real(self, art, ctx))
    res = optimize(model, recipe=recipe, out=out, resume=True, progress=False)
    assert calls == [1] and not res.ledger.stage("sparse").notes.get("cached")
    assert res.ledger.stage("sparse").artifact["sha256"] == Ledger.load(out).stage("sparse").artifact["sha256"]


def test_stage_folder_stays_inside_out(tmp_path):
    from edgeopt.errors import InputError
    from edgeopt.pipeline import stage_folder

    out = tmp_path / "run"
    assert stage_folder(out, "int8") == out / "int8"
    for bad in ("..", ".", "best", "../x"):
        with pytest.raises(InputError, match="not a safe stage name"):
            stage_folder(out, bad)


def test_dotdot_stage_never_removes_the_parent(tmp_path, tiny_mlp_onnx):
    """A recipe stage named '..' used to make the pipeline rmtree OUT's parent folder."""
    from edgeopt.errors import RecipeError

    keep = tmp_path / "precious.txt"
    keep.write_text("mine")
    recipe = {"data": {"calibration": "random:2", "eval": "random:2"},
              "passes": [{"graph.simplify": {"stage": ".."}}], "measure": {"runs": 3, "warmup": 0, "memory": False}}
    with pytest.raises(RecipeError, match="stage"):
        optimize(tiny_mlp_onnx, recipe=recipe, out=tmp_path / "run", progress=False)
    assert keep.read_text() == "mine" and not (tmp_path / "run").exists()


def test_run_result_hands_back_every_stages_model(tmp_path, tiny_mlp_torch):
    recipe = {"data": {"calibration": "random:2", "eval": "random:2"}, "passes": [{"convert.onnx": {"stage": "onnx"}}],
              "measure": {"threads": 1, "warmup": 0, "runs": 3, "memory": False}}
    res = optimize(tiny_mlp_torch, recipe=recipe, out=tmp_path / "run", progress=False)
    assert list(res.artifacts) == ["baseline", "onnx"]
    assert res.artifacts["baseline"] is tiny_mlp_torch  # the torch stage, live (never written to OUT)
    onnx_art = res.artifacts["onnx"]
    assert onnx_art.kind == "onnx" and onnx_art.sha256 == res.ledger.stage("onnx").artifact["sha256"]


def _stages_for_choice(passed_parent: bool = True):
    from report.factory import make_stage

    onnx = make_stage("onnx", "convert.onnx", "onnxruntime", 10.0, 100.0, 1000, 1.0, passed_parent)
    fused = make_stage("fused", "graph.fuse", "onnxruntime", 9.9, 100.0, 1000, 1.0, True)
    fused.parent = "onnx"
    onnx.parent = "baseline"
    base = make_stage("baseline", None, "torch", 20.0, 100.0, 1000, 1.0, True)
    kinds = {"baseline": "torch", "onnx": "onnx", "fused": "onnx"}
    return [base, onnx, fused], kinds


def test_a_stage_must_beat_its_parent_beyond_the_spread():
    """Swin: a stage its own timing called 1% faster was chosen, and an independent timing found it 5% slower.
    A child whose paired interval includes 1 loses to its (simpler) parent; a clear win is kept."""
    import numpy as np

    from edgeopt.pipeline import choose_best

    rng = np.random.default_rng(0)
    stages, kinds = _stages_for_choice()
    noise = rng.normal(0, 0.5, 200)
    same = {"onnx": tuple(10.0 + noise), "fused": tuple(9.98 + rng.normal(0, 0.5, 200)),
            "baseline": tuple([20.0] * 200)}
    best, passed = choose_best(stages, kinds, same, per_turn=4)
    assert best.name == "onnx" and [s.name for s, _ in passed] == ["fused"]
    assert "includes 1" in passed[0][1] and "onnx" in passed[0][1]

    clear = {**same, "fused": tuple(5.0 + rng.normal(0, 0.2, 200))}
    stages[2].latency_ms = stages[2].latency_ms.model_copy(update={"p50": 5.0})
    best, passed = choose_best(stages, kinds, clear, per_turn=4)
    assert best.name == "fused" and passed == []


def test_a_failed_parent_is_no_fallback():
    import numpy as np

    from edgeopt.pipeline import choose_best

    stages, kinds = _stages_for_choice(passed_parent=False)
    rng = np.random.default_rng(1)
    samples = {"onnx": tuple(10.0 + rng.normal(0, 0.5, 40)), "fused": tuple(9.9 + rng.normal(0, 0.5, 40))}
    best, passed = choose_best(stages, kinds, samples, per_turn=4)
    assert best.name == "fused" and passed == []
    assert choose_best(stages[:1], kinds, {}) == (None, [])


def _small_auto(**search):
    """The bundled auto recipe with a small search and short timing (the test's budget)."""
    from edgeopt.recipe import load_recipe

    d = load_recipe("auto").to_dict()
    d["measure"] = {"threads": 1, "warmup": 1, "runs": 6, "block": 3, "settle": 1, "pause_ms": 0, "memory": False,
                    "energy": False, "fidelity_samples": 16}
    d["search"] = {**d["search"], "families": ["ort-fp32", "ort-int8-dynamic"], "trials": 2, "runs": 6, **search}
    return d


def test_auto_recipe_needs_no_data_and_skips_the_export_for_onnx(tmp_path, tiny_mlp_onnx):
    """`edgeopt optimize model.onnx` used to stop at "zoo:sentences is text, but the model has no tokenizer"."""
    res = optimize(tiny_mlp_onnx, recipe=_small_auto(), out=tmp_path / "run", progress=False)
    led = res.ledger
    base = led.stage("baseline")
    assert any("onnx (convert.onnx) skipped" in n for n in base.notes["skipped_steps"])
    assert any("fidelity measured on random inputs" in w for w in base.warnings)
    assert led.search["root"] == "baseline" and len(led.search["trials"]) == 2
    front = led.search["front"]
    assert front and [s.name for s in led.stages] == ["baseline", *front]
    for name in front:  # the front's trials became stages, measured with the baseline
        st = led.stage(name)
        assert st.parent == "baseline" and st.latency_ms is not None and st.fidelity and st.notes["search"]["chain"]
    assert led.best is not None and all(s.fidelity for s in led.stages)
    md = (tmp_path / "run" / "report.md").read_text()
    assert "## Search (2 trials from baseline" in md and "◆ front" in md
    assert "Data (evaluation): " in md and "random" in base.notes["data"]["evaluation"]
    again = Ledger.load(tmp_path / "run")
    assert again.search["front"] == front
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Search: every trial, the front in large diamonds" in html and "search-fig-" in html


def test_auto_recipe_exports_torch_models_and_takes_user_data(tmp_path, tiny_mlp_torch):
    import numpy as np

    feeds = tmp_path / "data.npz"
    np.savez(feeds, x=np.random.default_rng(0).standard_normal((8, 16)).astype(np.float32))
    res = optimize(tiny_mlp_torch, recipe=_small_auto(trials=1), out=tmp_path / "run", progress=False,
                   data=str(feeds))
    assert [s.name for s in res.ledger.stages][:2] == ["baseline", "onnx"]
    assert res.ledger.search["root"] == "onnx"
    assert res.ledger.recipe["data"] == {"calibration": str(feeds), "eval": str(feeds)}
    assert not any("random inputs" in w for w in res.ledger.stage("baseline").warnings)


@pytest.mark.parametrize("measured, diagnosed", [((0.97, 0.9, 1.05), True), ((1.5, 1.4, 1.6), False)])
def test_a_stage_not_faster_than_its_parent_gets_a_diagnosis(tmp_path, tiny_mlp_onnx, monkeypatch, measured, diagnosed):
    import edgeopt.pipeline as pl
    from edgeopt.measure.latency import Speedup

    recipe = {"target": "auto", "data": {"calibration": "random:4", "eval": "random:4"},
              "passes": [{"graph.quantize_dynamic": {"stage": "int8"}}],
              "measure": {"threads": 1, "warmup": 1, "runs": 6, "block": 3, "settle": 1, "pause_ms": 0,
                          "memory": False, "energy": False}}
    monkeypatch.setattr(pl.latency, "paired_speedup", lambda *a, **k: Speedup(*measured))
    res = optimize(tiny_mlp_onnx, recipe=recipe, out=tmp_path / "run", progress=False)
    d = res.ledger.stage("int8").notes.get("diagnosis")
    md = (tmp_path / "run" / "report.md").read_text()
    if diagnosed:
        assert d["parent"] == "baseline" and "0.97×" in d["summary"] and d["lines"]
        assert any("int8" in x.lower() for x in d["lines"])  # what ran in which precision
        assert "### Why int8 is not faster than baseline" in md
    else:
        assert d is None and "### Why" not in md


def test_search_budget_and_families_are_checked_before_anything_is_written(tmp_path, tiny_mlp_onnx):
    from edgeopt.errors import RecipeError

    for bad, match in (({"trials": 0}, "trials"), ({"minutes": -1}, "minutes"),
                       ({"families": ["ort-int9"]}, "unknown candidate family 'ort-int9'")):
        with pytest.raises(RecipeError, match=match):
            optimize(tiny_mlp_onnx, recipe=_small_auto(), search=bad, out=tmp_path / "bad", progress=False)
        assert not (tmp_path / "bad").exists()


def test_the_search_learns_the_calibration_spec_its_structural_families_fit_on(tmp_path, tiny_mlp_onnx, monkeypatch):
    import edgeopt.pipeline as pl

    seen = {}

    class Stop(Exception):
        pass

    def fake_search(inp):
        seen["spec"] = inp.calibration_spec
        raise Stop

    monkeypatch.setattr(pl, "run_search", fake_search)
    with pytest.raises(Stop):
        optimize(tiny_mlp_onnx, recipe=_small_auto(), out=tmp_path / "run", progress=False)
    assert seen["spec"].startswith("random:")


def test_simulated_mobile_pins_threads_caps_memory_and_fails_an_over_budget_stage(tmp_path):
    """mobile-cpu: the ledger records the simulated limits; a model over the memory budget fails its stage with
    'needs N MB, budget M MB' while its INT8 version (a quarter of the weights) fits and is chosen."""
    from helpers import square_matmul

    model = square_matmul(tmp_path / "big.onnx", 2048).path  # 16 MiB of fp32 weights
    recipe = {"target": "mobile-cpu", "data": {"calibration": "random:2", "eval": "random:2"},
              "passes": [{"graph.quantize_dynamic": {"stage": "int8"}}],
              "measure": {"threads": 1, "runs": 6, "warmup": 1, "memory": True, "memory_budget_mb": 1,
                          "energy": False}}
    # first find what the int8 stage needs, then give a budget between the two models' needs
    led = optimize(str(model), recipe=recipe, out=tmp_path / "probe", progress=False).ledger
    sim = led.environment["simulation"]
    assert sim["memory_budget_mb" if "memory_budget_mb" in sim else "memory_mb"] == 1 and sim["threads"] == 1
    assert sim["cores"] and "simulat" in sim["note"]
    base, q = led.stage("baseline"), led.stage("int8")
    assert base.status == "failed" and "budget 1 MB" in base.error and "needs" in base.error
    need_base = float(base.error.split("needs ")[1].split(" MB")[0].lstrip("at least "))
    need_q = float(q.error.split("needs ")[1].split(" MB")[0].lstrip("at least "))
    assert need_q < need_base
    recipe["measure"]["memory_budget_mb"] = int((need_q + need_base) / 2)
    led = optimize(str(model), recipe=recipe, out=tmp_path / "run", progress=False).ledger
    base, q = led.stage("baseline"), led.stage("int8")
    assert base.status == "failed" and f"budget {int((need_q + need_base) / 2)} MB" in base.error
    assert q.status == "done" and q.notes["memory_budget"]["budget_mb"] == int((need_q + need_base) / 2)
    assert led.best == "int8"


def test_a_failed_branch_stops_only_its_own_steps(tmp_path, tiny_bert_torch, monkeypatch):
    """int8 fails: the step after it (its input) is skipped, the branch from onnx goes on and everything finished is
    measured; the result lists the failures (the CLI exits 1 on them)."""
    from edgeopt.passes.graph import quantize

    def boom(self, art, ctx):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(quantize.QuantizeDynamic, "run", boom)
    recipe = {**RECIPE, "passes": [{"convert.onnx": {"stage": "onnx"}}, {"graph.quantize_dynamic": {"stage": "int8"}},
                                   {"graph.simplify": {"stage": "after-int8"}},
                                   {"graph.simplify": {"stage": "simplified", "from": "onnx"}},
                                   {"graph.simplify": {"stage": "from-int8", "from": "int8"}}]}
    res = optimize(tiny_bert_torch, recipe=recipe, out=tmp_path / "run", progress=False)
    st = {s.name: s for s in res.ledger.stages}
    assert st["int8"].status == "failed" and st["after-int8"].status == "skipped" and st["from-int8"].status == "skipped"
    assert "its input stage int8 did not finish" in st["after-int8"].error
    assert st["simplified"].status == "done" and st["simplified"].latency_ms is not None
    assert set(res.failed) == {"int8", "after-int8", "from-int8"}
    md = (tmp_path / "run" / "report.md").read_text()
    assert "skipped: its input stage int8 did not finish" in md


@pytest.mark.parametrize("target, diagnosed", [("cpu-avx2", True), ("cpu-avx512-vnni", False)])
def test_an_int8_stage_that_gains_little_without_vnni_is_diagnosed_too(tmp_path, tiny_mlp_onnx, monkeypatch, target,
                                                                       diagnosed):
    """1.10× is faster than its parent, but not what INT8 buys with int8 dot products: on a target without them the
    diagnosis names the missing VNNI; on a VNNI target a faster stage is left alone."""
    import edgeopt.pipeline as pl
    from edgeopt.measure.latency import Speedup

    recipe = {"target": target, "data": {"calibration": "random:4", "eval": "random:4"},
              "passes": [{"graph.quantize_dynamic": {"stage": "int8"}}],
              "measure": {"threads": 1, "warmup": 1, "runs": 6, "block": 3, "settle": 1, "pause_ms": 0,
                          "memory": False, "energy": False}}
    monkeypatch.setattr(pl.latency, "paired_speedup", lambda *a, **k: Speedup(1.10, 1.05, 1.15))
    d = optimize(tiny_mlp_onnx, recipe=recipe, out=tmp_path / "run", progress=False).ledger.stage("int8").notes.get("diagnosis")
    if diagnosed:
        assert "1.10×" in d["summary"] and "no VNNI" in d["summary"]
        assert any("GOP/s" in x for x in d["lines"])  # the measured int8 / fp32 GEMM peaks
        assert "### Why int8 gains only 1.10× over baseline" in (tmp_path / "run" / "report.md").read_text()
    else:
        assert d is None


@pytest.mark.parametrize("target, diagnosed", [("cpu-avx2", True), ("cpu-avx512-vnni", False)])
def test_a_litert_int8_stage_that_gains_little_without_vnni_is_diagnosed_from_its_file(tmp_path, tiny_mlp_torch,
                                                                                       monkeypatch, target, diagnosed):
    """LiteRT dynamic INT8 is an INT8 stage too (its parent here is the PyTorch baseline, which is not profiled):
    its diagnosis reads the precision from the file and names the missing VNNI."""
    pytest.importorskip("litert_torch")
    import edgeopt.pipeline as pl
    from edgeopt.measure.latency import Speedup

    recipe = {"target": target, "data": {"calibration": "random:4", "eval": "random:4"},
              "passes": [{"convert.litert": {"stage": "litert-int8", "quantize": "dynamic_int8", "min_cosine": 0.9}}],
              "measure": {"threads": 1, "warmup": 1, "runs": 6, "block": 3, "settle": 1, "pause_ms": 0,
                          "memory": False, "energy": False}}
    monkeypatch.setattr(pl.latency, "paired_speedup", lambda *a, **k: Speedup(1.10, 1.05, 1.15))
    res = optimize(tiny_mlp_torch, recipe=recipe, out=tmp_path / "run", progress=False)
    d = res.ledger.stage("litert-int8").notes.get("diagnosis")
    if diagnosed:
        assert "1.10×" in d["summary"] and "no VNNI" in d["summary"]
        assert any(x.startswith("precision (LiteRT file") and "2 of 2 MatMul-like ops ran in int8" in x
                   for x in d["lines"])
        assert any("GOP/s" in x for x in d["lines"])  # the measured int8 / fp32 GEMM peaks
    else:
        assert d is None


@pytest.mark.parametrize("target, measured, diagnosed", [("cpu-avx2", (1.10, 1.05, 1.15), True),
                                                        ("cpu-avx512-vnni", (1.10, 1.05, 1.15), False),
                                                        ("cpu-avx512-vnni", (0.97, 0.90, 1.05), True)])
def test_a_search_trial_off_the_front_that_gains_nothing_here_is_diagnosed(tmp_path, tiny_mlp_onnx, monkeypatch, target,
                                                                           measured, diagnosed):
    """A trial that does not become a stage (off the front) still gets a diagnosis when it is not faster than the
    root, or is INT8 gaining little without int8 dot products: the INT8 family that buys nothing on an AVX2-only
    CPU is what a user asks about. It is kept in the trial's record and reported with the stages'."""
    import edgeopt.pipeline as pl
    import edgeopt.search.study as study
    from edgeopt.measure.latency import Speedup

    monkeypatch.setattr(study, "paired_speedup", lambda *a, **k: Speedup(*measured))
    monkeypatch.setattr(pl.latency, "paired_speedup", lambda *a, **k: Speedup(1.0, 0.98, 1.02))
    monkeypatch.setattr(study, "front_of", lambda recs: [r for r in recs if r["family"] == "ort-fp32"])
    recipe = {**_small_auto(), "target": target}
    res = optimize(tiny_mlp_onnx, recipe=recipe, out=tmp_path / "run", progress=False)
    trial = next(t for t in res.ledger.search["trials"] if t["family"] == "ort-int8-dynamic")
    assert not trial["front"] and "ort-int8-dynamic" not in [s.name for s in res.ledger.stages]
    d = trial.get("diagnosis")
    md = (tmp_path / "run" / "report.md").read_text()
    if not diagnosed:
        assert d is None and "Why trial" not in md
        return
    title = (f"Why trial {trial['number']} (ort-int8-dynamic) "
             + ("gains only 1.10× over baseline" if measured[1] > 1 else "is not faster than baseline"))
    assert d["stage"] == f"trial {trial['number']} (ort-int8-dynamic)" and d["parent"] == "baseline"
    assert f"{measured[0]:.2f}×" in d["summary"]
    assert any("ran in int8" in x for x in d["lines"])  # the kernels that ran, from the profile
    if target == "cpu-avx2":
        assert "no VNNI" in d["summary"] and any("GOP/s" in x for x in d["lines"])
    assert f"### {title}" in md and title in (tmp_path / "run" / "report.html").read_text()
    again = Ledger.load(tmp_path / "run")  # kept in the ledger
    assert next(t for t in again.search["trials"] if t["number"] == trial["number"])["diagnosis"] == d


def test_auto_on_a_diffusion_model_runs_the_diffusion_recipe(tmp_path):
    from edgeopt.pipeline import _resolve_recipe
    from edgeopt.recipe import load_recipe

    diffusion = load_recipe("diffusion")
    for model in ("zoo:sd-small", "zoo:digits-diffusion"):
        assert _resolve_recipe("auto", model) == diffusion and _resolve_recipe(None, model) == diffusion
    assert _resolve_recipe("auto", tmp_path / "model.onnx") == load_recipe("auto")
    assert _resolve_recipe("cpu-int8", "zoo:sd-small") == load_recipe("cpu-int8")  # a named recipe is kept
