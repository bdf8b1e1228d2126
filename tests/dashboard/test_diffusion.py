"""The live diffusion page: request checks, the toggled kernel passes on copies of zoo:sd-small (32×32, 2 steps) and a
one-step-trained zoo:digits-diffusion, images, per-component timings and memory, "busy", and the page in AppTest."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from edgeopt.dashboard import APP
from edgeopt.dashboard import diffusion as D
from edgeopt.dashboard import state as S
from edgeopt.dashboard.worker import Worker
from edgeopt.errors import InputError
from edgeopt.zoo import digits_diffusion as dd

pytest.importorskip("diffusers")

PROMPT = "a red cat"


def _png_size(png: bytes) -> tuple[int, int, str]:
    from PIL import Image

    img = Image.open(io.BytesIO(png))
    return img.width, img.height, img.mode


def _sd(bench, steps=2, **toggles) -> D.DiffusionRun:
    req = D.diffusion_request("zoo:sd-small", steps, 3, prompt=PROMPT, size=32, threads=1, **toggles)
    return bench.generate(req, lambda f, m: None)


@pytest.fixture(scope="module")
def sd_bench():
    bench = D.DiffusionBench(*D.model_kind("zoo:sd-small"))
    yield bench
    bench.close()


# ---------------------------------------------------------------------------------------- requests

@pytest.mark.parametrize("source, kw, match", [
    ("zoo:sd-small", {"steps": 0}, "steps: a whole number from 1 to 200, got 0"),
    ("zoo:sd-small", {"steps": -3}, "steps: a whole number from 1 to 200, got -3"),
    ("zoo:digits-diffusion", {"steps": 2.5}, "steps: a whole number"),
    ("zoo:nope", {}, "unknown model 'zoo:nope'; known: zoo:digits-diffusion, zoo:sd-small, zoo:sd-1.4"),
    ("zoo:sd-small", {"prompt": "  "}, "prompt: empty; type what to draw"),
    ("zoo:sd-small", {"size": 36}, "size: a multiple of 8 pixels"),
    ("zoo:sd-small", {"guidance": -1}, "guidance: a number from 0 to 30"),
    ("zoo:sd-small", {"scheduler": "ddpm"}, "scheduler: one of ddim, pndm, euler"),
    ("zoo:digits-diffusion", {"digit": 10}, "digit: a whole number from 0 to 9, got 10"),
    ("zoo:digits-diffusion", {"threads": 0}, "threads: a whole number from 1 to 64"),
    ("zoo:digits-diffusion", {"attention": "sdpa"}, "attention: one of partial_softmax, flash or off"),
    ("/etc", {"allowed": [Path("/srv/models")]}, "outside the folders open to the dashboard"),
    ("/etc", {}, "no folder is open to the dashboard"),
    ("", {}, "Stable Diffusion folder: no path given"),
])
def test_bad_requests_are_one_line_errors(source, kw, match):
    args = {"steps": 2, "prompt": PROMPT, **kw}
    with pytest.raises(InputError, match=match) as e:
        D.diffusion_request(source, args.pop("steps"), **args)
    assert "\n" not in str(e.value)


def test_a_folder_missing_components_is_refused(tmp_path):
    (tmp_path / "sd" / "unet").mkdir(parents=True)
    with pytest.raises(InputError, match="not a complete Stable Diffusion folder: missing text_encoder, tokenizer"):
        D.diffusion_request(str(tmp_path / "sd"), 2, prompt=PROMPT, allowed=[tmp_path])


def test_toggles_become_the_kernel_passes_in_the_tables_order():
    t = D.Toggles(fused_norm=True, attention="flash", winograd=True)
    assert t.label == "fused norm + FlashAttention + Winograd" and D.Toggles().label == "untouched"
    assert D.toggle_passes(t, native=True) == [
        ("kernels.fused_norm", {"backend": "native", "measure": False}),
        ("kernels.attention", {"impl": "flash_native", "measure": False}),
        ("kernels.winograd", {"tile": 4, "measure": False})]
    assert [c for _, c in D.toggle_passes(D.Toggles(True, "partial_softmax"), native=False)] == [
        {"backend": "eager", "measure": False}, {"impl": "partial_softmax", "measure": False}]
    assert D.toggle_passes(D.Toggles(), native=True) == []


# ---------------------------------------------------------------------------------------- runs

def test_an_untouched_run_gives_the_image_and_per_component_figures(sd_bench):
    seen = []
    req = D.diffusion_request("zoo:sd-small", 2, 3, prompt=PROMPT, size=32, threads=1)
    run = sd_bench.generate(req, lambda f, m: seen.append((f, m)))
    assert run.image.shape == (32, 32, 3) and run.image.dtype == np.uint8
    assert _png_size(run.png) == (32, 32, "RGB")
    assert run.unet_calls == 2 and run.text_encoder_ms > 0 and run.vae_decode_ms > 0 and run.unet_step_ms > 0
    assert run.total_ms >= run.text_encoder_ms + run.vae_decode_ms + run.unet_step_ms * 2 * 0.99
    assert set(run.weights_mb) == {"text_encoder", "unet", "vae_decoder"}
    assert all(v > 0 for v in run.weights_mb.values())
    assert run.peak_rss_mb > 50 and run.tensor_peak_mb > 0
    assert run.changes == "" and run.max_abs_vs_untouched is None  # it is the reference
    assert "untouched: UNet call 2" in [m for _, m in seen]
    assert sd_bench.untouched_for(run) is run


def test_fused_norm_draws_the_same_image_and_is_built_once(sd_bench):
    base = _sd(sd_bench)
    fused = _sd(sd_bench, fused_norm=True)
    assert fused.label == "fused norm" and fused.build_s > 0
    assert "unet: 16 norm+activation pairs fused" in fused.changes
    diff = np.abs(fused.image.astype(int) - base.image.astype(int))
    assert diff.max() <= 2 and fused.max_abs_vs_untouched == diff.max() and fused.psnr_vs_untouched > 40
    assert fused.speedup_vs_untouched == pytest.approx(base.total_ms / fused.total_ms)
    again = _sd(sd_bench, fused_norm=True)
    assert again.build_s == 0.0 and np.array_equal(again.image, fused.image)  # the cached copy
    rows = D.history_rows(sd_bench.history)
    assert rows[0]["configuration"] == "fused norm" and rows[0]["size"] == "32×32" and rows[0]["steps"] == 2
    assert rows[0]["max |Δ| vs untouched"] == diff.max() and rows[-1]["configuration"] == "untouched"


def test_partial_softmax_swaps_every_attention_layer_and_keeps_the_image(sd_bench):
    base = _sd(sd_bench)
    run = _sd(sd_bench, attention="partial_softmax")
    assert "unet: 8 attention layers → partial_softmax" in run.changes
    assert "vae_decoder: 2 attention layers → partial_softmax" in run.changes
    assert np.abs(run.image.astype(int) - base.image.astype(int)).max() <= 2 and run.tensor_peak_mb > 0


def test_a_second_run_while_one_is_going_is_answered_busy(sd_bench):
    with D.RUN_LOCK:
        with pytest.raises(InputError, match="^busy: another diffusion run is in progress"):
            _sd(sd_bench)


def test_cancelling_stops_the_run_at_the_next_step_and_frees_the_server(sd_bench):
    req = D.diffusion_request("zoo:sd-small", 50, 0, prompt=PROMPT, size=32, threads=1)
    job = Worker(serial=("diffusion",)).submit(D.generation_job(sd_bench, req), "diffusion", "long run")
    for _ in range(600):
        if "UNet call" in job.message:
            break
        time.sleep(0.05)
    job.cancel()
    assert job.wait(60) and job.status == "cancelled"
    assert int(job.message.rsplit(" ", 1)[1]) < 50 and not D.RUN_LOCK.locked()


def test_a_copy_that_fails_or_disagrees_is_not_used():
    import torch

    def broken(x):
        raise TypeError("unsupported operand\nsecond line")

    x = torch.ones(4)
    assert D._disagrees(torch.nn.Identity(), broken, (x,)) == \
        "the optimized copy fails (TypeError: unsupported operand)"
    assert "off by 1.0e-02 (relative), more than 0.001" in D._disagrees(torch.nn.Identity(), lambda t: t * 1.01, (x,))
    assert D._disagrees(torch.nn.Identity(), lambda t: t * (1 + 1e-5), (x,)) is None


def test_digits_draws_a_32x32_digit_with_only_unet_timings(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))
    monkeypatch.setenv(dd.STEPS_ENV, "1")  # the real architecture, a one-step training budget
    bench = D.DiffusionBench(*D.model_kind("zoo:digits-diffusion"))
    seen = []
    base = bench.generate(D.diffusion_request("zoo:digits-diffusion", 3, 1, digit=4, threads=1),
                          lambda f, m: seen.append(m))
    assert any(m.startswith("training zoo:digits-diffusion") for m in seen)
    assert _png_size(base.png) == (32, 32, "RGB") and base.unet_calls == 3
    assert base.text_encoder_ms is None and base.vae_decode_ms is None and set(base.weights_mb) == {"unet"}
    fused = bench.generate(D.diffusion_request("zoo:digits-diffusion", 3, 1, digit=4, threads=1, fused_norm=True),
                           lambda f, m: None)
    assert "norm+activation pairs fused" in fused.changes and fused.max_abs_vs_untouched <= 2


# ---------------------------------------------------------------------------------------- the page

def _until(at: AppTest, done, timeout=90.0) -> AppTest:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        at.run()
        if done(at):
            return at
        time.sleep(0.3)
    raise AssertionError("the page never showed the run; errors: " + str([e.value for e in at.error]))


def test_the_page_runs_toggles_and_shows_the_image_timings_and_history(sd_bench, tmp_path):
    _sd(sd_bench)  # the untouched run of the same inputs, shown beside the page's
    at = AppTest.from_file(str(APP), default_timeout=60)
    at.session_state["edgeopt_config"] = S.as_config([], workdir=tmp_path / "work")
    at.session_state["diffusion_bench"] = sd_bench  # the model is loaded already
    at.run()
    at.radio(key="live-mode").set_value("Diffusion").run()
    assert not at.exception
    assert {"diff-fused", "diff-winograd"} <= {t.key for t in at.toggle}
    assert at.selectbox(key="diff-attention").options == ["untouched (PyTorch SDPA)", "partially fused softmax",
                                                          "FlashAttention"]
    at.selectbox(key="diff-model").set_value("zoo:sd-small").run()
    at.text_input(key="diff-prompt").input(PROMPT)
    at.number_input(key="diff-steps-sd").set_value(0)
    at.button(key="diff-go").click().run()
    assert [e.value for e in at.error] == ["steps: a whole number from 1 to 200, got 0"]
    at.text_input(key="diff-prompt").input("")
    at.number_input(key="diff-steps-sd").set_value(2)
    at.button(key="diff-go").click().run()
    assert [e.value for e in at.error] == ["prompt: empty; type what to draw"]
    at.text_input(key="diff-prompt").input(PROMPT)
    at.number_input(key="diff-size").set_value(32)
    at.number_input(key="diff-seed").set_value(3)
    at.number_input(key="diff-threads").set_value(1)
    at.checkbox(key="diff-tensors").uncheck()
    at.toggle(key="diff-fused").set_value(True)
    gate = threading.Event()
    hold = at.session_state["worker"].submit(lambda job: gate.wait(30), "diffusion", "an earlier run")
    at.button(key="diff-go").click().run()
    assert [e.value for e in at.error] == ["busy: an earlier run is still running; run again when it has finished"]
    gate.set()
    assert hold.wait(10)
    n = len(sd_bench.history)
    at.button(key="diff-go").click().run()
    at = _until(at, lambda a: len(sd_bench.history) > n and any(m.label == "total" for m in a.metric))
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["VAE decode"].endswith(" ms") and metrics["UNet step (median)"].endswith(" ms")
    assert metrics["UNet step tensors"] == "—" and metrics["weights"].endswith(" MB")
    assert any(m.value.startswith("**Latest: fused norm**") for m in at.markdown)
    assert [c for img in at.image for c in img.captions] == ["fused norm", "untouched, same inputs"]
    history = at.dataframe[-1].value
    assert history["configuration"].iloc[0] == "fused norm" and history["steps"].iloc[0] == 2
