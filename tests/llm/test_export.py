"""edgeopt.llm.export: multi-signature LLM .tflite, quantization variants and their recipes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeopt.analyze.tflite import tflite_info
from edgeopt.errors import InputError
from edgeopt.llm import export as E
from edgeopt.llm.reauthor import LlmShape


def _table_copies(path: Path, vocab: int, hidden: int) -> int:
    """Distinct buffers holding a (vocab, hidden) tensor: the embedding table, stored once when shared."""
    from ai_edge_litert import schema_py_generated as S

    m = S.Model.GetRootAsModel(path.read_bytes(), 0)
    bufs = set()
    for si in range(m.SubgraphsLength()):
        g = m.Subgraphs(si)
        for ti in range(g.TensorsLength()):
            t = g.Tensors(ti)
            if t.ShapeAsNumpy().tolist() == [vocab, hidden] and t.Buffer():
                bufs.add(t.Buffer())
    return len(bufs)


def test_signatures_and_kv_cache_layout(tiny_llm):
    _, d = tiny_llm
    sigs = tflite_info(d / "fp32.tflite")["signatures"]
    assert set(sigs) == {"prefill_8", "prefill_16", "decode", "score_32"}
    dec = sigs["decode"]
    kv_in = [t["name"] for t in dec["inputs"] if t["name"].startswith("kv_cache_")]
    kv_out = [t["name"] for t in dec["outputs"] if t["name"].startswith("kv_cache_")]
    assert kv_in == kv_out and len(kv_in) == 4  # k and v per layer, in and out
    assert next(t for t in dec["inputs"] if t["name"] == "kv_cache_k_0")["shape"] == [1, 64, 1, 16]
    assert [t["name"] for t in sigs["prefill_8"]["outputs"] if t["name"] == "logits"] == []  # no logits on prefill
    assert next(t for t in sigs["score_32"]["outputs"] if t["name"] == "logits")["shape"] == [1, 32, 32000]
    facts = json.loads((d / E.LLM_JSON).read_text())
    assert facts["prefill_lens"] == [8, 16] and facts["verification"]["rel_error"] < 1e-4


def test_variants_shrink_the_file_and_int4_keeps_one_table(tiny_llm, tmp_path):
    hf, d = tiny_llm
    fp32 = d / "fp32.tflite"
    sizes = {"none": fp32.stat().st_size, "dynamic_int8": (d / "int8.tflite").stat().st_size}
    for v, kw in [("fp16", {}), ("dynamic_int4_block32", {"embedding": "dynamic_int8"})]:
        E.quantize_file(fp32, tmp_path / f"{v}.tflite", v, hf.config, **kw)
        sizes[v] = (tmp_path / f"{v}.tflite").stat().st_size
    assert sizes["dynamic_int8"] < 0.4 * sizes["none"] and sizes["fp16"] < 0.6 * sizes["none"]
    assert "int8" in tflite_info(d / "int8.tflite")["weight_dtypes"]
    info = tflite_info(tmp_path / "dynamic_int4_block32.tflite")
    assert "int4" in info["weight_dtypes"]
    # the untied TinyLlama has an embedding table and an output layer: two (vocab, hidden) tensors, no more
    assert _table_copies(tmp_path / "dynamic_int4_block32.tflite", 32000, 128) == 2
    assert fp32.stat().st_size == sizes["none"]  # the input was not touched


def test_tied_table_is_stored_once_when_embedding_and_output_differ_from_the_blocks(tmp_path):
    from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama

    hf = tinyllama({**TINYLLAMA_MINI, "tie_word_embeddings": True, "vocab_size": 512})
    E.convert(hf, tmp_path / "m.tflite", prefill_lens=(8,), kv_cache_max_len=32, score_len=16)
    E.quantize_file(tmp_path / "m.tflite", tmp_path / "q.tflite", "dynamic_int4_block32", hf.config,
                    embedding="dynamic_int8")
    # litert-torch's own recipe translation missed the output layer and stored the table once per signature
    assert _table_copies(tmp_path / "q.tflite", 512, 128) == 1
    E.quantize_file(tmp_path / "m.tflite", tmp_path / "f.tflite", "dynamic_int8", hf.config,
                    feedforward="dynamic_int4_block32")
    dtypes = tflite_info(tmp_path / "f.tflite")["weight_dtypes"]
    assert "int4" in dtypes and "int8" in dtypes  # int4 feed-forward blocks, int8 elsewhere


@pytest.mark.parametrize("variant, embedding, match", [
    ("int3", "same", "unknown LLM quantization variant 'int3'"),
    ("dynamic_int8", "int2", "unknown embedding quantization 'int2'"),
    ("dynamic_int4_block128", "same", "hidden size 576 is not divisible by the block size 128"),
])
def test_bad_variants_get_one_line(variant, embedding, match):
    shape = LlmShape(num_layers=30, num_heads=9, num_kv_heads=3, head_dim=64, hidden_size=576,
                     intermediate_size=1536, vocab_size=49152, max_seq_len=2048, tied_embeddings=True)
    with pytest.raises(InputError, match=match):
        E.check_variant(variant, embedding, shape)


def test_bad_lengths_are_refused_before_converting(tmp_path):
    from edgeopt.zoo.llm import TINYLLAMA_MINI, tinyllama

    hf = tinyllama(TINYLLAMA_MINI)
    with pytest.raises(InputError, match="must be shorter than the KV cache"):
        E.convert(hf, tmp_path / "m.tflite", prefill_lens=(64,), kv_cache_max_len=64)
    assert not (tmp_path / "m.tflite").exists()


def test_sidecar_errors(tmp_path):
    with pytest.raises(InputError, match="no llm.json beside the model"):
        E.read_sidecar(tmp_path / "model.tflite")
    (tmp_path / E.LLM_JSON).write_text('{"prefill_lens": [8]')
    with pytest.raises(InputError, match="not a valid llm.json"):
        E.read_sidecar(tmp_path)


def _signature_outputs(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """Every signature's outputs on seeded inputs (LiteRT's built-in kernels)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    out = {}
    for name in it.get_signature_list():
        runner = it.get_signature_runner(name)
        rng = np.random.default_rng(0)
        feed = {n: (rng.standard_normal(d["shape"]) * 0.1).astype(d["dtype"]) if d["dtype"] == np.float32
                else np.zeros(d["shape"], d["dtype"]) for n, d in runner.get_input_details().items()}
        feed["tokens"] = rng.integers(0, 32000, feed["tokens"].shape).astype(np.int32)
        feed["input_pos"] = np.arange(len(feed["input_pos"]), dtype=np.int32)
        out[name] = {k: np.asarray(v) for k, v in runner(**feed).items()}
    return out


