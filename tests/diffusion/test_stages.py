"""The pipeline's diffusion stages (Table 1): same images from the same seeds in every stage, per-component latency,
tensor and weight memory apart, image fidelity and gates, PNGs in the run folder, the report sections; on a tiny
digits denoiser and zoo:sd-small at 32×32 with 2 steps."""

from __future__ import annotations

import base64
import copy
import json

import pytest
import torch
from rich.console import Console

from edgeopt.artifact import Artifact
from edgeopt.diffusion import quality
from edgeopt.diffusion import stages as ds
from edgeopt.errors import InputError, RecipeError
from edgeopt.ledger import Ledger, Stage
from edgeopt.measure.fidelity import GateSpec
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.pipeline import optimize
from edgeopt.recipe import DiffusionMeasureSpec, parse_recipe
from edgeopt.report import figures
from edgeopt.report.html import report_html
from edgeopt.report.markdown import markdown_report
from edgeopt.report.table import render_table, to_markdown
from edgeopt.zoo import digits
from edgeopt.zoo import digits_diffusion as dd

pytest.importorskip("diffusers")

TINY = dict(dd.UNET_CONFIG, block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
            up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", autouse=True)
def tiny_classifier():
    """An untrained tiny digits CNN stands in for zoo:digits-cnn (trained for minutes on first use)."""
    torch.manual_seed(0)
    model = digits.build(digits.ResNetSpec(stem=4, stages=((4, 1, 2),))).eval()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quality, "_default_classifier", lambda: model)
        yield


def _kernel_stage(name: str, pass_name: str, cfg: dict, parent: Artifact, tmp_path) -> tuple[Stage, Artifact]:
    ctx = PassContext(stage_dir=tmp_path / name)
    art = build_pass(pass_name, {**cfg, "measure": False})(parent, ctx)
    return Stage(name=name, **{"pass": pass_name}, notes=dict(ctx.notes)), art


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """baseline -> fused-norm -> winograd, plus a stage with perturbed weights, measured as the pipeline does."""
    tmp = tmp_path_factory.mktemp("digits_run")
    info = {"noise_schedule": dd.DenoiserConfig().noise_schedule(), "unet": TINY, "train": {}, "cache": None}
    base = dd.artifact(dd.build_denoiser(TINY, seed=0), info)
    fused = _kernel_stage("fused-norm", "kernels.fused_norm", {"backend": "eager"}, base, tmp)
    wino = _kernel_stage("winograd", "kernels.winograd", {"tile": 4}, fused[1], tmp)
    broken = copy.deepcopy(base.module)
    with torch.no_grad():
        broken.unet.conv_in.weight.mul_(3.0)
    stages = [(Stage(name="baseline"), base), fused, wino,
              (Stage(name="broken", **{"pass": "test.perturb"}), Artifact.from_module(broken, base.input_spec,
                                                                                      meta=base.meta))]
    spec = DiffusionMeasureSpec(steps=2, samples=2, rounds=2, images=4)
    env: dict = {}
    tasks: list[tuple[str, int]] = []

    def task(description: str, total: int):
        tasks.append((description, total))
        return lambda: None

    gates = GateSpec(min_psnr=40, min_ssim=0.99, max_accuracy_drop=100, max_fd_increase=100)
    samples = ds.measure_diffusion_stages(stages, spec, gates, 1, task, env, tmp)
    ledger = Ledger(recipe={"measure": {"threads": 1}}, environment=env, stages=[s for s, _ in stages])
    return ledger, samples, tmp, tasks


def env_settings(ledger: Ledger) -> dict:
    e = ledger.environment["diffusion"]
    return {k: e[k] for k in ("model", "steps", "scheduler", "samples_per_class", "images", "rounds", "threads")}


