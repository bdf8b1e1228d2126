"""edgeopt.llm.gptq: weights on the LiteRT quantizer's own grid, with a smaller output error than plain rounding."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from edgeopt.errors import InputError
from edgeopt.llm.gptq import Grid, _round, gptq, grid_of, plan, quantize_weight
from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama


def _correlated_inputs(n: int, d: int, seed: int = 0):
    """Inputs with a few large channels and correlated ones (what makes GPTQ's compensation pay)."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d ** 0.5 + torch.eye(d, dtype=torch.float64)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) @ mix
    x[:, :3] *= 8
    return x


def _reference_quantizer(w: np.ndarray, grid: Grid) -> np.ndarray:
    """The integers ai-edge-quantizer stores for `w` (its own min/max scale and rounding functions; it keeps block
    scales in fp16, so compare integers rather than dequantized values)."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import uniform_quantize_tensor as uq

    if grid.block:
        gran = getattr(qtyping.QuantGranularity, f"BLOCKWISE_{grid.block}")
        blocks = w.reshape(w.shape[0], -1, grid.block)
        lo, hi = blocks.min(-1), blocks.max(-1)
    else:
        gran = qtyping.QuantGranularity.CHANNELWISE
        lo, hi = w.min(1, keepdims=True), w.max(1, keepdims=True)
    zp, scale = uq.tensor_zp_scale_from_min_max(lo, hi, grid.bits, True, gran)
    params = qtyping.UniformQuantParams(num_bits=grid.bits, quantized_dimension=1 if grid.block else 0,
                                        scale=scale, zero_point=zp,
                                        symmetric=True, block_size=grid.block)
    return uq.uniform_quantize(w, params, is_blockwise_quant=bool(grid.block))


@pytest.mark.parametrize("grid", [Grid(8), Grid(4, 32)])
def test_gptq_lands_on_the_quantizers_grid_with_less_output_error(grid):
    x = _correlated_inputs(512, 128)
    w = torch.randn(48, 128, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    h = x.T @ x / len(x)
    q = quantize_weight(w.float(), h, grid).double()
    # the quantizer's own min/max rounding returns GPTQ's weights (the scale-setting elements were pinned)
    block = grid.block or 128
    scale = q.reshape(48, -1, block).abs().amax(-1, keepdim=True) / grid.qmax
    ints = (q.reshape(48, -1, block) / scale).round().reshape(48, 128).numpy()
    np.testing.assert_array_equal(_reference_quantizer(q.numpy().astype(np.float32), grid), ints)
    assert torch.allclose(_round(q, grid), q, atol=1e-7)
    err = lambda wq: float(((w - wq) @ x.T).norm() / (w @ x.T).norm())  # noqa: E731  output error
    assert err(q) < 0.8 * err(_round(w, grid))
    assert not torch.allclose(q, _round(w, grid))  # not plain rounding


def test_plan_and_model_gptq():
    hf = tinyllama({**TINYLLAMA_MINI, "vocab_size": 300, "tie_word_embeddings": True})
    p = plan(hf, "dynamic_int8", feedforward="dynamic_int4_block32")
    assert p["model.layers.0.self_attn.q_proj"] == Grid(8) and p["model.layers.1.mlp.down_proj"] == Grid(4, 32)
    assert "lm_head" not in p  # tied: the output layer is the embedding table, not a Linear of its own
    assert "model.layers.0.mlp.up_proj" not in plan(hf, "dynamic_int8", feedforward="fp16")
    assert grid_of("fp16") is None and grid_of("dynamic_int4_block64") == Grid(4, 64)
    seqs = [[int(t) for t in torch.randint(3, 300, (32,), generator=torch.Generator().manual_seed(i))]
            for i in range(4)]
    g = copy.deepcopy(hf)
    calls = []
    res = gptq(g, seqs, p, advance=calls.append)
    assert res["linears"] == len(p) == len(calls) == 14 and res["grids"] == ["int4_block32", "int8"]
    assert res["gptq_output_error"] < res["rtn_output_error"]
    mods = dict(g.named_modules())
    for name, grid in p.items():
        w = mods[name].weight.data.double()
        assert torch.allclose(_round(w, grid), w, atol=1e-7), name
    assert torch.equal(g.lm_head.weight, hf.lm_head.weight)  # left to the quantizer (tied table)


def test_bad_input():
    hf = tinyllama(TINYLLAMA_MINI)
    with pytest.raises(InputError, match="nothing to quantize"):
        gptq(hf, [[1, 2, 3]], {})
    with pytest.raises(InputError, match="no calibration"):
        gptq(hf, [], {"lm_head": Grid(8)})
    with pytest.raises(InputError, match="has no Linear 'x.y'"):
        gptq(hf, [[1, 2]], {"x.y": Grid(8)})
    with pytest.raises(InputError, match="not a multiple of the block size"):
        quantize_weight(torch.ones(4, 40), torch.eye(40), Grid(4, 32))
