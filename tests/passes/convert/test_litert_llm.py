"""convert.litert_llm / quantize.litert_llm: an LLM exported with prefill/decode signatures, then quantized."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeopt.errors import PassError, RecipeError
from edgeopt.passes.base import PassContext, build_pass
from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama, wrap_causal_lm


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    art = wrap_causal_lm(tinyllama(TINYLLAMA_MINI), None, seq_len=16, source="zoo:tinyllama-mini")
    d = tmp_path_factory.mktemp("llm_pass")
    # smoothed (SmoothQuant 0.5) first: the export must still compute the untouched model's logits; no scoring
    # signature (the contract test exports one): each signature takes seconds to convert
    out = build_pass("convert.litert_llm", {"prefill_lens": [16, 8], "kv_cache_max_len": 48, "score_len": None,
                                            "smooth": 0.5, "smooth_sequences": 2})(
        art, PassContext(stage_dir=d / "litert"))
    return art, out


def test_export_is_structurally_an_llm_and_numerically_the_model(exported):
    art, out = exported
    from edgeopt.analyze.tflite import tflite_info
    from edgeopt.llm.litert_session import LiteRtLlm

    assert out.kind == "tflite" and out.meta["task"] == "causal-lm"
    assert set(tflite_info(out.path)["signatures"]) == {"prefill_8", "prefill_16", "decode"}
    facts = json.loads((out.path.parent / "llm.json").read_text())
    assert facts["prefill_lens"] == [8, 16] and facts["kv_cache_max_len"] == 48 and "hf_config" in facts
    assert facts["smooth"]["alpha"] == 0.5 and facts["smooth"]["sequences"] == 2
    assert facts["kv_layout"] == "transposed"  # the default: K (1, KV heads, 48, dim), V (1, KV heads, dim, 48)
    dec = {t["name"]: t["shape"] for t in tflite_info(out.path)["signatures"]["decode"]["inputs"]}
    assert dec["kv_cache_k_0"][2] == 48 and dec["kv_cache_v_0"][3] == 48
    ids = [int(t) for t in (np.arange(12) * 101 + 7) % 32000]
    with torch.no_grad():
        ref = art.module.lm(input_ids=torch.tensor([ids])).logits[0].numpy()
    with LiteRtLlm(out.path, threads=1) as s:
        got = np.stack([s.prefill(ids[:6])] + [s.decode(t) for t in ids[6:11]])
    np.testing.assert_allclose(got, ref[5:11], atol=1e-4 * np.abs(ref).max())


def test_quantize_from_the_fp32_export(exported, tmp_path):
    _, out = exported
    q = build_pass("quantize.litert_llm", {"variant": "dynamic_int8", "feedforward": "dynamic_int4_block32"})(
        out, PassContext(stage_dir=tmp_path / "q"))
    facts = json.loads((q.path.parent / "llm.json").read_text())
    assert facts["quantize"] == "dynamic_int8" and facts["feedforward"] == "dynamic_int4_block32"
    assert q.size_bytes < 0.4 * out.size_bytes and q.meta["llm"]["prefill_lens"] == [8, 16]
    # a bundle for the LiteRT-LM engine needs the model's tokenizer, which this tiny model has none of
    with pytest.raises(PassError, match="quantize.litert_llm: .*no tokenizer.json"):
        build_pass("quantize.litert_llm", {"variant": "dynamic_int8", "litertlm": True})(
            out, PassContext(stage_dir=tmp_path / "lm"))
    assert not (tmp_path / "lm" / "model.litertlm").exists()
    with pytest.raises(PassError, match="already quantized"):
        build_pass("quantize.litert_llm", {"variant": "fp16"})(q, PassContext(stage_dir=tmp_path / "qq"))
    assert not (tmp_path / "qq" / "model.tflite").exists()


def _digest(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_gptq_from_the_fp32_export_swaps_the_weights_in(exported, tmp_path):
    art, out = exported
    before = _digest(out.path)
    q = build_pass("quantize.litert_llm", {"variant": "dynamic_int8", "gptq": True, "gptq_sequences": 2})(
        out, PassContext(stage_dir=tmp_path / "g", baseline=art))
    facts = json.loads((q.path.parent / "llm.json").read_text())
    swapped = facts["gptq_export"]
    # the smoothed baseline re-made as llm.json says, GPTQ-ed, and its 11 changed Linear weights (qkv, o, w1, w3, w2
    # per block, the output layer) written into a copy of the export: no new conversion
    assert swapped["method"] == "swap" and swapped["weights"] == 11 and swapped["verification"]["rel_error"] < 1e-4
    assert facts["gptq"]["gptq_output_error"] < facts["gptq"]["rtn_output_error"]
    assert facts["smooth"]["alpha"] == 0.5 and facts["quantize"] == "dynamic_int8"
    assert _digest(out.path) == before and not (tmp_path / "g" / ".fp32.tflite").exists()
    assert {t for t, _ in _fc_weights(q.path)} == {9}  # INT8
    ids = [int(t) for t in (np.arange(12) * 101 + 7) % 32000]
    with torch.no_grad():
        ref = art.module.lm(input_ids=torch.tensor([ids])).logits[0].numpy()
    from edgeopt.llm.litert_session import LiteRtLlm

    with LiteRtLlm(q.path, threads=1) as s:
        got = np.stack([s.prefill(ids[:6])] + [s.decode(t) for t in ids[6:11]])
    assert np.abs(got - ref[5:11]).max() < 0.05 * np.abs(ref).max()
    with pytest.raises(PassError, match="gptq needs the run's baseline"):
        build_pass("quantize.litert_llm", {"gptq": True})(out, PassContext(stage_dir=tmp_path / "nb"))
    other = wrap_causal_lm(tinyllama({**TINYLLAMA_MINI, "hidden_size": 64}), None, seq_len=16)
    with pytest.raises(PassError, match="not the model this export was converted from"):
        build_pass("quantize.litert_llm", {"gptq": True})(out, PassContext(stage_dir=tmp_path / "ob", baseline=other))
    assert not (tmp_path / "nb" / "model.tflite").exists() and not (tmp_path / "ob" / "model.tflite").exists()
    with pytest.raises(RecipeError, match="gptq rounds the weights onto the stage's quantization grid"):
        build_pass("quantize.litert_llm", {"gptq": True, "variant": "none"})


def test_gptq_converts_when_the_export_does_not_hold_the_weights(exported, tmp_path, monkeypatch):
    from edgeopt.llm import swap

    art, out = exported

    def refuse(*a, **k):
        raise swap.SwapError("w2 has no plain copy")

    monkeypatch.setattr(swap, "swap_weights", refuse)
    ctx = PassContext(stage_dir=tmp_path / "c", baseline=art)
    q = build_pass("quantize.litert_llm", {"variant": "dynamic_int8", "gptq": True, "gptq_sequences": 2})(out, ctx)
    facts = json.loads((q.path.parent / "llm.json").read_text())
    assert facts["gptq_export"]["method"] == "convert" and "w2 has no plain copy" in facts["gptq_export"]["reason"]
    assert facts["prefill_lens"] == [8, 16] and facts["kv_cache_max_len"] == 48
    assert any("converted the GPTQ-ed model (w2 has no plain copy)" in w for w in ctx.warnings)
    assert {t for t, _ in _fc_weights(q.path)} == {9}


def test_bad_input(tiny_bert_torch, tmp_path):
    with pytest.raises(PassError, match="not a causal LM"):
        build_pass("convert.litert_llm", {})(tiny_bert_torch, PassContext(stage_dir=tmp_path))
    with pytest.raises(RecipeError, match="variant"):
        build_pass("quantize.litert_llm", {"variant": "int3"})
    with pytest.raises(RecipeError, match="prefill"):
        build_pass("convert.litert_llm", {"prefill_lens": [0]})
    art = wrap_causal_lm(tinyllama(TINYLLAMA_MINI), None, seq_len=16)
    with pytest.raises(PassError, match="must be shorter than the KV cache"):
        build_pass("convert.litert_llm", {"prefill_lens": [64], "kv_cache_max_len": 64})(
            art, PassContext(stage_dir=tmp_path / "x"))
    assert not (tmp_path / "x" / "model.tflite").exists()


def _fc_weights(path):
    """(dtype code, shape) of the weight of every FULLY_CONNECTED op in every signature's subgraph."""
    from ai_edge_litert import schema_py_generated as S

    m = S.Model.GetRootAsModel(path.read_bytes(), 0)
    fc = [i for i in range(m.OperatorCodesLength())
          if m.OperatorCodes(i).BuiltinCode() == S.BuiltinOperator.FULLY_CONNECTED]
    out = []
    for gi in range(m.SubgraphsLength()):
        g = m.Subgraphs(gi)
        for op in (g.Operators(i) for i in range(g.OperatorsLength())):
            if op.OpcodeIndex() in fc:
                t = g.Tensors(op.Inputs(1))
                out.append((t.Type(), tuple(t.ShapeAsNumpy().tolist())))
    return out