def test_digits_stages_record_table1_figures(digits_run):
    ledger, samples, run_dir, tasks = digits_run
    base, fused, wino, broken = ledger.stages
    assert [len(samples[s.name]) for s in ledger.stages] == [2, 2, 2, 2], "one whole run per stage and round"
    for s in ledger.stages:
        d = s.diffusion
        assert d["model"] == "digits" and d["latency"] == "whole run"
        assert d["whole_run_ms"] > d["unet_step_ms"] > 0 and "text_encoder_ms" not in d and "vae_decode_ms" not in d
        assert s.latency_ms.p50 == pytest.approx(sorted(samples[s.name])[0] / 2 + sorted(samples[s.name])[1] / 2)
        assert s.latency_ms.runtime == "torch" and s.latency_ms.threads == 1 and s.latency_ms.n == 2
        assert d["tensor_peak_mb"] > 0 and set(d["tensor_peak_by_call_mb"]) == {"unet_step"}
        assert 0 <= d["accuracy"] <= 1 and d["fd"] >= 0 and s.accuracy == {"conditional": d["accuracy"]}
    assert fused.diffusion["weights_mb"] == base.diffusion["weights_mb"], "fusing norms moves no weight"
    assert wino.diffusion["weights_mb"] > base.diffusion["weights_mb"], "Winograd keeps transformed weights"
    assert base.gate.passed and base.gate.why == "baseline" and base.fidelity["psnr"] == ds.PSNR_CAP
    assert fused.fidelity["psnr"] == ds.PSNR_CAP and fused.fidelity["ssim"] == pytest.approx(1.0, abs=1e-9), \
        "the eager fused kernel draws the baseline's images exactly"
    assert fused.fidelity["accuracy_drop"] == 0 and fused.fidelity["fd_increase"] == pytest.approx(0, abs=1e-6)
    assert wino.fidelity["psnr"] > 60 and wino.fidelity["ssim"] > 0.9999 and wino.gate.passed
    assert broken.fidelity["psnr"] < 40 and not broken.gate.passed and broken.gate.why.startswith("psnr")
    assert env_settings(ledger) == {"model": "digits", "steps": 2, "scheduler": "ddim", "samples_per_class": 2,
                                    "images": 20, "rounds": 2, "threads": 1}
    assert [t for t, _ in tasks][:1] == ["diffusion: images from the same seeds (every stage)"]


def test_digits_stages_write_their_first_images(digits_run):
    ledger, _, run_dir, _ = digits_run
    for s in ledger.stages:
        files = [run_dir / p for p in s.diffusion["images"]]
        assert [f.name for f in files] == ["00.png", "01.png", "02.png", "03.png"]
        assert all(f.read_bytes().startswith(PNG) for f in files)
        assert (run_dir / s.diffusion["grid"]).read_bytes() == base64.b64decode(s.diffusion["preview_png"])
        assert not list((run_dir / s.name).glob(".*tmp")), "written through a temporary folder"
    assert (run_dir / "baseline/images/00.png").read_bytes() == (run_dir / "fused-norm/images/00.png").read_bytes()


def test_ledger_keeps_diffusion_and_reads_older_schemas(digits_run, tmp_path):
    ledger, *_ = digits_run
    ledger.save(tmp_path / "ledger.json")
    back = Ledger.load(tmp_path)
    assert back.schema_version == 3 and back.stages[1].diffusion == ledger.stages[1].diffusion
    (tmp_path / "old.json").write_text(json.dumps({"schema_version": 2, "stages": [{"name": "baseline", "llm": None}]}))
    assert Ledger.load(tmp_path / "old.json").stages[0].diffusion is None


def test_reports_show_table1_the_waterfall_and_the_images(digits_run):
    ledger, *_ = digits_run
    console = Console(record=True, width=200)
    console.print(render_table(ledger))
    text = console.export_text()
    assert "PSNR" in text and "weights" in text and "winograd" in text and "zoo:digits-cnn" in text
    md = to_markdown(ledger)
    assert "| stage | pass | whole run ms | UNet step ms | tensor peak MB | weights MB | PSNR dB | SSIM | cond. acc. " \
           "| FD | gate |" in md, "a digits model has no text encoder or VAE columns"
    assert "## Diffusion: how Table 1 was measured" in md
    assert "![baseline](baseline/images/grid.png) | ![broken](broken/images/grid.png)" in md
    assert "fused-norm: " in md and "norm+activation pairs fused (eager kernel)" in md
    steps = figures.waterfall_steps(ledger, "latency")
    assert [round(s.value, 6) for s in steps] == [round(s.latency_ms.p50, 6) for s in ledger.stages]
    mem = figures.waterfall_steps(ledger, "memory")
    assert mem[0].value == pytest.approx(ledger.stages[0].diffusion["tensor_peak_mb"]
                                         + ledger.stages[0].diffusion["weights_mb"])
    html = report_html([("run", ledger)])
    assert "Diffusion: images and how Table 1 was measured" in html and html.count("<img alt=") == 2
    assert "whole run p50 (ms, noise to image)" in html


def test_the_best_diffusion_stage_is_a_pytorch_stage_that_passed_its_gate(digits_run):
    from edgeopt.pipeline import choose_best

    ledger, samples, *_ = digits_run
    best, _ = choose_best(ledger.stages, {s.name: "torch" for s in ledger.stages}, samples, per_turn=1,
                          eligible=("torch",))
    assert best is not None and best.name != "broken" and best.gate.passed
    ledger.best = best.name
    assert f"Best stage that passed its gate: <b>{best.name}</b>" in report_html([("run", ledger)])
    rep = markdown_report([("run", ledger)])
    assert "whole run ms p50" in rep and "Images (in the run folder): baseline baseline/images/grid.png" in rep


