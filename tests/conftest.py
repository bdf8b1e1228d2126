"""Shared fixtures that keep tests fast: tiny models (random or trained for seconds), feeds, one native build."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _quiet_threads():
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(1)
    yield


def _tiny_bert_module(seed: int = 0):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64, attn_implementation="eager")
    return BertModel(cfg).eval()


@pytest.fixture(scope="session")
def tiny_bert_torch():
    """A 2-layer, 4-head, 32-wide BERT sentence embedder as a torch Artifact (seq 16)."""
    from edgeopt.zoo.hf import wrap_encoder

    return wrap_encoder(_tiny_bert_module(), None, seq_len=16, source="tiny-bert")


@pytest.fixture(scope="session")
def tiny_bert_onnx(tmp_path_factory, tiny_bert_torch):
    """The tiny BERT exported by convert.onnx (eager attention, TorchScript exporter)."""
    from edgeopt.passes.base import PassContext, build_pass

    d = tmp_path_factory.mktemp("tiny_bert")
    return build_pass("convert.onnx", {})(tiny_bert_torch, PassContext(stage_dir=d))


@pytest.fixture(scope="session")
def tiny_bert_feeds(tiny_bert_onnx):
    from edgeopt.data import random_feeds

    return random_feeds(tiny_bert_onnx.input_spec, 8, {"batch": 1, "sequence": 16}, seed=3, vocab=120)


def _tiny_mlp():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.LayerNorm(64),
                               torch.nn.Linear(64, 8)).eval()


@pytest.fixture(scope="session")
def tiny_mlp_torch():
    import torch

    from edgeopt.load import load_model

    return load_model(_tiny_mlp(), {"x": torch.randn(2, 16)})


@pytest.fixture(scope="session")
def tiny_mlp_onnx(tmp_path_factory, tiny_mlp_torch):
    from edgeopt.passes.base import PassContext, build_pass

    d = tmp_path_factory.mktemp("tiny_mlp")
    return build_pass("convert.onnx", {})(tiny_mlp_torch, PassContext(stage_dir=d))


@pytest.fixture(scope="session")
def tiny_mlp_feeds(tiny_mlp_onnx):
    from edgeopt.data import random_feeds

    return random_feeds(tiny_mlp_onnx.input_spec, 8, {"batch": 2}, seed=3)


@pytest.fixture(scope="session")
def tiny_cnn_onnx(tmp_path_factory):
    """Conv+BN+ReLU twice, then pooling and a linear head, exported to ONNX (input x: batch x 3 x 16 x 16)."""
    import torch

    from edgeopt.load import load_model
    from edgeopt.passes.base import PassContext, build_pass

    torch.manual_seed(0)
    m = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4)).eval()
    with torch.no_grad():
        for mod in m:
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
    art = load_model(m, {"x": torch.randn(1, 3, 16, 16)})
    return build_pass("convert.onnx", {"opset": 13})(art, PassContext(stage_dir=tmp_path_factory.mktemp("tiny_cnn")))


@pytest.fixture(scope="session")
def tiny_bert_openvino(tmp_path_factory, tiny_bert_onnx):
    """The tiny BERT converted to OpenVINO IR (f32)."""
    from edgeopt.passes.base import PassContext, build_pass

    d = tmp_path_factory.mktemp("tiny_bert_ov")
    return build_pass("convert.openvino", {"precision": "f32"})(tiny_bert_onnx, PassContext(stage_dir=d))


def _tiny_conv_net(norm: str):
    """Two 16-wide 3×3 convs (stride 1: Winograd-eligible; 16→16: depthwise-eligible), each followed by
    BatchNorm + ReLU (`norm="bn"`) or GroupNorm + SiLU (`norm="gn"`), then pooling and a 4-way linear head."""
    import torch
    from torch import nn

    torch.manual_seed(0)

    def block(cin: int) -> list:
        conv = nn.Conv2d(cin, 16, 3, padding=1)
        return [conv, nn.BatchNorm2d(16), nn.ReLU()] if norm == "bn" else [conv, nn.GroupNorm(4, 16), nn.SiLU()]

    m = nn.Sequential(*block(3), *block(16), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.GroupNorm)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 1.5)
    return m


def _conv_net_artifact(norm: str):
    import torch

    from edgeopt.load import load_model

    return load_model(_tiny_conv_net(norm), {"x": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))})


@pytest.fixture(scope="session")
def tiny_convnet_torch():
    """Conv 3×3 + BatchNorm + ReLU twice (16 channels), pooling and a linear head (input x: batch × 3 × 16 × 16)."""
    return _conv_net_artifact("bn")


@pytest.fixture(scope="session")
def tiny_gn_convnet_torch():
    """The same net with GroupNorm + SiLU after each conv (the pairs kernels.fused_norm fuses)."""
    return _conv_net_artifact("gn")


@pytest.fixture(scope="session")
def tiny_convnet_feeds(tiny_convnet_torch):
    """16 random feeds of 4 images each (64 samples: enough for a held-out part when a pass fine-tunes)."""
    from edgeopt.data import random_feeds

    return random_feeds(tiny_convnet_torch.input_spec, 16, {"batch": 4}, seed=3)


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory):
    """zoo:tinyllama-mini (2 Llama blocks, hidden 128, 8 heads / 1 KV head, vocab 32000, random weights) exported
    once by edgeopt.llm.export: (hf model, folder with fp32.tflite, int8.tflite and llm.json). Prefill 8 and 16,
    score 32, a 64-position cache."""
    from edgeopt.llm import export as E
    from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama

    hf = tinyllama(TINYLLAMA_MINI)
    d = tmp_path_factory.mktemp("tiny_llm")
    facts = E.convert(hf, d / "fp32.tflite", prefill_lens=(8, 16), kv_cache_max_len=64, score_len=32)
    facts["hf_config"] = hf.config.to_dict()
    E.write_sidecar(d, facts, None)
    E.quantize_file(d / "fp32.tflite", d / "int8.tflite", "dynamic_int8", hf.config)
    return hf, d


@pytest.fixture(scope="session")
def tiny_llm_torch():
    """A 1-block TinyLlama-layout causal LM (vocab 1000, random weights) as a torch Artifact (sequence 16)."""
    from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama, wrap_causal_lm

    hf = tinyllama({**TINYLLAMA_MINI, "num_hidden_layers": 1, "vocab_size": 1000})
    return wrap_causal_lm(hf, None, seq_len=16, source="tiny-llm")


@pytest.fixture(scope="session")
def tiny_llm_feeds(tiny_llm_torch):
    from edgeopt.data import random_feeds

    return random_feeds(tiny_llm_torch.input_spec, 3, {"batch": 1, "sequence": 16}, seed=3, vocab=1000)


@pytest.fixture(scope="session")
def tiny_llm_tflite(tmp_path_factory, tiny_llm_torch):
    """tiny_llm_torch exported by convert.litert_llm (fp32; prefill 8 and decode, a 32-position cache, no scoring
    signature: each signature takes seconds to convert, and LiteRtLlm.score decodes token by token without one)."""
    from edgeopt.passes.base import PassContext, build_pass

    d = tmp_path_factory.mktemp("tiny_llm_tflite")
    return build_pass("convert.litert_llm", {"prefill_lens": [8], "kv_cache_max_len": 32, "score_len": None})(
        tiny_llm_torch, PassContext(stage_dir=d))


# tiny digits CNNs (zoo:digits data), trained for a few seconds: conversions and pipelines of a real, labelled
# classifier at a fraction of zoo:digits-cnn's cost (its ~0.9M parameters take the converters minutes)
TINY_MOBILE = dict(width=0.25, stem=16, blocks=((1, 16, 1, 2), (4, 24, 1, 2), (4, 32, 1, 2)), head=64, dropout=0.0)
TINY_RESNET = dict(stem=16, stages=((16, 1, 2), (32, 1, 2)))


def _trained_digits(spec, epochs: int = 3):
    import torch

    from edgeopt import train as tr
    from edgeopt.zoo import digits as d

    torch.manual_seed(0)
    model = d.build(spec)
    fit, val = d.tensor_data("train").split(0.1)
    tr.fit(model, fit, tr.TrainConfig(epochs=epochs, lr=1e-2), val=val, progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_digits_cnn():
    """A ~3k-parameter MobileNetV2-style digits CNN (inverted residuals, depthwise convs), ~90% test accuracy."""
    from edgeopt.zoo import digits as d

    return d.artifact(_trained_digits(d.MobileNetSpec(**TINY_MOBILE)), "tiny-digits-cnn")


@pytest.fixture(scope="session")
def tiny_digits_resnet():
    """A ~20k-parameter ResNet-style digits CNN (plain 3×3 convs), ~90% test accuracy."""
    from edgeopt.zoo import digits as d

    return d.artifact(_trained_digits(d.ResNetSpec(**TINY_RESNET)), "tiny-digits-resnet")


# the native C++ kernels (edgeopt.kernels.native): one build in the edgeopt cache, shared by the whole session
@pytest.fixture(scope="session")
def native_ops():
    """The compiled native kernels, loaded once per session from the edgeopt cache (compiled there first if this
    build has none: about a minute, once per source and torch version); skipped only where there is no C++
    compiler or they are turned off."""
    from edgeopt.kernels import native

    reason = native.unavailable_reason()
    if reason is not None and (reason.startswith("no C++ compiler") or "EDGEOPT_NATIVE" in reason):
        pytest.skip(reason)
    return native.load()  # a compile error fails here, with the compiler's first error


@pytest.fixture()
def no_native_compiler(monkeypatch, tmp_path):
    """As in a process that has not loaded the native kernels, on a machine with no C++ compiler and no build of
    them in its (empty) edgeopt cache: nothing compiles, and the session's shared build is untouched."""
    from edgeopt.kernels import native

    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path / "empty-edgeopt-cache"))
    monkeypatch.setenv("CXX", "/no/such/c++")
    monkeypatch.setitem(native._state, "ops", None)
    monkeypatch.setitem(native._state, "error", None)
