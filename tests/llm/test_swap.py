"""edgeopt.llm.swap: changed Linear weights written into a copy of an LLM export, checked, or refused."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeopt.llm import export as E
from edgeopt.llm.swap import SwapError, _buffers, swap_weights
from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    hf = tinyllama({**TINYLLAMA_MINI, "num_hidden_layers": 1, "vocab_size": 1000})
    d = tmp_path_factory.mktemp("swap")
    E.convert(hf, d / "fp32.tflite", prefill_lens=(8,), kv_cache_max_len=32, score_len=None)
    return hf, d / "fp32.tflite"


def _holds(path, weight):
    w = weight.detach().float().numpy().tobytes()
    return any(v.tobytes() == w for v in _buffers(bytearray(path.read_bytes())) if v.size == len(w))


def test_swap_writes_the_new_weights_and_checks_them(export, tmp_path):
    hf, src = export
    original = src.read_bytes()
    after = copy.deepcopy(hf)
    up = after.model.layers[0].mlp.up_proj.weight
    with torch.no_grad():
        up.add_(0.05 * torch.randn_like(up))
    got = swap_weights(src, tmp_path / "new.tflite", hf, after, 32)
    assert got["weights"] == 1 and got["buffers"] >= 1 and got["verification"]["rel_error"] < 1e-4
    assert _holds(tmp_path / "new.tflite", up) and not _holds(tmp_path / "new.tflite", hf.model.layers[0].mlp.up_proj.weight)
    assert _holds(src, hf.model.layers[0].mlp.up_proj.weight) and src.read_bytes() == original
    assert (tmp_path / "new.tflite").stat().st_size == len(original)


def test_swap_refuses_an_export_of_another_model(export, tmp_path):
    hf, src = export
    stranger = tinyllama({**TINYLLAMA_MINI, "num_hidden_layers": 1, "vocab_size": 1000})
    with torch.no_grad():
        for p in stranger.parameters():
            p.add_(0.1)
    after = copy.deepcopy(stranger)
    with torch.no_grad():
        after.model.layers[0].self_attn.o_proj.weight.mul_(1.5)
    with pytest.raises(SwapError, match="no plain copy"):
        swap_weights(src, tmp_path / "x.tflite", stranger, after, 32)
    assert not (tmp_path / "x.tflite").exists()
    # a norm's all-ones gain shares its buffer with the other norms': changing one of them alone cannot be swapped
    normed = copy.deepcopy(hf)
    with torch.no_grad():
        normed.model.norm.weight.mul_(2.0)
    with pytest.raises(SwapError, match="shares a buffer with a changed weight"):
        swap_weights(src, tmp_path / "y.tflite", hf, normed, 32)
    # the weights found and written, but the new model differs in more than weights (its norm epsilon): the check
    wrong = copy.deepcopy(hf)
    with torch.no_grad():
        wrong.model.layers[0].mlp.up_proj.weight.mul_(1.1)
    wrong.config.rms_norm_eps = 10.0
    with pytest.raises(SwapError, match="does not compute the new model"):
        swap_weights(src, tmp_path / "z.tflite", hf, wrong, 32)
    assert not (tmp_path / "y.tflite").exists() and not (tmp_path / "z.tflite").exists()