def _sd_recipe(**diffusion) -> dict:
    return {"model": {"source": "zoo:digits-diffusion"},  # the CLI argument overrides it
            "data": {"calibration": "random:1", "eval": "random:1"},
            "passes": [{"kernels.fused_norm": {"stage": "fused-norm", "backend": "eager", "measure": False}},
                       {"kernels.attention": {"stage": "partial-softmax", "impl": "partial_softmax",
                                              "measure": False}}],
            "measure": {"threads": 1, "energy": False,
                        "diffusion": {"steps": 2, "rounds": 1, "size": "32x32", "images": 1, **diffusion}},
            "gates": {"min_psnr": 30, "max_accuracy_drop": 2}}


def test_sd_small_through_optimize(tmp_path):
    out = tmp_path / "run"
    res = optimize("zoo:sd-small", recipe=_sd_recipe(), out=out, progress=False)
    base, fused, partial = res.ledger.stages
    meta = res.artifacts["baseline"].meta
    assert meta["task"] == "text-to-image" and meta["size"] == [32, 32]
    for s in (base, fused, partial):
        d = s.diffusion
        assert d["model"] == "text-to-image" and d["whole_run_ms"] > 0 and d["unet_step_ms"] > 0
        assert d["text_encoder_ms"] > 0 and d["vae_decode_ms"] > 0
        assert set(d["tensor_peak_by_call_mb"]) == {"text_encoder", "unet_step", "vae_decode"}
        assert "accuracy" not in d and s.latency_ms.shapes == {"latents": [2, 4, 4, 4]}
        assert (out / d["images"][0]).read_bytes().startswith(PNG)
    assert fused.diffusion["weights_mb"] == base.diffusion["weights_mb"] == partial.diffusion["weights_mb"]
    assert fused.fidelity["psnr"] > 40 and fused.fidelity["ssim"] > 0.99 and fused.gate.passed
    assert partial.fidelity["psnr"] > 30 and partial.gate.passed and "accuracy" not in partial.gate.why, \
        "digits-only gates do not apply to Stable Diffusion"
    assert partial.notes["attention"]["layers"], "the attention pass reached the UNet's (and CLIP's) layers"
    assert not base.warnings, "images come from seeds: no 'random inputs' warning"
    report = (out / "report.md").read_text()
    assert "## Diffusion: how Table 1 was measured" in report and "| text enc. ms | VAE dec. ms |" in report
    assert "cond. acc." not in report, "no accuracy or FD columns for Stable Diffusion"
    assert "<img alt='baseline' src='data:image/png;base64," in (out / "report.html").read_text()
    assert Ledger.load(out).stages[2].diffusion["psnr"] == partial.diffusion["psnr"]


@pytest.mark.parametrize("field, value, match", [
    ("steps", 0, r"measure\.diffusion\.steps.*greater than or equal to 1"),
    ("prompt", "a cat", r"measure\.diffusion\.prompt.*Extra inputs"),
    ("size", "30x30", r"size '30x30': expected HxW pixels, multiples of 8"),
    ("scheduler", "heun", r"measure\.diffusion\.scheduler"),
    ("prompts", [" "], r"an empty prompt"),
])
def test_bad_diffusion_settings_are_one_line_recipe_errors(field, value, match):
    with pytest.raises(RecipeError, match=match) as e:
        parse_recipe({"measure": {"diffusion": {field: value}}})
    assert "\n" not in str(e.value)


def test_settings_a_model_cannot_run_stop_before_any_pass(tmp_path):
    info = {"noise_schedule": dd.DenoiserConfig().noise_schedule(), "unet": TINY, "train": {}, "cache": None}
    art = dd.artifact(dd.build_denoiser(TINY), info)
    with pytest.raises(InputError, match="digits models sample with ddim or ddpm"):
        ds.check_spec(art, DiffusionMeasureSpec(scheduler="euler"))
    with pytest.raises(InputError, match="exceeds the model's 1000 training timesteps"):
        ds.check_spec(art, DiffusionMeasureSpec(steps=1001))
    sd = ds.load_sd_artifact("zoo:sd-small", "32x32")
    with pytest.raises(InputError, match="Stable Diffusion runs with ddim, pndm, euler"):
        ds.check_spec(sd, DiffusionMeasureSpec(scheduler="ddpm"))
    with pytest.raises(InputError, match="Stable Diffusion runs with ddim, pndm, euler"):
        optimize("zoo:sd-small", recipe=_sd_recipe(scheduler="ddpm"), out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists(), "nothing written"
    folder = tmp_path / "sd"
    for sub in ("unet", "vae", "text_encoder"):
        (folder / sub).mkdir(parents=True)
    assert ds.is_sd_source(folder) and ds.is_sd_source("zoo:sd-1.4") and not ds.is_sd_source("zoo:digits-diffusion")
    with pytest.raises(InputError, match="not a complete Stable Diffusion folder: missing text_encoder, tokenizer"):
        optimize(str(folder), recipe=_sd_recipe(), out=tmp_path / "run2", progress=False)
