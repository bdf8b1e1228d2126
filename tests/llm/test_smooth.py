"""edgeopt.llm.smooth: SmoothQuant re-weighting keeps the fp32 function and flattens activation outliers."""

from __future__ import annotations

import copy

import pytest
import torch

from edgeopt.errors import InputError
from edgeopt.llm.smooth import _act_max, smooth
from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama


def _with_outliers():
    """TinyLlama-mini (GQA 8:1) whose RMSNorm weights make two channels carry 30x larger activations."""
    hf = tinyllama({**TINYLLAMA_MINI, "vocab_size": 500})
    with torch.no_grad():
        for layer in hf.model.layers:
            layer.input_layernorm.weight[[3, 70]] = 30.0
            layer.post_attention_layernorm.weight[[5, 90]] = 30.0
    return hf


def test_smoothing_keeps_the_logits_and_shrinks_the_outliers():
    hf = _with_outliers()
    seqs = [[int(t) for t in torch.randint(3, 500, (24,), generator=torch.Generator().manual_seed(i))] for i in range(4)]
    sm = copy.deepcopy(hf)
    before = _act_max(hf, seqs)
    res = smooth(sm, seqs, alpha=0.5)
    after = _act_max(sm, seqs)
    ids = torch.tensor([seqs[0]])
    with torch.no_grad():
        a, b = hf(input_ids=ids).logits, sm(input_ids=ids).logits
    assert float((a - b).abs().max() / a.abs().max()) < 1e-5  # the same fp32 function
    key = "model.layers.0.self_attn.q_proj"
    ratio = lambda x: float(x.max() / x.median())  # noqa: E731  (outlier channel vs typical channel)
    assert ratio(after[key]) < ratio(before[key]) / 3
    assert res["max_scale"] > 1 and res["sequences"] == 4
    assert not torch.equal(sm.model.layers[0].input_layernorm.weight, hf.model.layers[0].input_layernorm.weight)


def test_bad_alpha_and_non_llama():
    with pytest.raises(InputError, match="alpha must be in"):
        smooth(tinyllama(TINYLLAMA_MINI), [[1, 2, 3]], alpha=1.5)
    with pytest.raises(InputError, match="no model.layers"):
        smooth(torch.nn.Linear(2, 2), [[1, 2]], alpha=0.5)
