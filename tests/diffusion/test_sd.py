"""Stable Diffusion 1.x offline: the configs build the right classes and shapes, SD-1.4's has the published
sizes, the built-in tokenizer, and a saved folder that loads back (and the one-line errors when it cannot)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from edgeopt.diffusion.sd import (COMPONENTS, SD_CONFIGS, TOKENIZER_WORDS, StableDiffusion, build_tokenizer, load_sd,
                                  parameter_counts, save_sd)
from edgeopt.diffusion.text2img import text_to_image
from edgeopt.errors import InputError
from edgeopt.extras import MissingExtra

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def sd() -> StableDiffusion:
    return load_sd("zoo:sd-small")


@pytest.fixture(scope="module")
def saved(sd, tmp_path_factory):
    return save_sd(sd, tmp_path_factory.mktemp("sd") / "sd-small")


def test_sd_small_builds_the_sd_classes_and_shapes(sd):
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(sd.tokenizer, CLIPTokenizer) and isinstance(sd.text_encoder, CLIPTextModel)
    assert isinstance(sd.unet, diffusers.UNet2DConditionModel) and isinstance(sd.vae, diffusers.AutoencoderKL)
    assert isinstance(sd.scheduler, diffusers.PNDMScheduler)
    assert sd.source == "zoo:sd-small" and "UNet2DConditionModel" not in repr(sd)  # components kept out of repr
    assert (sd.max_tokens, sd.vae_scale_factor, sd.latent_channels, sd.default_size) == (77, 8, 4, (64, 64))
    with torch.inference_mode():
        text = sd.encode_text(torch.zeros(2, 77, dtype=torch.long))
        assert text.shape == (2, 77, 32)
        noise = sd.unet_step(torch.randn(2, 4, 8, 8), torch.tensor([999, 999]), text)
        assert noise.shape == (2, 4, 8, 8)
        assert sd.decode_latents(torch.randn(1, 4, 8, 8)).shape == (1, 3, 64, 64)


def test_random_weights_are_seeded():
    a, b, c = load_sd("zoo:sd-small"), load_sd("zoo:sd-small"), load_sd("zoo:sd-small", seed=1)
    wa, wb, wc = (m.unet.conv_in.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_sd14_config_is_the_published_one():
    cfg = SD_CONFIGS["sd-1.4"]
    te, unet, vae, sched = cfg["text_encoder"], cfg["unet"], cfg["vae"], cfg["scheduler"]
    assert (te["num_hidden_layers"], te["hidden_size"], te["num_attention_heads"], te["max_position_embeddings"],
            te["vocab_size"], te["hidden_act"]) == (12, 768, 12, 77, 49408, "quick_gelu")
    assert unet["block_out_channels"] == (320, 640, 1280, 1280) and unet["layers_per_block"] == 2
    assert (unet["cross_attention_dim"], unet["attention_head_dim"], unet["sample_size"]) == (768, 8, 64)
    assert vae["block_out_channels"] == (128, 256, 512, 512) and vae["latent_channels"] == 4
    assert vae["scaling_factor"] == 0.18215
    assert (sched["beta_schedule"], sched["beta_start"], sched["beta_end"], sched["num_train_timesteps"]) == (
        "scaled_linear", 0.00085, 0.012, 1000)


def test_sd14_parameter_counts_match_the_published_sizes():
    n = parameter_counts("sd-1.4")  # built on the meta device: nothing allocated
    assert n["unet"] == pytest.approx(860e6, rel=0.01)
    assert n["text_encoder"] == pytest.approx(123e6, rel=0.01)
    assert n["vae"] == pytest.approx(84e6, rel=0.01)


def test_built_tokenizer_is_clip_bpe_within_the_encoders_vocab(sd):
    tok = build_tokenizer()
    assert len(tok) < SD_CONFIGS["sd-small"]["text_encoder"]["vocab_size"]
    ids = tok("A photo of a CAT, riding!").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    pieces = tok.convert_ids_to_tokens(ids[1:-1])
    assert pieces[:5] == ["a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]  # lower-cased, whole known words
    assert set(tok.convert_ids_to_tokens(tok("xyz").input_ids[1:-1])) <= {"x", "y", "z</w>"}  # bytes otherwise
    assert all(tok(w).input_ids[1:-1] != [] for w in TOKENIZER_WORDS)
    assert tok.model_max_length == 77


def test_saved_folder_loads_back_and_draws_the_same_image(sd, saved):
    assert {p.name for p in saved.iterdir()} == set(COMPONENTS)
    assert not list(saved.rglob("*.bin")) and len(list(saved.rglob("*.safetensors"))) == 3
    assert not list(saved.parent.glob(".*tmp"))  # written through a temporary folder
    back = load_sd(saved)
    assert back.source == str(saved)
    for name in ("text_encoder", "unet", "vae"):
        sa, sb = getattr(sd, name).state_dict(), getattr(back, name).state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    a, _ = text_to_image(sd, "a red cat", 2, seed=3)
    b, _ = text_to_image(back, "a red cat", 2, seed=3)
    np.testing.assert_array_equal(a, b)


def test_save_never_overwrites(sd, saved):
    with pytest.raises(InputError, match="already exists and is not empty"):
        save_sd(sd, saved)


def _copy(saved, tmp_path):
    import shutil

    return shutil.copytree(saved, tmp_path / "copy")


def test_missing_components_are_named(saved, tmp_path):
    import shutil

    folder = _copy(saved, tmp_path)
    shutil.rmtree(folder / "vae")
    (folder / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(InputError, match=r"not a complete Stable Diffusion folder: missing tokenizer, vae \(") as e:
        load_sd(folder)
    assert "\n" not in str(e.value)


def test_pickle_weights_are_refused(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "unet" / "diffusion_pytorch_model.safetensors").rename(folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(InputError, match=r"unet: no diffusion_pytorch_model.safetensors \(only safetensors"):
        load_sd(folder)


def test_corrupt_component_is_one_line_naming_it(saved, tmp_path):
    folder = _copy(saved, tmp_path)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(InputError, match=r"vae: cannot load: ") as e:
        load_sd(folder)
    assert "\n" not in str(e.value)


def test_components_that_do_not_fit_are_refused(saved, tmp_path):
    import shutil

    folder = _copy(saved, tmp_path)
    tok = build_tokenizer()
    tok.add_tokens([f"extra{i}" for i in range(500)])  # more ids than the text encoder has embeddings
    shutil.rmtree(folder / "tokenizer")
    tok.save_pretrained(folder / "tokenizer")
    with pytest.raises(InputError, match=rf"tokenizer has {len(tok)} tokens, text encoder only 1024"):
        load_sd(folder)


def test_unknown_names_and_paths(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="zoo:sd-9: unknown Stable Diffusion model; known: zoo:sd-1.4, zoo:sd-small"):
        load_sd("zoo:sd-9")
    with pytest.raises(InputError, match="no such folder"):
        load_sd(tmp_path / "nope")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(MissingExtra, match=r"edgeopt\[diffusion\]"):
        load_sd("zoo:sd-small")
