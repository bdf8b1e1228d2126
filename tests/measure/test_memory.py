"""Peak RSS is measured in a child process: positive, larger for a bigger model, failures named."""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import square_matmul

from edgeopt.artifact import Artifact
from edgeopt.errors import InputError
from edgeopt.measure.memory import MemoryNotMeasurable, PeakMemory, maxrss_mb, peak_rss_mb


def test_child_peak_is_positive_and_grows_with_the_model(tmp_path):
    small = square_matmul(tmp_path / "small.onnx", 16)
    big = square_matmul(tmp_path / "big.onnx", 2048)  # a 16 MiB weight
    # a big parent must not leak into the child's figure (ru_maxrss would carry it across exec)
    ballast = np.ones(64 << 17)  # 64 MiB
    ms = peak_rss_mb(small, {"x": np.ones((1, 16), np.float32)})
    mb = peak_rss_mb(big, {"x": np.ones((1, 2048), np.float32)})
    del ballast
    assert isinstance(ms, PeakMemory)
    assert 0 < ms.import_mb <= ms.peak_mb and 0 < mb.import_mb <= mb.peak_mb
    assert mb.peak_mb - ms.peak_mb > 16  # at least the weight itself
    assert mb.model_mb > ms.model_mb + 16
    assert abs(mb.import_mb - ms.import_mb) < 8  # same interpreter + runtime, no model yet
    assert ms.peak_mb < maxrss_mb()  # the child is not charged with this (bigger) parent
    assert float(mb) == mb.peak_mb
    assert set(mb.to_dict()) == {"peak_mb", "import_mb", "model_mb"}


def test_child_gets_the_feed_and_session(tmp_path):
    art = square_matmul(tmp_path / "m.onnx", 16)
    tuned = Artifact.from_onnx(art.path, meta={"session": {"graph_optimization_level": "nope"}})
    with pytest.raises(InputError) as e:
        peak_rss_mb(tuned, {"x": np.ones((1, 16), np.float32)})
    assert str(art.path) in str(e.value) and "graph_optimization_level 'nope'" in str(e.value)
    with pytest.raises(InputError) as e:
        peak_rss_mb(art, {"other": np.ones((1, 16), np.float32)})
    assert str(art.path) in str(e.value) and "feed has no input 'x'" in str(e.value)


def test_failing_child_names_model_and_last_stderr_line(tmp_path):
    bad = tmp_path / "corrupt.onnx"
    art = square_matmul(bad, 8)
    bad.write_bytes(b"not a model at all" * 50)
    with pytest.raises(InputError) as e:
        peak_rss_mb(art, {"x": np.ones((1, 8), np.float32)})
    msg = str(e.value)
    assert msg.startswith(f"{bad}: memory measurement failed") and "ONNX Runtime cannot load it" in msg
    assert "\n" not in msg


def test_timeout_is_input_error(tmp_path):
    art = square_matmul(tmp_path / "m.onnx", 8)
    with pytest.raises(InputError, match="timed out after 0.01 s"):
        peak_rss_mb(art, {"x": np.ones((1, 8), np.float32)}, timeout_s=0.01)


def test_torch_module_without_reloadable_source_is_not_measurable(tiny_mlp_torch, tiny_bert_torch):
    for art in (tiny_mlp_torch, tiny_bert_torch):  # sources "module:Sequential" and "tiny-bert"
        with pytest.raises(MemoryNotMeasurable, match="not a zoo: name or a Hugging Face folder"):
            peak_rss_mb(art, {})


@pytest.mark.slow
def test_torch_artifact_is_rebuilt_from_its_hf_folder(tmp_path):
    import torch
    from transformers import BertConfig, BertModel

    from edgeopt.load import load_model

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=64)
    BertModel(cfg).save_pretrained(str(tmp_path / "bert"), safe_serialization=True)
    art = load_model(tmp_path / "bert")
    feed = {k: v.numpy()[:, :16] for k, v in art.meta["example_inputs"].items()}
    m = peak_rss_mb(art, feed)
    assert 0 < m.import_mb < m.peak_mb
    # the same source with changed weights is not this artifact: refuse rather than measure the wrong model
    changed = load_model(tmp_path / "bert")
    with torch.no_grad():
        changed.module.encoder.embeddings.word_embeddings.weight.mul_(2)
    changed = Artifact.from_module(changed.module, changed.input_spec, meta=changed.meta)
    with pytest.raises(MemoryNotMeasurable, match="weights changed"):
        peak_rss_mb(changed, feed)


# ------------------------------------------------------------------ simulated limits (edgeopt.measure.mobile)


def test_budget_below_the_runtime_fails_before_loading(tmp_path):
    from edgeopt.measure.memory import MemoryBudgetExceeded

    art = square_matmul(tmp_path / "m.onnx", 16)
    with pytest.raises(MemoryBudgetExceeded) as e:
        peak_rss_mb(art, {"x": np.ones((1, 16), np.float32)}, budget_mb=10)
    # measured by the uncapped child: the interpreter + runtime alone hold more than 10 MB
    assert e.value.measured and e.value.needed_mb > 10 and e.value.budget_mb == 10
    assert "budget 10 MB" in str(e.value) and str(art.path) in str(e.value)


def test_openvino_child_under_a_budget_charges_the_model_not_the_plugin(tmp_path):
    import openvino

    onnx_art = square_matmul(tmp_path / "m.onnx", 16)
    xml = tmp_path / "m.xml"
    openvino.save_model(openvino.convert_model(str(onnx_art.path)), str(xml))
    art = Artifact.from_openvino(xml)
    feed = {"x": np.ones((1, 16), np.float32)}
    free = peak_rss_mb(art, feed)
    cores = [min(os.sched_getaffinity(0))] if hasattr(os, "sched_getaffinity") else None
    capped = peak_rss_mb(art, feed, budget_mb=4096, cores=cores)
    assert capped.budget_mb == 4096 and capped.charged_mb is not None
    # the plugin's and glibc arenas' reservations are not charged: a tiny model stays far below the budget
    assert capped.charged_mb < 4096 / 4
    assert abs(capped.peak_mb - free.peak_mb) < 32  # the cap and affinity do not change what is measured
