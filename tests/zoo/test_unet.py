"""zoo:unet-*: the diffusers UNet with random weights as a torch Artifact, and a one-line error without diffusers."""

from __future__ import annotations

import sys

import pytest
import torch

from edgeopt.errors import InputError
from edgeopt.extras import MissingExtra
from edgeopt.load import load_model, zoo_models
from edgeopt.zoo.unet import UNET_CONFIGS, build_unet

pytest.importorskip("diffusers")


def test_zoo_unet_loads_with_its_example_inputs():
    assert {f"unet-{k}" for k in UNET_CONFIGS} <= set(zoo_models())
    art = load_model("zoo:unet-tiny")
    assert art.kind == "torch" and art.meta["source"] == "zoo:unet-tiny"
    example = art.meta["example_inputs"]
    assert list(example) == ["sample", "timestep", "encoder_hidden_states"]
    with torch.no_grad():
        assert art.module(*example.values()).shape == (1, 4, 16, 16)


def test_unknown_size_and_missing_diffusers_are_one_line(monkeypatch):
    with pytest.raises(InputError, match="unet:huge: unknown UNet size; known: unet:tiny"):
        build_unet("huge")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # import diffusers now raises ImportError
    with pytest.raises(MissingExtra, match=r"unet:tiny\) needs diffusers.*edgeopt\[diffusion\]") as e:
        build_unet("tiny")
    assert "\n" not in str(e.value)


def test_sd14_unet_is_the_one_the_stable_diffusion_pipeline_builds():
    from edgeopt.diffusion.sd import SD_CONFIGS

    spec = UNET_CONFIGS["sd-1.4"]
    assert SD_CONFIGS["sd-1.4"]["unet"] is spec["config"]  # one definition: the kernel table's and the pipeline's
    assert (spec["latent"], spec["text_tokens"], spec["config"]["cross_attention_dim"]) == (64, 77, 768)
    assert "unet-sd-1.4" in zoo_models()
