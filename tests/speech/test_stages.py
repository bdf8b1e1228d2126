"""Whisper's stages: each derived pair of graphs has the structure its name promises and transcribes like PyTorch."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest

from edgeopt.errors import InputError
from edgeopt.speech import stages as S
from edgeopt.speech import whisper as W
from edgeopt.target import get_target

from speech.test_whisper import _Tok, feats, tiny_whisper


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    model = tiny_whisper()
    target = get_target("cpu-avx2")  # no bf16: the bf16 stage is skipped with its reason
    stages = S.build_stages(model, tmp_path_factory.mktemp("stages"), target,
                            stages=("onnx", "fused", "ort-transformers", "int8-encoder", "ov-bf16-encoder"))
    return model, {s.name: s for s in stages}


def _ops(path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_int8_encoder_quantizes_the_encoder_and_shares_the_fused_fp32_decoder(built):
    model, st = built
    s = st["int8-encoder"]
    assert s.files["decoder"] == st["fused"].files["decoder"]
    assert _ops(s.files["encoder"]) & {"MatMulInteger", "DynamicQuantizeMatMul", "DynamicQuantizeLinear"}
    assert not _ops(s.files["decoder"]) & {"MatMulInteger", "DynamicQuantizeMatMul"}
    # numerically: the cross keys/values of the int8 encoder stay close to the fp32 encoder's
    x = feats(1)
    ref = W.OrtWhisper(st["onnx"].files["encoder"], None, threads=1).cross(x)
    got = W.OrtWhisper(s.files["encoder"], None, threads=1).cross(x)
    for a, b in zip(ref, got):
        a, b = a.ravel(), b.ravel()
        assert np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.98


def test_ort_transformers_fuses_and_transcribes_exactly_as_pytorch(built):
    model, st = built
    s = st["ort-transformers"]
    assert s.notes["encoder"]["fusions"] and s.notes["encoder"]["model_type"] in ("bart", "bert")
    assert "SkipLayerNormalization" in _ops(s.files["encoder"]) | _ops(s.files["decoder"])
    tokens, x = W.Tokens.of(model), feats(3)
    a = W.transcribe(W.TorchWhisper(model, threads=1), x, tokens, _Tok(), max_new_tokens=8)
    b = W.transcribe(s.runner(1), x, tokens, _Tok(), max_new_tokens=8)
    assert a.tokens == b.tokens and len(a.tokens) > 0


def test_a_stage_the_cpu_cannot_run_is_skipped_with_the_reason(built):
    _, st = built
    assert "bf16" in st["ov-bf16-encoder"].skipped and not st["ov-bf16-encoder"].files


def test_unknown_stage_is_an_error(tmp_path):
    with pytest.raises(InputError, match="unknown Whisper stage.*known: onnx"):
        S.build_stages(tiny_whisper(), tmp_path, get_target("cpu"), stages=("onnx", "int3"))


def test_mixed_runner_openvino_encoder_and_ort_decoder_transcribe_as_pytorch(built, tmp_path):
    pytest.importorskip("openvino")
    model, st = built
    enc = S._run_pass("convert.openvino", {"precision": "f32"}, S._component(st["onnx"].files["encoder"], model),
                      tmp_path / "enc", get_target("cpu"))[0]
    mixed = dataclasses.replace(st["fused"], name="mixed", runtime="openvino+ort",
                                files={"encoder": enc.path, "decoder": st["fused"].files["decoder"]}, precision="f32")
    tokens, x = W.Tokens.of(model), feats(3)
    a = W.transcribe(W.TorchWhisper(model, threads=1), x, tokens, _Tok(), max_new_tokens=8)
    b = W.transcribe(mixed.runner(1), x, tokens, _Tok(), max_new_tokens=8)
    assert isinstance(mixed.runner(1), W.MixedWhisper) and a.tokens == b.tokens
