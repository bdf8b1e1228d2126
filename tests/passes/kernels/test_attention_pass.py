"""kernels.attention: implementations swapped per layer (generic module and Hugging Face BERT), outputs unchanged."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from edgeopt.artifact import Artifact, sha256_module
from edgeopt.errors import RecipeError
from edgeopt.kernels.attention import ALL_IMPLS, HF_SPEC_ATTR, IMPLS, MultiHeadSelfAttention
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


@pytest.mark.parametrize("impl", ALL_IMPLS)
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
    return [m for n, m in module.named_modules() if isinstance(m, _self_attention())]


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


def _bert_with(cls, **meta_changes):
    """A tiny BERT sentence embedder whose self-attention layers are `cls` (a BertSelfAttention subclass)."""
    from transformers import BertConfig, BertModel

    from edgeopt.zoo.hf import wrap_encoder

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32, attn_implementation="eager")
    bert = BertModel(cfg).eval()
    for layer in bert.encoder.layer:
        layer.attention.self.__class__ = cls
    art = wrap_encoder(bert, None, seq_len=12, source="tiny-bert")
    return Artifact.from_module(art.module, art.input_spec, meta={**art.meta, **meta_changes})


def _wraps_decorator(fn):
    """Like transformers' deprecate_kwarg (5.24 wraps BertSelfAttention.forward in it): functools.wraps."""
    @functools.wraps(fn)
    def forward(self, *args, **kwargs):
        return fn(self, *args, **kwargs)
    return forward


def _closure_decorator(fn):
    """A decorator without functools.wraps: the wrapped function lives only in a closure cell."""
    def forward(self, *args, **kwargs):
        return fn(self, *args, **kwargs)
    return forward


def _self_attention():
    from transformers.models.bert.modeling_bert import BertSelfAttention

    return BertSelfAttention


class _Decorated(_self_attention()):
    forward = _closure_decorator(_wraps_decorator(_self_attention().forward))


class _CallsSuper(_self_attention()):
    def forward(self, *args, **kwargs):  # its own code never names the registry: found by the calls it makes
        return super().forward(*args, **kwargs)


class _OwnMath(_self_attention()):
    def forward(self, hidden_states, attention_mask=None, **kwargs):
        from transformers.models.bert.modeling_bert import ALL_ATTENTION_FUNCTIONS, eager_attention_forward

        shape = (*hidden_states.shape[:-1], -1, self.attention_head_size)
        q, k, v = (f(hidden_states).view(shape).transpose(1, 2) for f in (self.query, self.key, self.value))
        fn = eager_attention_forward if ALL_ATTENTION_FUNCTIONS else None  # names the registry, never calls it
        y, w = fn(self, q, k, v, attention_mask, scaling=self.scaling, dropout=0.0)
        return y.reshape(*hidden_states.shape[:-1], -1), w


def _same_outputs(out, art):
    for args in _bert_feeds(art):
        with torch.no_grad():
            y, ref = out.module(*args), art.module(*args)
        assert torch.allclose(y, ref, atol=1e-5), (y - ref).abs().max()


def test_decorated_forward_found_by_its_code_without_example_inputs(tmp_path):
    art = _bert_with(_Decorated)
    feeds_art = art
    art = Artifact.from_module(art.module, art.input_spec, meta={k: v for k, v in art.meta.items()
                                                                 if k != "example_inputs"})
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": "flash", "measure": False, "q_block": 4, "k_block": 8})(art, ctx)
    layers = _bert_layers(out.module)
    assert set(ctx.notes["attention"]["layers"]) == {f"encoder.encoder.layer.{i}.attention.self" for i in (0, 1)}
    assert all(getattr(m, HF_SPEC_ATTR)["impl"] == "flash" for m in layers) and len(layers) == 2
    assert out.module.encoder.config._attn_implementation == "edgeopt"
    _same_outputs(out, feeds_art)