@pytest.mark.slow
def test_signatures_converted_in_two_processes_compute_what_one_process_does(tiny_llm, tmp_path, monkeypatch):
    hf, d = tiny_llm
    kw = dict(prefill_lens=(8, 16), kv_cache_max_len=64, score_len=32)
    assert E.default_workers(4, 2) == 1  # a small job stays in one process unless asked
    assert E.default_workers(6, 30, 2 * E.MERGE_LIMIT) == 1  # and one whose merged file would pass 2 GB
    facts = E.convert(hf, tmp_path / "par" / "model.tflite", workers=2, **kw)
    assert facts["conversion"] == {"processes": 2, "signatures": [["prefill_8", "decode"], ["prefill_16", "score_32"]]}
    one, two = _signature_outputs(d / "fp32.tflite"), _signature_outputs(tmp_path / "par" / "model.tflite")
    assert one.keys() == two.keys() == {"prefill_8", "prefill_16", "decode", "score_32"}
    for name in one:  # the merged file computes exactly what the single conversion does, every output
        assert one[name].keys() == two[name].keys()
        for k in one[name]:
            np.testing.assert_array_equal(one[name][k], two[name][k], err_msg=f"{name}/{k}")
    # each weight is stored once, as in the single conversion
    assert (tmp_path / "par" / "model.tflite").stat().st_size <= (d / "fp32.tflite").stat().st_size
    # and the quantizer takes it (tensor names unique), computing what the single file's int8 does
    E.quantize_file(tmp_path / "par" / "model.tflite", tmp_path / "par" / "int8.tflite", "dynamic_int8", hf.config)
    one8, two8 = _signature_outputs(d / "int8.tflite"), _signature_outputs(tmp_path / "par" / "int8.tflite")
    for name in one8:
        for k in one8[name]:
            np.testing.assert_array_equal(one8[name][k], two8[name][k], err_msg=f"int8 {name}/{k}")
    assert _table_copies(tmp_path / "par" / "model.tflite", 32000, 128) == _table_copies(d / "fp32.tflite", 32000, 128)

    # a failure on the parallel path (a child, the merge, or the merged file's logit check) converts in one process
    def broken(*a, **k):
        raise E._ParallelFailed("the conversion process for decode failed: boom")

    monkeypatch.setattr(E, "_convert_in_parallel", broken)
    facts = E.convert(hf, tmp_path / "again" / "model.tflite", workers=2, **kw)
    assert facts["conversion"] == {"processes": 1, "parallel_failed": "the conversion process for decode failed: boom"}
    assert (tmp_path / "again" / "model.tflite").read_bytes() == (d / "fp32.tflite").read_bytes()


def test_a_failure_of_this_process_own_conversion_is_not_repeated(tiny_llm, tmp_path, monkeypatch):
    import psutil

    hf, _ = tiny_llm
    calls = []

    def fails(*a, **k):
        calls.append(a[-1])
        raise InputError("litert-torch cannot convert the re-authored LLM: RuntimeError: boom")

    monkeypatch.setattr(E, "convert_signatures", fails)
    with pytest.raises(InputError, match="boom"):
        E.convert(hf, tmp_path / "m.tflite", prefill_lens=(8, 16), kv_cache_max_len=64, score_len=32, workers=2)
    assert calls == [["prefill_8", "decode"]]  # once, this process's half: no second try in one process
    assert not psutil.Process().children() and not (tmp_path / "m.tflite").exists()  # the child was ended
