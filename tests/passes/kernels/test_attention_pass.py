"""kernels.attention: implementations swapped per layer (generic module and Hugging Face BERT), outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeopt.artifact import sha256_module
from edgeopt.errors import RecipeError
from edgeopt.kernels.attention import HF_SPEC_ATTR, IMPLS, MultiHeadSelfAttention
from edgeopt.load import load_model
from edgeopt.passes.base import PassContext, build_pass, get_pass


class Encoder(nn.Module):
    """Two generic self-attention layers and a torch.nn.MultiheadAttention (unsupported)."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.a1, self.a2 = MultiHeadSelfAttention(d, 4), MultiHeadSelfAttention(d, 2)
        self.mha = nn.MultiheadAttention(d, 4, batch_first=True)

    def forward(self, x):
        x = x + self.a1(x)
        x = x + self.a2(x)
        return x + self.mha(x, x, x, need_weights=False)[0]


@pytest.fixture()
def enc_art():
    torch.manual_seed(0)
    return load_model(Encoder().eval(), {"x": torch.randn(2, 19, 32)})


def _impls(module):
    return {n: m.impl for n, m in module.named_modules() if isinstance(m, MultiHeadSelfAttention)}


@pytest.mark.parametrize("impl", IMPLS)
def test_generic_layers_swapped_and_unsupported_skipped(enc_art, impl, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": impl, "q_block": 8, "k_block": 5})(enc_art, ctx)
    assert _impls(out.module) == {"a1": impl, "a2": impl}
    assert out.module.a1.blocks == {"q_block": 8, "k_block": 5}
    assert _impls(enc_art.module) == {"a1": "naive", "a2": "naive"}  # input untouched
    assert sha256_module(enc_art.module) == enc_art.sha256
    notes = ctx.notes["attention"]
    assert {n: r["impl"] for n, r in notes["layers"].items()} == {"a1": impl, "a2": impl}
    assert "MultiheadAttention" in notes["skipped"]["mha"] and any("mha" in w for w in ctx.warnings)
    per = notes["per_layer"]  # the untouched layer (naive) against the chosen implementation
    assert set(per) == {"a1", "a2"}
    for name, rec in per.items():
        assert rec["before"] == "naive" and rec["after"] == impl and rec["input_shapes"] == [[2, 19, 32]]
        assert rec["rel_error"] < 1e-5 and rec["latency_ms"]["after"] > 0 and rec["throughput_per_s"]["before"] > 0
        assert rec["dims"]["Tq"] == 19 and rec["peak_intermediate_bytes"]["before"] > 0
    if impl in ("partial_softmax", "flash"):  # the (T, T) matrices are gone
        assert per["a1"]["peak_intermediate_bytes"]["after"] < per["a1"]["peak_intermediate_bytes"]["before"]
    assert getattr(out.module, "a1").impl == impl  # measuring left the choice in place
    x = torch.randn(3, 13, 32)
    with torch.no_grad():
        assert torch.allclose(out.module(x), enc_art.module(x), atol=1e-5)


def test_auto_measures_every_candidate_per_layer(enc_art, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": "auto", "runs": 1, "threads": 1, "q_block": 8, "k_block": 8})(
        enc_art, ctx)
    layers = ctx.notes["attention"]["layers"]
    assert set(layers) == {"a1", "a2"}
    for name, rec in layers.items():
        assert set(rec["measured"]) == set(IMPLS)
        nh, hs = (4, 8) if name == "a1" else (2, 16)
        assert rec["dims"] == {"B": 2, "nh": nh, "Tq": 19, "Tk": 19, "hs": hs}
        for impl, m in rec["measured"].items():
            assert m["latency_ms"] > 0 and m["rel_error"] < 1e-5
        naive_bytes = rec["measured"]["naive"]["peak_intermediate_bytes"]
        assert rec["measured"]["flash"]["peak_intermediate_bytes"] < naive_bytes
        assert rec["impl"] == min(IMPLS, key=lambda i: rec["measured"][i]["latency_ms"])
        assert getattr(out.module, name).impl == rec["impl"]
    x = torch.randn(1, 7, 32)
    with torch.no_grad():
        assert torch.allclose(out.module(x), enc_art.module(x), atol=1e-5)


def _bert_feeds(art):
    ex = {k: v.clone() for k, v in art.meta["example_inputs"].items()}
    ex["attention_mask"][0, 11:] = 0  # padding: the mask matters
    ex2 = {k: v.repeat(2, 1) for k, v in ex.items()}
    ex2["attention_mask"][1, 5:] = 0
    return [tuple(ex.values()), tuple(ex2.values())]


def _bert_layers(module):
    return [m for n, m in module.named_modules() if type(m).__name__ == "BertSelfAttention"]


@pytest.mark.parametrize("impl", IMPLS)
def test_bert_self_attention_through_the_attention_interface(tiny_bert_torch, impl, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": impl, "q_block": 4, "k_block": 8})(tiny_bert_torch, ctx)
    layers = _bert_layers(out.module)
    assert len(layers) == 2 and all(getattr(m, HF_SPEC_ATTR)["impl"] == impl for m in layers)
    assert out.module.encoder.config._attn_implementation == "edgeopt"
    assert len(ctx.notes["attention"]["layers"]) == 2 and ctx.notes["attention"]["skipped"] == {}
    # the input artifact is untouched: its config and layers are as before
    assert tiny_bert_torch.module.encoder.config._attn_implementation == "eager"
    assert not any(hasattr(m, HF_SPEC_ATTR) for m in _bert_layers(tiny_bert_torch.module))
    for args in _bert_feeds(tiny_bert_torch):
        with torch.no_grad():
            ref = tiny_bert_torch.module(*args)
            y = out.module(*args)
        assert torch.allclose(y, ref, atol=1e-5), (y - ref).abs().max()


def test_bert_auto_and_sdpa_model(tmp_path):
    from transformers import BertConfig, BertModel

    from edgeopt.zoo.hf import wrap_encoder

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, attn_implementation="sdpa")
    art = wrap_encoder(BertModel(cfg).eval(), None, seq_len=12, source="tiny-sdpa-bert")
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": "auto", "runs": 1, "threads": 1})(art, ctx)
    (rec,) = ctx.notes["attention"]["layers"].values()
    assert rec["kind"] == "hf" and rec["impl"] in IMPLS and rec["dims"]["nh"] == 2 and rec["dims"]["hs"] == 8
    assert art.module.encoder.config._attn_implementation == "sdpa"
    for args in _bert_feeds(art):
        with torch.no_grad():
            assert torch.allclose(out.module(*args), art.module(*args), atol=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(RecipeError, match="'impl'.*naive.*partial_softmax.*flash.*sdpa.*auto"):
        build_pass("kernels.attention", {"impl": "fast"})
    with pytest.raises(ValueError, match="impl"):
        get_pass("kernels.attention").Config(impl="fast")
    with pytest.raises(RecipeError, match="'q_block'"):
        build_pass("kernels.attention", {"q_block": 0})
    with pytest.raises(RecipeError, match="'candidates'"):
        build_pass("kernels.attention", {"candidates": []})
    with pytest.raises(RecipeError, match="'candidates.0'"):
        build_pass("kernels.attention", {"candidates": ["flash2"]})
    for bad in (0, 1.0):
        with pytest.raises(RecipeError, match="'max_rel_error'"):
            build_pass("kernels.attention", {"max_rel_error": bad})
