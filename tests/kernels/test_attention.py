"""Attention variants against the naive reference: shapes, masks, dtypes, block sizes, memory of intermediates."""

from __future__ import annotations

import pytest
import torch

from edgeopt.kernels import native
from edgeopt.kernels.attention import (ALL_IMPLS, NATIVE_IMPLS, MultiHeadSelfAttention, attention,
                                       hf_attention_forward, measured_peak_intermediate_bytes, peak_intermediate_bytes)

_SHAPES = [  # (B, nh, Tq, Tk, hs, hv)
    (1, 1, 1, 1, 4, 4),
    (2, 3, 17, 17, 8, 8),
    (1, 2, 9, 23, 16, 5),
    (3, 1, 32, 32, 4, 4),
]
_BLOCKS = [{}, {"q_block": 4, "k_block": 5}, {"q_block": 1, "k_block": 64}]


def _mask(kind: str, B, nh, Tq, Tk, dtype, gen):
    if kind == "none":
        return None
    if kind == "additive":
        return torch.randn(B, 1, Tq, Tk, generator=gen, dtype=torch.float64).to(dtype)
    if kind == "padding":  # HF-style: a large negative number on padded keys, one row per batch item
        m = torch.zeros(B, 1, 1, Tk, dtype=dtype)
        m[0, ..., Tk // 2 + 1:] = torch.finfo(dtype).min
        return m
    if kind == "bool":
        m = torch.rand(1, nh, Tq, Tk, generator=gen) > 0.4
        m[..., 0] = True  # every row attends to something
        return m
    # anti-causal: row i sees keys >= i (and the last), so early key blocks are fully masked for late rows
    m = torch.ones(Tq, Tk, dtype=torch.bool).triu()
    m[:, -1] = True
    return m


@pytest.mark.parametrize("impl", ALL_IMPLS)  # native: float32 runs the C++ kernels, float64 their Python twins
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("mask_kind", ["none", "additive", "padding", "bool", "anticausal"])
def test_matches_naive_reference(impl, dtype, mask_kind):
    gen = torch.Generator().manual_seed(0)
    for B, nh, Tq, Tk, hs, hv in _SHAPES:
        q = torch.randn(B, nh, Tq, hs, generator=gen, dtype=torch.float64)
        k = torch.randn(B, nh, Tk, hs, generator=gen, dtype=torch.float64)
        v = torch.randn(B, nh, Tk, hv, generator=gen, dtype=torch.float64)
        mask = _mask(mask_kind, B, nh, Tq, Tk, dtype, gen)
        ref = attention(q, k, v, None if mask is None else (mask if mask.dtype == torch.bool else mask.double()))
        for blocks in _BLOCKS:
            y = attention(q.to(dtype), k.to(dtype), v.to(dtype), mask, impl=impl, **blocks)
            assert y.shape == (B, nh, Tq, hv) and y.dtype == dtype
            tol = 1e-12 if dtype == torch.float64 else 2e-6
            assert torch.allclose(y.double(), ref, atol=tol, rtol=tol), (impl, blocks, (y.double() - ref).abs().max())


@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_bfloat16_stays_close(impl):
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 20, 16, generator=gen) for _ in range(3))
    ref = attention(q.double(), k.double(), v.double())
    y = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), impl=impl, q_block=8, k_block=8)
    assert y.dtype == torch.bfloat16 and (y.double() - ref).abs().max() < 3e-2


def test_fully_masked_rows_behave_as_softmax_does():
    q = torch.randn(1, 1, 4, 4)
    mask = torch.ones(4, 4, dtype=torch.bool)
    mask[1] = False
    for impl in ("naive", "partial_softmax", "flash", *NATIVE_IMPLS):
        y = attention(q, q, q, mask, impl=impl, q_block=2, k_block=2)
        assert y[0, 0, 1].isnan().all() and not y[0, 0, [0, 2, 3]].isnan().any(), impl
    assert (attention(q, q, q, mask, impl="sdpa")[0, 0, 1] == 0).all()


