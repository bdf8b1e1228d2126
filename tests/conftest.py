"""Shared fixtures: tiny models (built in code, random weights) and their feeds, so tests stay fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