def test_layers_swapped_when_transformers_will_not_switch_the_model(tiny_bert_torch, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    def refuse(self, *args, **kwargs):  # as for a model class whose source transformers cannot read
        raise ValueError("not supported")

    monkeypatch.setattr(PreTrainedModel, "set_attn_implementation", refuse)
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": "naive", "measure": False})(tiny_bert_torch, ctx)
    assert len(ctx.notes["attention"]["layers"]) == 2 and out.module.encoder.config._attn_implementation == "edgeopt"
    _same_outputs(out, tiny_bert_torch)


def test_layers_found_by_their_calls_to_the_registry(tmp_path, monkeypatch):
    import edgeopt.kernels.attention as ka

    art = _bert_with(_CallsSuper)
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": "partial_softmax", "k_block": 5, "runs": 1})(art, ctx)
    names = [f"encoder.encoder.layer.{i}.attention.self" for i in (0, 1)]
    assert list(ctx.notes["attention"]["layers"]) == names and ctx.notes["attention"]["skipped"] == {}
    assert set(ctx.notes["attention"]["per_layer"]) == set(names)  # their inputs were captured too
    layers = _bert_layers(out.module)
    assert len(layers) == 2 and all(getattr(m, HF_SPEC_ATTR)["impl"] == "partial_softmax" for m in layers)
    assert out.module.encoder.config._attn_implementation == "edgeopt"
    calls, kernel = [], ka.attention
    monkeypatch.setattr(ka, "attention", lambda *a, **k: calls.append(k["impl"]) or kernel(*a, **k))
    with torch.no_grad():  # the swapped layers really run the kernels
        out.module(*_bert_feeds(art)[0])
    assert calls == ["partial_softmax", "partial_softmax"]
    monkeypatch.undo()
    _same_outputs(out, art)


def test_layer_naming_the_registry_without_calling_it_is_skipped(tmp_path):
    art = _bert_with(_OwnMath)
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": "flash", "runs": 1})(art, ctx)
    notes = ctx.notes["attention"]
    assert notes["layers"] == {} and len(notes["skipped"]) == 2
    assert all("without calling transformers' attention-function registry" in r for r in notes["skipped"].values())
    assert out.module.encoder.config._attn_implementation == "eager"  # nothing swapped: the switch is undone
    assert not any(hasattr(m, HF_SPEC_ATTR) for m in _bert_layers(out.module))
    _same_outputs(out, art)


def test_subclass_of_diffusers_attention_gets_the_processor(tmp_path):
    attention_processor = pytest.importorskip("diffusers.models.attention_processor")
    from edgeopt.kernels.attention import EdgeoptAttnProcessor

    class MyAttention(attention_processor.Attention):  # same processors, its own name
        pass

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = MyAttention(query_dim=16, heads=2, dim_head=8)

        def forward(self, x):
            return self.attn(x)

    torch.manual_seed(0)
    art = load_model(Block().eval(), {"x": torch.randn(1, 10, 16)})
    assert type(art.module.attn.processor).__name__ in ("AttnProcessor2_0", "AttnProcessor")
    ctx = PassContext(stage_dir=tmp_path)
    out = build_pass("kernels.attention", {"impl": "flash", "q_block": 4, "k_block": 3, "runs": 1})(art, ctx)
    assert isinstance(out.module.attn.processor, EdgeoptAttnProcessor) and out.module.attn.processor.impl == "flash"
    assert ctx.notes["attention"]["layers"]["attn"]["kind"] == "diffusers"
    x = torch.randn(2, 7, 16)
    with torch.no_grad():
        assert torch.allclose(out.module(x), art.module(x), atol=1e-5)


def test_auto_measures_the_native_candidates_when_asked(enc_art, tmp_path):
    ctx = PassContext(stage_dir=tmp_path)
    cands = ["flash", "partial_softmax_native", "flash_native"]
    out = build_pass("kernels.attention", {"candidates": cands, "q_block": 8, "k_block": 8, "runs": 1})(enc_art, ctx)
    for name, rec in ctx.notes["attention"]["layers"].items():
        assert set(rec["measured"]) == set(cands) and rec["impl"] in cands
        assert all(m["rel_error"] < 1e-5 for m in rec["measured"].values())
        assert (rec["measured"]["flash_native"]["peak_intermediate_bytes"]
                < rec["measured"]["flash"]["peak_intermediate_bytes"])
    x = torch.randn(2, 19, 32)
    with torch.inference_mode():
        assert torch.allclose(out.module(x), enc_art.module(x), atol=1e-5)


def test_native_impls_refused_in_one_line_where_they_cannot_be_built(no_native_compiler):
    for cfg, field in (({"impl": "flash_native"}, "impl"), ({"candidates": ["flash", "partial_softmax_native"]},
                                                             "candidates")):
        with pytest.raises(RecipeError, match=f"'{field}'.*native kernels cannot be used here: no C\\+\\+ compiler") as e:
            build_pass("kernels.attention", cfg)
        assert "\n" not in str(e.value)
    build_pass("kernels.attention", {"impl": "flash"})  # the others do not need it


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