def test_explicit_scale_and_broadcast_mask():
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 6, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.randn(6, generator=gen, dtype=torch.float64)  # (Tk,) broadcasts over batch, heads and rows
    ref = torch.softmax(q @ k.transpose(-2, -1) * 0.3 + mask, dim=-1) @ v
    for impl in ALL_IMPLS:
        assert torch.allclose(attention(q, k, v, mask, impl=impl, scale=0.3, k_block=4), ref, atol=1e-12)
        y = attention(q.float(), k.float(), v.float(), mask.float(), impl=impl, scale=0.3, k_block=4)
        assert torch.allclose(y.double(), ref, atol=2e-6), impl


def test_bad_arguments_name_the_field():
    q = torch.randn(1, 1, 4, 4)
    known = "known: naive, partial_softmax, flash, sdpa, partial_softmax_native, flash_native"
    with pytest.raises(ValueError, match=f"impl: unknown attention implementation 'fast'; {known}"):
        attention(q, q, q, impl="fast")
    with pytest.raises(ValueError, match="q_block"):
        attention(q, q, q, impl="flash", q_block=0)
    with pytest.raises(ValueError, match="kv_block: unknown block size"):
        attention(q, q, q, impl="flash", kv_block=4)
    with pytest.raises(ValueError, match="mask"):
        attention(q, q, q, torch.zeros(3, 4))


def test_analytic_peak_memory_is_asymptotically_smaller_than_naive():
    args = dict(B=1, nh=8, Tq=4096, Tk=4096, hs=64)
    naive = peak_intermediate_bytes("naive", **args)
    assert naive == 2 * 8 * 4096 * 4096 * 4
    partial = peak_intermediate_bytes("partial_softmax", **args)
    flash = peak_intermediate_bytes("flash", **args)
    assert flash < partial < naive / 10
    assert peak_intermediate_bytes("sdpa", **args) is None
    # doubling the sequence: naive grows 4x, partial 2x, flash not at all
    args2 = {**args, "Tq": 8192, "Tk": 8192}
    assert peak_intermediate_bytes("naive", **args2) == 4 * naive
    assert peak_intermediate_bytes("partial_softmax", **args2) == 2 * partial
    assert peak_intermediate_bytes("flash", **args2) == flash


def test_native_analytic_peak_memory_is_the_kernel_workspace():
    args = dict(B=1, nh=8, Tq=4096, Tk=4096, hs=40)
    blocks = {"q_block": 256, "k_block": 512}
    for impl in NATIVE_IMPLS:
        got = peak_intermediate_bytes(impl, **args, blocks=blocks)
        assert got == native.attention_workspace_bytes(1, 8, 4096, 4096, 256, 512, torch.get_num_threads())
        assert got < peak_intermediate_bytes("flash", **args, blocks=blocks)
        # other dtypes run the Python algorithm: its figure
        py = impl.removesuffix("_native")
        assert (peak_intermediate_bytes(impl, **args, dtype=torch.float64, blocks=blocks)
                == peak_intermediate_bytes(py, **args, dtype=torch.float64, blocks=blocks))


@pytest.mark.parametrize("impl", NATIVE_IMPLS)
def test_native_kernels_run_under_the_op_by_op_memory_tracker(impl):
    if native.unavailable_reason() is not None:
        pytest.skip(native.unavailable_reason())
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 64, 16, generator=gen) for _ in range(3))
    blocks = {"q_block": 16, "k_block": 32}
    assert measured_peak_intermediate_bytes(impl, q, k, v, **blocks) == 0  # its scratch is not an ATen tensor
    with torch.inference_mode():
        attention(q, k, v, impl=impl, **blocks)
    assert native.workspace_bytes() == peak_intermediate_bytes(impl, 1, 2, 64, 64, 16, blocks=blocks)


@pytest.mark.parametrize("impl", ["naive", "partial_softmax", "flash"])
def test_measured_peak_memory_matches_the_analytic_count(impl):
    gen = torch.Generator().manual_seed(3)
    B, nh, T, hs = 1, 2, 256, 32
    q, k, v = (torch.randn(B, nh, T, hs, generator=gen) for _ in range(3))
    blocks = {"q_block": 32, "k_block": 64}
    analytic = peak_intermediate_bytes(impl, B, nh, T, T, hs, torch.float32, blocks)
    measured = measured_peak_intermediate_bytes(impl, q, k, v, **blocks)
    assert analytic * 0.9 <= measured <= analytic * 1.1, (analytic, measured)


