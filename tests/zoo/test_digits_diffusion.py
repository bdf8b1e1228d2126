"""zoo:digits-diffusion: the resumable denoiser training loop, the trained-weights cache, DDPM/DDIM sampling and
load_model, all on tiny UNets and training budgets (the real budget trains for minutes, once, on first use)."""

from __future__ import annotations

import json

import pytest
import torch

from edgeopt.errors import InputError
from edgeopt.load import load_model
from edgeopt.zoo import digits
from edgeopt.zoo import digits_diffusion as dd

pytest.importorskip("diffusers")

TINY = dict(dd.UNET_CONFIG, block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
            up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)
CFG = dd.DenoiserConfig(steps=8, batch_size=16, warmup_steps=2, checkpoint_every=3)


@pytest.fixture(scope="module")
def train_data():
    x, y = digits.load_split("train")
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


@pytest.fixture(scope="module")
def trained(train_data):
    model = dd.build_denoiser(TINY)
    result = dd.train_denoiser(model, *train_data, CFG, progress=False)
    return model, result


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_noise_prediction_loss_goes_down(train_data):
    model = dd.build_denoiser(TINY)
    cfg = CFG.model_copy(update={"steps": 20})
    result = dd.train_denoiser(model, *train_data, cfg, progress=False)
    assert result.steps == 20 and len(result.losses) == 20 and result.resumed_from == 0
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    assert not model.training


def test_min_snr_weighting_weights_the_same_batch_down(train_data):
    one = CFG.model_copy(update={"steps": 1})
    weighted = dd.train_denoiser(dd.build_denoiser(TINY), *train_data, one, progress=False)
    plain = dd.train_denoiser(dd.build_denoiser(TINY), *train_data, one.model_copy(update={"snr_gamma": None}),
                              progress=False)
    assert one.snr_gamma == 5.0 and 0 < weighted.losses[0] < plain.losses[0], "weights min(SNR, γ)/SNR are ≤ 1"


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path, train_data, trained):
    model, full = trained
    ckpt = tmp_path / "ckpt.safetensors"
    part = dd.build_denoiser(TINY)
    first = dd.train_denoiser(part, *train_data, CFG, checkpoint=ckpt, stop_at=4, progress=False)
    assert first.steps == 4 and first.losses == full.losses[:4] and ckpt.exists()
    resumed_model = dd.build_denoiser(TINY, seed=7)  # other initial weights: everything comes from the checkpoint
    resumed = dd.train_denoiser(resumed_model, *train_data, CFG, checkpoint=ckpt, progress=False)
    assert resumed.resumed_from == 4 and resumed.steps == CFG.steps
    assert resumed.losses == full.losses, "same batches, noise and timesteps after the resume"
    assert _same_weights(resumed_model, model), "same weights (EMA included) as the uninterrupted run"
    assert not list(tmp_path.glob(".*tmp")), "checkpoints are written atomically"
    again = dd.build_denoiser(TINY, seed=9)
    assert dd.train_denoiser(again, *train_data, CFG, checkpoint=ckpt, progress=False).resumed_from == CFG.steps
    assert _same_weights(again, model), "a finished checkpoint gives the finished model"


def test_checkpoint_of_other_settings_or_bad_data_is_one_line(tmp_path, train_data):
    ckpt = tmp_path / "ckpt.safetensors"
    dd.train_denoiser(dd.build_denoiser(TINY), *train_data, CFG, checkpoint=ckpt, stop_at=1, progress=False)
    with pytest.raises(InputError, match="other training settings"):
        dd.train_denoiser(dd.build_denoiser(TINY), *train_data, CFG.model_copy(update={"lr": 1e-4}),
                          checkpoint=ckpt, progress=False)
    ckpt.write_bytes(b"not safetensors")
    with pytest.raises(InputError, match="not a readable training checkpoint"):
        dd.train_denoiser(dd.build_denoiser(TINY), *train_data, CFG, checkpoint=ckpt, progress=False)
    x, y = train_data
    with pytest.raises(InputError, match="non-empty"):
        dd.train_denoiser(dd.build_denoiser(TINY), x[:0], None, CFG, progress=False)
    with pytest.raises(InputError, match="one per image"):
        dd.train_denoiser(dd.build_denoiser(TINY), x[:10], y[:9], CFG, progress=False)


