"""`edgeopt optimize zoo:NAME` with no recipe and no data: every bundled model gets the recipe and the data that fit it."""

from __future__ import annotations

import pytest

from edgeopt.data import effective_spec
from edgeopt.load import load_model, zoo_models
from edgeopt.pipeline import _resolve_recipe
from edgeopt.recipe import load_recipe

# zoo name -> (the recipe `auto` resolves to, the data its inputs call for); a new zoo model must say both here
EXPECTED = {
    "digits-cnn": ("auto", "zoo:digits"),
    "digits-teacher": ("auto", "zoo:digits"),
    "digits-diffusion": ("diffusion", None),  # whole image runs: the diffusion recipe brings its own prompts
    "minilm": ("auto", "zoo:sentences"),
    "silero-vad": ("vad", "zoo:speech"),
    "smollm2-135m": ("auto", "zoo:sentences"),
    "tinyllama": ("auto", "random"),  # random weights, no tokenizer: random ids, said in the ledger
    "tinyllama-mini": ("auto", "random"),
    "unet-medium": ("auto", "random"),
    "unet-sd-1.4": ("auto", "random"),
    "unet-small": ("auto", "random"),
    "unet-tiny": ("auto", "random"),
    "whisper-tiny-en": ("auto", "zoo:speech"),  # the encoder on log-mel features of synthesized speech
}
# loaded elsewhere or too big for the suite; each shares its loader with a model that is loaded here
NOT_LOADED = {
    "digits-diffusion": "trained on first use (~10 CPU-minutes); its data is the diffusion recipe's own",
    "digits-teacher": "trained on first use (~70 s on 2 cores); the same loader and inputs as digits-cnn",
    "smollm2-135m": "tests/zoo/test_llm.py builds it from its GGUF (~35 s) and checks its tokenizer",
    "tinyllama": "1.1B parameters; the same loader as tinyllama-mini",
    "unet-medium": "the same loader as unet-tiny",
    "unet-sd-1.4": "860M parameters; the same loader as unet-tiny",
    "unet-small": "the same loader as unet-tiny",
}


def test_every_zoo_model_is_listed():
    assert set(EXPECTED) == set(zoo_models())
    assert set(NOT_LOADED) <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_auto_picks_the_recipe(name):
    recipe, _ = EXPECTED[name]
    assert _resolve_recipe(None, f"zoo:{name}") == load_recipe(recipe)


@pytest.mark.parametrize("name", sorted(set(EXPECTED) - set(NOT_LOADED)))
def test_auto_picks_the_data(name):
    if name.startswith("unet"):
        pytest.importorskip("diffusers")
    art = load_model(f"zoo:{name}", seq_len=16)
    spec = effective_spec(None, art, slice(0, 8), count=4)
    kind = "random" if spec.startswith("random:") else spec.split("[")[0]
    assert kind == EXPECTED[name][1], spec
