"""The CLI: thin commands over the API; bad input is one line on stderr, a non-zero exit, nothing written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from typer.testing import CliRunner

from edgeopt.artifact import sha256_file
from edgeopt.cli import app

runner = CliRunner()


def _one_line_error(result, *needles):
    assert result.exit_code != 0
    text = result.output.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    assert text.startswith("error:")
    for n in needles:
        assert n in text, text


def test_passes_lists_registry():
    res = runner.invoke(app, ["passes", "--json"])
    assert res.exit_code == 0
    names = json.loads(res.output)
    assert {"convert.onnx", "graph.fuse", "graph.quantize_mixed", "session.tune"} <= set(names)


def test_target_json():
    res = runner.invoke(app, ["target", "cpu-avx2", "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["reduce_range"] is True
    _one_line_error(runner.invoke(app, ["target", "quantum"]), "quantum")


def test_analyze_and_profile_json(tiny_mlp_onnx):
    res = runner.invoke(app, ["analyze", str(tiny_mlp_onnx.path), "--json"])
    assert res.exit_code == 0 and json.loads(res.output)["flops"]["total"] > 0
    res = runner.invoke(app, ["profile", str(tiny_mlp_onnx.path), "--json", "--runs", "3", "--threads", "1"])
    assert res.exit_code == 0 and json.loads(res.output)["nodes"]


@pytest.mark.parametrize("kind", ["missing", "random", "truncated", "unknown_domain"])
def test_bad_model_files(tmp_path, tiny_mlp_onnx, kind):
    p = tmp_path / f"{kind}.onnx"
    if kind == "random":
        p.write_bytes(os.urandom(2048))
    elif kind == "truncated":
        p.write_bytes(tiny_mlp_onnx.path.read_bytes()[:500])
    elif kind == "unknown_domain":
        g = helper.make_graph([helper.make_node("Zap", ["x"], ["y"], domain="org.nowhere")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("org.nowhere", 1)]), str(p))
    before = sha256_file(p) if p.exists() else None
    out = tmp_path / "out"
    for cmd in (["analyze", str(p)], ["optimize", str(p), "-o", str(out)]):
        _one_line_error(runner.invoke(app, cmd), p.name)
    assert not out.exists(), "no partial output"
    if before:
        assert sha256_file(p) == before, "input unchanged"


def test_bad_recipes(tmp_path, tiny_mlp_onnx):
    r = tmp_path / "r.yaml"
    out = tmp_path / "out"
    r.write_text("passes:\n  - graph.teleport: {}\n")
    _one_line_error(runner.invoke(app, ["optimize", str(tiny_mlp_onnx.path), "-r", str(r), "-o", str(out)]),
                    "graph.teleport", "known passes")
    r.write_text("passes:\n  - graph.quantize_dynamic: {per_channel: [1, 2]}\n")
    _one_line_error(runner.invoke(app, ["optimize", str(tiny_mlp_onnx.path), "-r", str(r), "-o", str(out)]),
                    "per_channel")
    assert not out.exists()


def test_mismatched_calibration_data(tmp_path, tiny_mlp_onnx):
    cal = tmp_path / "cal.npz"
    np.savez(cal, x=np.zeros((8, 3), np.float32))
    r = tmp_path / "r.yaml"
    r.write_text(f"data: {{calibration: {cal}}}\npasses:\n  - graph.quantize_static: {{}}\n")
    out = tmp_path / "out"
    _one_line_error(runner.invoke(app, ["optimize", str(tiny_mlp_onnx.path), "-r", str(r), "-o", str(out)]),
                    "input 'x' has shape")
    assert not out.exists()


def test_optimize_and_bench_end_to_end(tmp_path, tiny_mlp_onnx):
    r = tmp_path / "r.yaml"
    r.write_text("data: {calibration: 'random:4', eval: 'random:4'}\npasses:\n  - graph.quantize_dynamic: {stage: int8}\n"
                 "measure: {threads: 1, warmup: 1, runs: 4, memory: false}\n")
    out = tmp_path / "out"
    res = runner.invoke(app, ["optimize", str(tiny_mlp_onnx.path), "-r", str(r), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "int8" in res.output and (out / "ledger.json").exists() and (out / "report.md").exists()
    res = runner.invoke(app, ["bench", str(tiny_mlp_onnx.path), str(out / "int8" / "model.onnx"), "--runs", "4",
                              "--warmup", "1", "--threads", "1", "--batch", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)["rows"]) == 2


def test_real_process_prints_no_traceback(tmp_path):
    p = tmp_path / "junk.onnx"
    p.write_bytes(b"not a model")
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "analyze", str(p)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "junk.onnx" in proc.stderr


def test_eval_data_of_the_wrong_dtype_is_refused_before_anything_is_written(tmp_path, tiny_mlp_onnx):
    ev = tmp_path / "eval.npz"
    np.savez(ev, x=np.zeros((8, 16), np.float64))
    r = tmp_path / "r.yaml"
    r.write_text(f"data: {{calibration: 'random:4', eval: {ev}}}\npasses:\n  - graph.quantize_dynamic: {{}}\n")
    out = tmp_path / "out"
    _one_line_error(runner.invoke(app, ["optimize", str(tiny_mlp_onnx.path), "-r", str(r), "-o", str(out)]),
                    "eval data", "float64")
    assert not out.exists()


@pytest.mark.parametrize("name", ["bad-ext", "bad-types", "bad-shape"])
def test_analyze_refuses_inconsistent_models(tmp_path, name):
    """Truncated external data, a node whose input types break its schema, an initializer whose shape
    contradicts its use: one line naming the problem, exit 2, no traceback (optimize refuses them too)."""
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h
    from onnx import numpy_helper as nh

    x = h.make_tensor_value_info("x", T.FLOAT, [1, 4])
    y = h.make_tensor_value_info("y", T.FLOAT, [1, 3])
    p = tmp_path / f"{name}.onnx"
    if name == "bad-ext":
        g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y],
                         [nh.from_array(np.ones((4, 3), np.float32), "w")])
        onnx.save_model(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9), str(p),
                        save_as_external_data=True, location="w.data", size_threshold=0)
        data = (tmp_path / "w.data").read_bytes()
        (tmp_path / "w.data").write_bytes(data[:20])
        want = "external data file w.data has 20 bytes"
    elif name == "bad-types":
        xi = h.make_tensor_value_info("xi", T.INT64, [1, 4])
        g = h.make_graph([h.make_node("Add", ["x", "xi"], ["y"])], "g", [x, xi],
                         [h.make_tensor_value_info("y", T.FLOAT, [1, 4])])
        onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9), str(p))
        want = "Add"
    else:
        g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y],
                         [nh.from_array(np.ones((5, 3), np.float32), "w")])
        onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=9), str(p))
        want = "MatMul"
    for cmd in (["analyze", str(p)], ["optimize", str(p), "-o", str(tmp_path / "out")]):
        _one_line_error(runner.invoke(app, cmd), f"{name}.onnx", want)
    assert not (tmp_path / "out").exists()


def test_optimize_any_onnx_without_a_recipe_or_data(tmp_path, tiny_mlp_onnx):
    out = tmp_path / "out"
    res = runner.invoke(app, ["optimize", str(tiny_mlp_onnx.path), "-o", str(out), "--trials", "2"])
    assert res.exit_code == 0, res.output
    assert "search from baseline: 2 trials" in res.output and "◆" in res.output
    assert "ort-fp32" in res.output and (out / "ledger.json").exists()
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 3), np.float32))
    _one_line_error(runner.invoke(app, ["optimize", str(tiny_mlp_onnx.path), "-o", str(tmp_path / "o2"),
                                        "--data", str(bad)]), "input 'x' has shape")
    assert not (tmp_path / "o2").exists()


@pytest.mark.parametrize("args, match", [
    (["--trials", "0"], "trials"),
    (["--minutes", "0"], "minutes"),
    (["--executor", "slurm"], "slurm"),
    (["--executor", "ray", "--ray-address", "127.0.0.1:1"], "127.0.0.1:1"),
])
def test_optimize_refuses_a_bad_budget_or_executor_in_one_line(tmp_path, tiny_mlp_onnx, args, match):
    out = tmp_path / "out"
    _one_line_error(runner.invoke(app, ["optimize", str(tiny_mlp_onnx.path), "-o", str(out), *args]), match)
    assert not out.exists()


def test_a_failed_branch_is_reported_and_exits_nonzero(tmp_path, tiny_mlp_onnx, monkeypatch):
    """A stage that fails: the other branch is measured and reported, one error line names the failed stage, and
    the exit status is 1."""
    from edgeopt.passes.graph import quantize

    def boom(self, art, ctx):
        raise RuntimeError("quantizer exploded")

    monkeypatch.setattr(quantize.QuantizeDynamic, "run", boom)
    r = tmp_path / "r.yaml"
    r.write_text("data: {calibration: 'random:2', eval: 'random:2'}\npasses:\n  - graph.quantize_dynamic: {stage: int8}\n"
                 "  - graph.simplify: {stage: simplified, from: baseline}\n"
                 "measure: {threads: 1, warmup: 1, runs: 3, memory: false, energy: false}\n")
    res = runner.invoke(app, ["optimize", str(tiny_mlp_onnx.path), "-r", str(r), "-o", str(tmp_path / "out")])
    assert res.exit_code == 1
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert errors == ["error: stage int8 (graph.quantize_dynamic) failed: RuntimeError: quantizer exploded"], res.output
    assert "simplified" in res.output and (tmp_path / "out" / "report.md").exists()


def test_profile_of_a_tflite_shows_its_op_census_and_says_why(tmp_path, tiny_convnet_torch):
    pytest.importorskip("ai_edge_litert")
    from edgeopt.passes.base import PassContext, build_pass

    art = build_pass("convert.litert", {})(tiny_convnet_torch, PassContext(stage_dir=tmp_path / "lt"))
    res = runner.invoke(app, ["profile", str(art.path)])
    assert res.exit_code == 0, res.output
    assert "no per-op profiler" in res.output and "CONV_2D" in res.output
    data = json.loads(runner.invoke(app, ["profile", str(art.path), "--json"]).output)
    assert data["runtime"] == "litert" and {r["op_type"] for r in data["op_census"]} >= {"CONV_2D", "FULLY_CONNECTED"}
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(art.path.read_bytes()[:200])
    _one_line_error(runner.invoke(app, ["profile", str(cut)]), "cut.tflite", "not a valid .tflite file")


@pytest.fixture(scope="module")
def tiny_chat_llm(tmp_path_factory):
    """A 1-block Llama over a 16-word tokenizer, exported for LiteRT with the tokenizer beside it."""
    from edgeopt.llm import export as E
    from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama
    from helpers import word_tokenizer

    d = tmp_path_factory.mktemp("chat_llm")
    word_tokenizer().save_pretrained(d / "tok")
    hf = tinyllama({**TINYLLAMA_MINI, "vocab_size": 16, "num_hidden_layers": 1, "eos_token_id": 2})
    facts = E.convert(hf, d / "llm" / "model.tflite", prefill_lens=(8,), kv_cache_max_len=24, score_len=None)
    E.write_sidecar(d / "llm", facts, d / "tok")
    return d / "llm"


def test_generate_streams_and_reports_timing(tiny_chat_llm):
    r = runner.invoke(app, ["generate", str(tiny_chat_llm), "--prompt", "the capital of france is", "-n", "5",
                            "--json", "--threads", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert out["prompt_tokens"] == 5 and 1 <= out["new_tokens"] <= 5 and out["ttft_ms"] > 0
    assert "LiteRT" in out["runtime"] and isinstance(out["text"], str)
    r = runner.invoke(app, ["generate", str(tiny_chat_llm / "model.tflite"), "-p", "hello world", "-n", "3",
                            "--temperature", "0.8", "--top-k", "5", "--seed", "1", "--threads", "1"])
    assert r.exit_code == 0 and "tok/s decode" in r.output


@pytest.mark.parametrize("args, match", [
    (["-p", "the " * 12], "longer than the largest prefill this model takes (9"),
    (["-p", "hi", "--top-p", "0"], "top_p must be in (0, 1]"),
    (["-p", "hi", "-n", "0"], "max_new_tokens must be >= 1"),
])
def test_generate_bad_input_is_one_line(tiny_chat_llm, args, match):
    r = runner.invoke(app, ["generate", str(tiny_chat_llm), *args, "--threads", "1"])
    assert r.exit_code != 0 and match in r.output and "Traceback" not in r.output


def test_litertlm_bundles_and_generates_on_the_engine(tiny_chat_llm, tmp_path):
    pytest.importorskip("litert_lm")
    from edgeopt.llm import export as E
    from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama

    # the default-layout export is refused with one line, and nothing is written
    r = runner.invoke(app, ["litertlm", str(tiny_chat_llm)])
    assert r.exit_code != 0 and "transposed layout" in r.output and "Traceback" not in r.output
    assert not list(tiny_chat_llm.glob("*.litertlm"))
    hf = tinyllama({**TINYLLAMA_MINI, "vocab_size": 16, "num_hidden_layers": 1, "eos_token_id": 2})
    d = tmp_path / "t"
    facts = E.convert(hf, d / "model.tflite", prefill_lens=(8,), kv_cache_max_len=24, score_len=None,
                      kv_layout="transposed")
    E.write_sidecar(d, facts, tiny_chat_llm.parent / "tok")
    r = runner.invoke(app, ["litertlm", str(d), "-o", str(tmp_path / "b.litertlm")])
    assert r.exit_code == 0 and "b.litertlm" in r.output, r.output
    r = runner.invoke(app, ["generate", str(tmp_path / "b.litertlm"), "-p", "the capital of france is", "-n", "3",
                            "--no-chat", "--json", "--threads", "1"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output[r.output.index("{"):])
    assert "LiteRT-LM" in out["runtime"] and out["prompt_tokens"] == 6 and 1 <= out["new_tokens"] <= 3
    r = runner.invoke(app, ["generate", str(tmp_path / "b.litertlm"), "-p", "hi", "-n", "0", "--threads", "1"])
    assert r.exit_code != 0 and "max_new_tokens must be >= 1" in r.output and "Traceback" not in r.output


def test_generate_missing_model(tmp_path):
    r = runner.invoke(app, ["generate", str(tmp_path / "nope"), "-p", "hi"])
    assert r.exit_code != 0 and "no such file or folder" in r.output