def test_a_given_noise_schedule_and_per_image_conditioning_train(train_data):
    x, _ = train_data
    assert "scheduler_config" not in CFG.key(), "configs without one keep their cache keys"
    sd_like = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    cfg = CFG.model_copy(update={"steps": 2, "scheduler_config": sd_like})
    assert cfg.key()["scheduler_config"] == sd_like and cfg.noise_schedule() == sd_like
    seen = []

    class Conditioned(torch.nn.Module):  # takes (B, T, D) states as its third input, as Stable Diffusion's UNet does
        def __init__(self):
            super().__init__()
            self.inner = dd.build_denoiser(dict(TINY, num_class_embeds=None))

        def forward(self, sample, t, states):
            seen.append(tuple(states.shape))
            return self.inner(sample, t)

    states = torch.randn(1, 5, 3).expand(x.shape[0], -1, -1)  # one prompt's states for every image
    result = dd.train_denoiser(Conditioned(), x, states, cfg, progress=False)
    assert result.steps == 2 and seen == [(CFG.batch_size, 5, 3)] * 2
    with pytest.raises(InputError, match="one per image"):
        dd.train_denoiser(Conditioned(), x, torch.zeros(x.shape[0]), cfg, progress=False)  # float class labels
    with pytest.raises(InputError, match="predicts 'v_prediction'; this loop trains noise prediction"):
        dd.train_denoiser(Conditioned(), x, states, cfg.model_copy(
            update={"scheduler_config": {**sd_like, "prediction_type": "v_prediction"}}), progress=False)


def test_sampling_is_seeded_for_ddim_and_ddpm(trained):
    model, _ = trained
    labels = [0, 3, 9]
    for scheduler in ("ddim", "ddpm"):
        a = dd.sample_digits(model, labels, steps=4, scheduler=scheduler, seed=1)
        b = dd.sample_digits(model, labels, steps=4, scheduler=scheduler, seed=1)
        assert a.shape == (3, 1, 32, 32) and torch.equal(a, b)
        assert a.min() >= -1 and a.max() <= 1 and torch.isfinite(a).all()
        assert not torch.equal(a, dd.sample_digits(model, labels, steps=4, scheduler=scheduler, seed=2))
    assert not torch.equal(dd.sample_digits(model, labels, steps=4, scheduler="ddim"),
                           dd.sample_digits(model, labels, steps=4, scheduler="ddpm"))
    with pytest.raises(InputError, match="labels must be digits"):
        dd.sample_digits(model, [10], steps=2)
    with pytest.raises(InputError, match="steps > 0"):
        dd.sample_digits(model, [1], steps=0)
    with pytest.raises(InputError, match="unknown scheduler 'euler'"):
        dd.sample_digits(model, [1], steps=2, scheduler="euler")


def test_cache_round_trip_loads_identical_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))
    m1, info1 = dd.train_digits_diffusion(steps=2, unet_config=TINY)
    m2, info2 = dd.train_digits_diffusion(steps=2, unet_config=TINY)
    assert not info1["cached"] and info2["cached"] and info1["key"] == info2["key"]
    assert _same_weights(m1, m2)
    folder = tmp_path / "digits-diffusion"
    assert [p.name for p in folder.iterdir()] == [f"digits-diffusion-{info1['key']}"], "no temp folder or checkpoint left"
    files = sorted(p.name for p in (folder / f"digits-diffusion-{info1['key']}").iterdir())
    assert files == ["config.json", "diffusion_pytorch_model.safetensors", "info.json"], "an ordinary diffusers folder"
    assert json.loads((folder / f"digits-diffusion-{info1['key']}" / "info.json").read_text())["fit"]["steps"] == 2
    _, info3 = dd.train_digits_diffusion(steps=3, unet_config=TINY, cache=False)
    assert info3["key"] != info1["key"] and info3["cache"] is None and len(list(folder.iterdir())) == 1


def test_load_model_gives_one_denoising_step(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))
    monkeypatch.setenv(dd.STEPS_ENV, "1")  # the real architecture, a one-step training budget
    art = load_model("zoo:digits-diffusion")
    assert art.kind == "torch" and art.meta["source"] == "zoo:digits-diffusion"
    assert art.input_spec.names == ["sample", "timestep", "class_labels"]
    assert art.meta["arch"]["num_class_embeds"] == 10 and art.meta["noise_schedule"]["num_train_timesteps"] == 1000
    example = art.meta["example_inputs"]
    with torch.no_grad():
        noise = art.module(*example.values())
    assert noise.shape == (1, 1, 32, 32) and torch.isfinite(noise).all()
    assert dd.sample_digits(art, [5, 6], steps=2).shape == (2, 1, 32, 32)
    monkeypatch.setenv(dd.STEPS_ENV, "many")
    with pytest.raises(InputError, match="EDGEOPT_DIGITS_DIFFUSION_STEPS"):
        load_model("zoo:digits-diffusion")