def test_multi_head_self_attention_module_switches_impl():
    torch.manual_seed(0)
    mha = MultiHeadSelfAttention(24, 3).eval()
    x = torch.randn(2, 11, 24)
    mask = torch.zeros(2, 1, 1, 11)
    mask[1, ..., 7:] = float("-inf")
    with torch.no_grad():
        ref = mha(x, mask)
        for impl in ALL_IMPLS:
            mha.set_impl(impl, q_block=4, k_block=3)
            assert torch.allclose(mha(x, mask), ref, atol=2e-6), impl
    with pytest.raises(ValueError, match="impl"):
        mha.set_impl("bogus")
    with pytest.raises(ValueError, match="num_heads"):
        MultiHeadSelfAttention(10, 3)


def test_hf_attention_function_uses_the_module_spec_or_falls_back_to_eager():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8) for _ in range(3))
    mask = torch.zeros(2, 1, 7, 7)
    mask[0, ..., 5:] = torch.finfo(torch.float32).min

    class Layer(torch.nn.Module):
        pass

    layer = Layer().eval()
    ref, weights = hf_attention_forward(layer, q, k, v, mask, scaling=0.25)  # no spec: eager, with weights
    assert ref.shape == (2, 7, 4, 8) and weights.shape == (2, 4, 7, 7)
    layer.edgeopt_attention = {"impl": "flash", "blocks": {"q_block": 2, "k_block": 3}}
    out, none = hf_attention_forward(layer, q, k, v, mask, scaling=0.25)
    assert none is None and torch.allclose(out, ref, atol=2e-6)


def test_hf_fallback_eager_repeats_grouped_key_value_heads():
    torch.manual_seed(0)
    q, k, v = torch.randn(1, 4, 5, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 3)

    class Layer(torch.nn.Module):  # defined here: no modeling file with an eager_attention_forward
        pass

    out, weights = hf_attention_forward(Layer().eval(), q, k, v, None, scaling=0.5)
    ref = attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), None, scale=0.5)  # (1, 4, 5, 3)
    assert out.shape == (1, 5, 4, 3) and torch.allclose(out, ref.transpose(1, 2), atol=1e-6)


def test_switch_record_and_restore_through_the_public_registry():
    from transformers import BertConfig, BertModel

    from edgeopt.kernels.attention import HF_NAME, record_hf_dispatch, restore_hf_attention, use_hf_attention

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, attn_implementation="sdpa")
    model = torch.nn.Module()
    model.bert = BertModel(cfg).eval()
    flash = BertConfig()  # a stand-alone layer config with an implementation the kernels must not replace
    flash._attn_implementation = "flash_attention_2"
    model.other = torch.nn.Linear(2, 2)
    model.other.config = flash
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        ref = model.bert(ids).last_hidden_state
    before = use_hf_attention(model, [flash])
    assert model.bert.config._attn_implementation == HF_NAME and flash._attn_implementation == "flash_attention_2"
    with record_hf_dispatch() as seen, torch.no_grad():
        y = model.bert(ids).last_hidden_state  # no spec on any layer: the model's eager attention
    selfs = [layer.attention.self for layer in model.bert.encoder.layer]
    assert list(seen.values()) == selfs and torch.allclose(y, ref, atol=1e-5)
    with torch.no_grad():
        model.bert(ids)
    assert len(seen) == 2  # recorded only inside the block
    restore_hf_attention(before)
    assert model.bert.config._attn_implementation == "sdpa" and flash._attn_implementation == "flash_attention_2"


