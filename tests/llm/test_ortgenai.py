"""ONNX Runtime GenAI: the builder on a tiny random Llama folder (fp32 matches PyTorch, int8 close), errors, limits."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import check_session_limits, cosine_rows

from edgeopt.errors import InputError
from edgeopt.llm import ortgenai
from edgeopt.llm.ortgenai import OrtGenAiLlm, build_ortgenai
from edgeopt.llm.session import LlmSession
from edgeopt.llm.torch_session import TorchLlm
from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama

pytest.importorskip("onnxruntime_genai")

IDS = [1, 450, 7483, 310, 3444, 338, 29871, 13, 4086, 31999]


def _save_mini_folder(folder: Path) -> None:
    """tinyllama-mini (seeded random weights) and a word-level tokenizer over its 32000 ids (the builder copies a
    tokenizer and fails without one; the session never uses it)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tinyllama(TINYLLAMA_MINI).save_pretrained(folder, safe_serialization=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, TINYLLAMA_MINI["vocab_size"])}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The mini folder and its fp32 and int8 ONNX Runtime GenAI builds (two builder runs, ~10 s each)."""
    root = tmp_path_factory.mktemp("ortgenai")
    _save_mini_folder(root / "hf")
    return root / "hf", build_ortgenai(root / "hf", root / "fp32", "fp32"), build_ortgenai(root / "hf", root / "int8")


def _cached_logits(session: LlmSession, ids: list[int], n_prompt: int) -> np.ndarray:
    rows = [session.prefill(ids[:n_prompt])]
    rows += [session.decode(t) for t in ids[n_prompt:-1]]
    return np.stack(rows)


@pytest.mark.slow
def test_fp32_build_matches_pytorch_and_int8_is_close(built):
    hf, fp32_dir, int8_dir = built
    assert json.loads((int8_dir / "edgeopt.json").read_text())["precision"] == "int8"
    assert not [p for p in hf.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    ref = TorchLlm(tinyllama(TINYLLAMA_MINI), threads=1).score(IDS)

    s = OrtGenAiLlm(fp32_dir, threads=1, max_cache=64)
    assert isinstance(s, LlmSession) and s.name == "ortgenai-fp32" and s.vocab_size == 32000
    assert s.max_cache == s.max_prompt == 64
    np.testing.assert_allclose(s.score(IDS), ref, atol=1e-3)
    np.testing.assert_allclose(_cached_logits(s, IDS, 4), ref[3:-1], atol=1e-3)
    np.testing.assert_allclose(s.prefill(IDS[:2]), ref[1], atol=1e-3)  # a new prefill starts from an empty cache
    np.testing.assert_allclose(s.decode(IDS[2]), ref[2], atol=1e-3)
    s.score(IDS[:5])  # score uses a generator of its own: decoding goes on where it was
    np.testing.assert_allclose(s.decode(IDS[3]), ref[3], atol=1e-3)
    s.close()
    with pytest.raises(InputError, match="closed"):
        s.prefill(IDS)

    q = OrtGenAiLlm(int8_dir, threads=1)
    assert q.name == "ortgenai-int8" and q.max_cache == TINYLLAMA_MINI["max_position_embeddings"]
    got = q.score(IDS)
    assert np.abs(got - ref).max() > 1e-4  # 8-bit weights and int8 compute: not the fp32 numbers
    assert cosine_rows(got, ref).min() > 0.99
    assert cosine_rows(_cached_logits(q, IDS, 5), got[4:-1]).min() > 0.999


@pytest.mark.slow
def test_session_limits_and_threads_leave_the_folder_untouched(built):
    _, fp32_dir, _ = built
    before = (fp32_dir / "genai_config.json").read_text()
    s = OrtGenAiLlm(fp32_dir, threads=2, max_cache=8, name="mini")
    assert (fp32_dir / "genai_config.json").read_text() == before  # threads and max_length go in by overlay
    assert s.name == "mini" and s.max_prompt == 8
    check_session_limits(s, IDS)


def test_build_refuses_bad_inputs_before_running_the_builder(tmp_path, monkeypatch):
    def no_run(*a, **k):
        raise AssertionError("the builder must not run")

    monkeypatch.setattr(ortgenai.subprocess, "run", no_run)
    with pytest.raises(InputError, match="precision 'fp16' is not built for the CPU"):
        build_ortgenai(tmp_path, tmp_path / "out", "fp16")
    with pytest.raises(InputError, match="no config.json"):
        build_ortgenai(tmp_path, tmp_path / "out")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(InputError, match="needs the model's tokenizer"):
        build_ortgenai(tmp_path, tmp_path / "out")
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not an ONNX Runtime GenAI build"):
        build_ortgenai(tmp_path, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_failed_build_says_why_in_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    seen = {}

    def failing_builder(cmd, env, **kw):
        seen.update(cmd=cmd, env=env)
        return subprocess.CompletedProcess(cmd, 1, stdout="Reading layer 0\n", stderr=(
            "Traceback (most recent call last):\n  File \"builder.py\", line 1\n"
            "ValueError: The checkpoint you are trying to load has model type `foo`\n"))

    monkeypatch.setattr(ortgenai.subprocess, "run", failing_builder)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    (tmp_path / "hf" / "tokenizer.json").write_text("{}")
    with pytest.raises(InputError, match=r"builder failed \(int4, cpu\): ValueError: The checkpoint .* type `foo`$"):
        build_ortgenai(tmp_path / "hf", tmp_path / "out", "int4")
    assert seen["env"]["HF_HUB_OFFLINE"] == "1" and seen["cmd"][seen["cmd"].index("-p") + 1] == "int4"
    assert seen["cmd"][seen["cmd"].index("-e") + 1] == "cpu"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]  # no output, no temporary folder


def test_session_on_a_folder_without_genai_config(tmp_path):
    with pytest.raises(InputError, match="not an ONNX Runtime GenAI model folder"):
        OrtGenAiLlm(tmp_path)
