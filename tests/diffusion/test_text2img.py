"""Text to image on sd-small: the hand-written loop (classifier-free guidance, three schedulers, seeds), its
per-component timings, swappable calls, prompt truncation, bad settings and the atomic PNG writer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from edgeopt.diffusion.sd import StableDiffusion, load_sd
from edgeopt.diffusion.text2img import (SCHEDULERS, check_settings, classifier_free_guidance, make_scheduler,
                                        parse_size, save_png, text_to_image, tokenize)
from edgeopt.errors import InputError

pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def sd() -> StableDiffusion:
    return load_sd("zoo:sd-small")


class Recorder(torch.nn.Module):
    """Wraps a UNet call and records the shapes it was given (a stand-in for an optimized UNet)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, sample, timestep, text):
        self.calls.append((tuple(sample.shape), tuple(timestep.shape), tuple(text.shape)))
        return self.inner(sample, timestep, text)


def test_draws_an_image_and_times_each_component(sd):
    done = []
    image, st = text_to_image(sd, "a photo of a cat", 3, progress=lambda i, n: done.append((i, n)))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8 and image.std() > 0
    assert done == [(1, 3), (2, 3), (3, 3)]
    assert (st.unet_calls, st.unet_batch, st.scheduler, st.height, st.width) == (3, 2, "ddim", 64, 64)
    assert min(st.text_encoder_ms, st.unet_step_ms, st.vae_decode_ms) > 0 and st.peak_rss_mb > 0
    assert st.unet_total_ms >= st.unet_step_ms and st.total_ms >= st.unet_total_ms + st.vae_decode_ms
    assert st.warnings == [] and st.to_dict()["unet_calls"] == 3


@pytest.mark.parametrize("scheduler", sorted(SCHEDULERS))
def test_each_scheduler_is_deterministic_by_seed(sd, scheduler):
    a, _ = text_to_image(sd, "a dog", 2, seed=5, scheduler=scheduler)
    b, _ = text_to_image(sd, "a dog", 2, seed=5, scheduler=scheduler)
    c, _ = text_to_image(sd, "a dog", 2, seed=6, scheduler=scheduler)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    sched = make_scheduler(sd, scheduler)
    assert type(sched).__name__ == SCHEDULERS[scheduler]
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.beta_end == 0.012  # the model's schedule


def test_schedulers_differ_and_size_follows_the_request(sd):
    ddim, _ = text_to_image(sd, "a dog", 3, seed=1, scheduler="ddim")
    euler, _ = text_to_image(sd, "a dog", 3, seed=1, scheduler="euler")
    assert not np.array_equal(ddim, euler)
    rect, st = text_to_image(sd, "a dog", 1, height=32, width=48)
    assert rect.shape == (32, 48, 3) and (st.height, st.width) == (32, 48)


def test_guidance_mixes_the_two_predictions():
    u, c = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    torch.testing.assert_close(classifier_free_guidance(u, c, 1.0), c)
    torch.testing.assert_close(classifier_free_guidance(u, c, 0.0), u)
    torch.testing.assert_close(classifier_free_guidance(u, c, 7.5), u + 7.5 * (c - u))


def test_guidance_one_is_the_conditional_path(sd):
    rec = Recorder(sd.unet_step)
    cond_only, st = text_to_image(dataclasses.replace(sd, unet_step=rec), "a red horse", 3, guidance=1.0)
    assert st.unet_batch == 1 and rec.calls[0] == ((1, 4, 8, 8), (1,), (1, 77, 32))  # the uncond half is skipped
    rec.calls.clear()
    # the batch of 2 with the prompt as its own negative: both halves predict alike, so any guidance gives the
    # conditional prediction: the CFG path equals the conditional-only one
    guided, st = text_to_image(dataclasses.replace(sd, unet_step=rec), "a red horse", 3, guidance=7.5,
                               negative_prompt="a red horse")
    assert st.unet_batch == 2 and rec.calls[0] == ((2, 4, 8, 8), (2,), (2, 77, 32))
    assert np.abs(cond_only.astype(int) - guided).max() <= 1
    other, _ = text_to_image(sd, "a red horse", 3, guidance=7.5)  # a real (empty) negative prompt changes it
    assert not np.array_equal(other, cond_only)


def test_each_call_can_be_swapped(sd):
    base, _ = text_to_image(sd, "a blue sky", 2)
    calls = []

    def decode(latents):  # e.g. a LiteRT decoder: same contract, its own implementation
        calls.append(latents.shape)
        return sd.decode_latents(latents)

    swapped = dataclasses.replace(sd, decode_latents=decode, encode_text=lambda ids: sd.encode_text(ids) * 0)
    image, _ = text_to_image(swapped, "a blue sky", 2)
    assert calls == [(1, 4, 8, 8)] and not np.array_equal(image, base)  # both swapped calls were used


def test_long_prompt_is_truncated_with_a_warning(sd):
    long = "a photo of a cat " * 40  # 200 tokens + start + end
    ids, warning = tokenize(sd, long)
    assert ids.shape == (1, 77) and int(ids[0, -1]) == sd.tokenizer.eos_token_id
    assert warning.startswith("prompt is 202 tokens, the text encoder reads 77: truncated")
    assert tokenize(sd, "a cat")[1] is None
    image, st = text_to_image(sd, long, 1, negative_prompt=long)
    assert image.shape == (64, 64, 3) and len(st.warnings) == 2 and st.warnings[1].startswith("negative prompt is")


@pytest.mark.parametrize("kwargs, match", [
    ({"steps": 0}, "steps must be > 0, got 0"),
    ({"steps": -3}, "steps must be > 0"),
    ({"guidance": -0.5}, "guidance must be >= 0"),
    ({"height": 60}, "height must be a positive multiple of 8 pixels, got 60"),
    ({"width": -8}, "width must be a positive multiple of 8"),
    ({"scheduler": "lms"}, "unknown scheduler 'lms'; known: ddim, pndm, euler"),
    ({"threads": 0}, "threads must be >= 1"),
])
def test_bad_settings_are_one_line_errors(sd, kwargs, match):
    args = {"steps": 2, **kwargs}
    with pytest.raises(InputError, match=match):
        text_to_image(sd, "a cat", args.pop("steps"), **args)


def test_settings_and_sizes_are_checked_without_a_model():
    check_settings(1, 0.0, "euler", 8, 512)
    assert parse_size("512x768") == (512, 768) and parse_size("64X32") == (64, 32)
    for bad in ("512", "axb", "1x2x3"):
        with pytest.raises(InputError, match="expected HEIGHTxWIDTH"):
            parse_size(bad)


def test_threads_are_restored(sd):
    before = torch.get_num_threads()
    _, st = text_to_image(sd, "a cat", 1, threads=2)
    assert st.threads == 2 and torch.get_num_threads() == before


def test_save_png_is_atomic_and_round_trips(tmp_path):
    from PIL import Image

    image = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    path = save_png(image, tmp_path / "out.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), image)
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]  # no temporary file left
    with pytest.raises(InputError, match="does not exist"):
        save_png(image, tmp_path / "missing" / "out.png")
    with pytest.raises(InputError, match=r"image must be \(H, W, 3\) uint8"):
        save_png(image.astype(np.float32), tmp_path / "f.png")
    assert not (tmp_path / "f.png").exists()