def test_rotated_gptq_int8_export(tmp_path):
    from edgeopt.llm.litert_session import LiteRtLlm

    art = wrap_causal_lm(tinyllama({**TINYLLAMA_MINI, "tie_word_embeddings": True}), None, seq_len=16)
    out = build_pass("convert.litert_llm", {"prefill_lens": [8], "kv_cache_max_len": 32, "score_len": None,
                                            "rotate": True, "gptq": True, "gptq_sequences": 2,
                                            "quantize": "dynamic_int8"})(art, PassContext(stage_dir=tmp_path / "r"))
    facts = json.loads((out.path.parent / "llm.json").read_text())
    assert facts["rotate"]["down_block"] == 32 and facts["hf_config"]["edgeopt_rotation"] == facts["rotate"]
    assert facts["gptq"]["gptq_output_error"] < facts["gptq"]["rtn_output_error"]
    assert facts["shape"]["tied_embeddings"] is False  # the rotated output layer has the final norm's gain
    assert not (out.path.parent / ".fp32.tflite").exists()
    # the online Hadamard (one per block) stays float, every other fully-connected op is int8
    weights = _fc_weights(out.path)
    assert {t for t, shape in weights if shape == (32, 32)} == {0}  # FLOAT32 (the 32-wide Hadamard block)
    assert {t for t, shape in weights if shape != (32, 32)} == {9}  # INT8
    assert sum(shape == (32, 32) for _, shape in weights) >= 3  # prefill (its last FFN pruned) and decode
    assert art.module.lm.config.tie_word_embeddings is True  # the input model was not touched
    ids = [int(t) for t in (np.arange(12) * 101 + 7) % 32000]
    with torch.no_grad():
        ref = art.module.lm(input_ids=torch.tensor([ids])).logits[0].numpy()
    with LiteRtLlm(out.path, threads=1) as s:
        got = np.stack([s.prefill(ids[:6])] + [s.decode(t) for t in ids[6:11]])
    assert np.abs(got - ref[5:11]).max() < 0.05 * np.abs(ref).max()  # int8, and the same function
    with pytest.raises(RecipeError, match="gptq rounds the weights onto the stage's quantization grid"):
        build_pass("convert.litert_llm", {"gptq": True})