@pytest.mark.parametrize("impl", ALL_IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_random_shapes_blocks_and_masks(impl, dtype):
    import random

    rng = random.Random(f"{impl}{dtype}")
    gen = torch.Generator().manual_seed(5)
    tol = {torch.float64: 1e-12, torch.float32: 5e-6, torch.bfloat16: 5e-2}[dtype]
    for _ in range(5):
        B, nh, Tq, Tk = rng.randint(1, 3), rng.randint(1, 3), rng.randint(1, 40), rng.randint(1, 40)
        hs, hv = rng.randint(1, 24), rng.randint(1, 24)
        q = torch.randn(B, nh, Tq, hs, generator=gen, dtype=torch.float64)
        k = torch.randn(B, nh, Tk, hs, generator=gen, dtype=torch.float64)
        v = torch.randn(B, nh, Tk, hv, generator=gen, dtype=torch.float64)
        mask = _mask(rng.choice(["none", "additive", "padding", "bool"]), B, nh, Tq, Tk, torch.float64, gen)
        ref = attention(q, k, v, mask)
        blocks = {"q_block": rng.randint(1, 48), "k_block": rng.randint(1, 48)}
        m = mask if mask is None or mask.dtype == torch.bool else mask.to(dtype).clamp_min(torch.finfo(dtype).min)
        y = attention(q.to(dtype), k.to(dtype), v.to(dtype), m, impl=impl, **blocks)
        assert y.shape == (B, nh, Tq, hv) and y.dtype == dtype
        assert (y.double() - ref).abs().max() <= tol * max(1.0, ref.abs().max()), (B, nh, Tq, Tk, hs, hv, blocks)


# ------------------------------------------------------------------ diffusers attention processor
def _diffusers_attention(**kw):
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    return Attention(**{"query_dim": 16, "heads": 2, "dim_head": 8, **kw}).eval()


@pytest.mark.parametrize("stock", ["AttnProcessor2_0", "AttnProcessor"])
@pytest.mark.parametrize("impl", ALL_IMPLS)
def test_diffusers_processor_matches_the_stock_processors(stock, impl):
    import diffusers.models.attention_processor as dap

    from edgeopt.kernels.attention import EdgeoptAttnProcessor, diffusers_processor_for

    cases = [  # (Attention kwargs, hidden states, encoder states, attention mask)
        ({}, torch.randn(2, 9, 16), None, None),
        ({"cross_attention_dim": 12}, torch.randn(2, 9, 16), torch.randn(2, 5, 12), None),
        ({"residual_connection": True, "rescale_output_factor": 2.0, "norm_num_groups": 4},
         torch.randn(1, 16, 3, 4), None, None),  # an image input with group norm, as in a VAE / UNet mid block
        ({"cross_attention_dim": 12}, torch.randn(2, 6, 16), torch.randn(2, 5, 12), torch.tensor(
            [[0.0, 0, 0, -1e4, -1e4], [0, 0, 0, 0, 0]]).view(2, 1, 5)),  # additive padding mask over text tokens
        ({"scale_qk": False}, torch.randn(1, 7, 16), None, None),  # scale 1: AttnProcessor uses it, 2_0 does not
    ]
    for kw, x, enc, mask in cases:
        attn = _diffusers_attention(**kw)
        attn.set_processor(getattr(dap, stock)())
        with torch.no_grad():
            ref = attn(x, encoder_hidden_states=enc, attention_mask=mask)
            proc = diffusers_processor_for(attn, impl, q_block=4, k_block=3)
            assert isinstance(proc, EdgeoptAttnProcessor) and proc.impl == impl
            attn.set_processor(proc)
            y = attn(x, encoder_hidden_states=enc, attention_mask=mask)
        assert y.shape == ref.shape and torch.allclose(y, ref, atol=2e-6), (kw, (y - ref).abs().max())


def test_diffusers_processor_refuses_custom_processors_and_bad_names():
    from edgeopt.kernels.attention import EdgeoptAttnProcessor, diffusers_processor_for

    attn = _diffusers_attention()

    class MyProcessor:
        def __call__(self, attn, hidden_states, **kw):
            return hidden_states

    attn.set_processor(MyProcessor())
    with pytest.raises(ValueError, match="processor: MyProcessor is not supported"):
        diffusers_processor_for(attn, "flash")
    with pytest.raises(ValueError, match="impl: unknown attention implementation"):
        EdgeoptAttnProcessor("fastest")
    with pytest.raises(ValueError, match="q_block"):
        EdgeoptAttnProcessor("flash", q_block=0)
