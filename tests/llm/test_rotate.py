"""edgeopt.llm.rotate: a rotated residual stream keeps the fp32 function and spreads activation outliers."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeopt.errors import InputError
from edgeopt.llm.rotate import block_size, hadamard, rotate, rotation_of
from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama


def _with_outliers(tied: bool):
    """TinyLlama-mini whose norm gains make a few channels carry 30x larger activations (SmolLM2 has such)."""
    hf = tinyllama({**TINYLLAMA_MINI, "vocab_size": 500, "tie_word_embeddings": tied})
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.input_layernorm.weight[[3, 70]] = 30.0
            layer.post_attention_layernorm.weight.uniform_(0.5, 2.0)
        hf.model.norm.weight.uniform_(0.5, 2.0)
    return hf


def _q_proj_input(model, ids):
    got = {}
    h = model.model.layers[1].self_attn.q_proj.register_forward_pre_hook(lambda m, inp: got.update(x=inp[0]))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    h.remove()
    return logits, got["x"][0]


def _int8_row_error(x):
    """Relative error of one asymmetric int8 scale per token (XNNPACK's dynamic quantization of an input row)."""
    lo, hi = x.amin(-1, keepdim=True), x.amax(-1, keepdim=True)
    s = (hi - lo) / 255
    return float(((((x - lo) / s).round() * s + lo) - x).norm() / x.norm())


@pytest.mark.parametrize("tied", [True, False])
def test_rotation_keeps_the_logits_and_spreads_the_outliers(tied):
    hf = _with_outliers(tied)
    rot = copy.deepcopy(hf)
    facts = rotate(rot, seed=3)
    ids = torch.randint(3, 500, (1, 24), generator=torch.Generator().manual_seed(0))
    ref, x_ref = _q_proj_input(hf, ids)
    got, x_rot = _q_proj_input(rot, ids)
    assert float((ref - got).abs().max() / ref.abs().max()) < 1e-5  # the same fp32 function
    # structure: gains folded (all 1), untied output layer, online rotation before each down projection
    assert all(torch.equal(n.weight, torch.ones_like(n.weight)) for layer in rot.model.layers
               for n in (layer.input_layernorm, layer.post_attention_layernorm))
    assert rot.lm_head.weight is not rot.model.embed_tokens.weight and not rot.config.tie_word_embeddings
    assert type(rot.model.layers[0].mlp.down_proj).__name__ == "HadamardLinear"
    assert facts == {"seed": 3, "down_block": 32, "value_heads": True} and rotation_of(rot.config) == facts
    assert set(rot.state_dict()) <= set(hf.state_dict()) | {"lm_head.weight"}  # loaders see the usual keys
    # the outlier channels are spread: per-token int8 loses several times less on the rotated input
    ratio = lambda x: float(x.abs().amax(0).max() / x.abs().amax(0).median())  # noqa: E731
    assert ratio(x_rot) < ratio(x_ref) / 4
    assert _int8_row_error(x_rot) < _int8_row_error(x_ref) / 2
    assert hf.config.tie_word_embeddings == tied and rotation_of(hf.config) is None  # the copy only


def test_hadamard_blocks():
    h = hadamard(8)
    assert torch.allclose(h @ h.T, torch.eye(8, dtype=h.dtype)) and torch.equal(h, h.T)
    assert block_size(1536) == 128 and block_size(352) == 32 and block_size(5632) == 128
    with pytest.raises(InputError, match="power of two"):
        hadamard(12)


def test_bad_input():
    hf = tinyllama(TINYLLAMA_MINI)
    rotate(hf)
    with pytest.raises(InputError, match="already rotated"):
        rotate(hf)
    with pytest.raises(InputError, match="not a Llama-family"):
        rotate(torch.nn.Linear(2, 2))
    with pytest.raises(InputError, match="no power-of-two block"):
        rotate(tinyllama({**TINYLLAMA_MINI, "intermediate_size": 350}))
