"""edgeopt.llm.measure: held-out text, teacher-forced fidelity, interleaved timing, bandwidth and peak RSS."""

from __future__ import annotations

import numpy as np
import pytest

from edgeopt.errors import InputError
from edgeopt.llm import measure as lm
from edgeopt.llm.litert_session import LiteRtLlm


def test_fidelity_of_identical_and_perturbed_logits():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(9, 50))
    ids = rng.integers(0, 50, 9).tolist()
    same = lm.FidelityAccumulator()
    same.add(ref, ref.copy(), ids)
    r = same.result()
    assert r["top1_agreement"] == 1.0 and abs(r["kl"]) < 1e-12 and r["ppl"] == pytest.approx(r["ppl_ref"])
    assert r["positions"] == 8
    noisy = lm.FidelityAccumulator()
    noisy.add(ref, ref + rng.normal(scale=2.0, size=ref.shape), ids)
    n = noisy.result()
    assert n["top1_agreement"] < 1.0 and n["kl"] > 0.01
    # perplexity is exp of the mean negative log-likelihood of the next tokens
    logp = ref - np.log(np.exp(ref).sum(-1, keepdims=True))
    assert r["ppl"] == pytest.approx(float(np.exp(-np.mean(logp[np.arange(8), ids[1:]]))))


def test_heldout_sequences_without_a_tokenizer_are_seeded_random_ids():
    a = lm.heldout_sequences(None, 3, 16, vocab_size=100)
    assert a == lm.heldout_sequences(None, 3, 16, vocab_size=100)
    assert [len(x) for x in a] == [16] * 3 and all(3 <= t < 100 for x in a for t in x)


def test_heldout_text_comes_from_past_the_calibration_and_eval_slices():
    class Chars:  # a tokenizer of characters: enough to check what text was used
        bos_token_id = None

        def __call__(self, text, add_special_tokens=False):
            return {"input_ids": [ord(c) for c in text]}

    seqs = lm.heldout_sequences(Chars(), 2, 40)
    from edgeopt.zoo.sentences import sentences

    pool = sentences(20010)
    assert "".join(chr(t) for t in seqs[0]) == "".join(" " + p for p in pool[20000:20005])[:40]
    assert lm.HELDOUT == "[20000:]"


def test_fidelity_and_timing_on_litert(tiny_llm):
    hf, d = tiny_llm
    from edgeopt.llm.torch_session import TorchLlm

    ref = TorchLlm(hf, threads=1, max_cache=64)
    fp32, int8 = LiteRtLlm(d / "fp32.tflite", threads=1), LiteRtLlm(d / "int8.tflite", threads=1)
    seqs = lm.heldout_sequences(None, 2, 20, vocab_size=32000)
    f = lm.fidelity(ref, {"fp32": fp32, "int8": int8}, seqs)
    assert f["fp32"]["top1_agreement"] == 1.0 and f["fp32"]["kl"] < 1e-6
    assert f["int8"]["kl"] > f["fp32"]["kl"]
    t = lm.timing({"torch": ref, "fp32": fp32}, seqs[0][:12], decode_tokens=8, repeats=2)
    for name in ("torch", "fp32"):
        assert t[name]["decode_tokens"] == 16 and len(t[name]["decode_samples_ms"]) == 16
        assert t[name]["prefill_tok_s"] == pytest.approx(12 / (t[name]["ttft_ms"] / 1000))
        assert t[name]["decode_tok_s"] == pytest.approx(1000 / t[name]["decode_ms_p50"])
    with pytest.raises(InputError, match="does not fit"):
        lm.timing({"fp32": fp32}, list(range(1, 17)), decode_tokens=60)


def test_bandwidth_and_bytes_per_token(tiny_llm, tmp_path):
    hf, d = tiny_llm
    assert lm.copy_bandwidth_gbs(mb=16, repeats=2) > 0.1
    size = (d / "int8.tflite").stat().st_size
    shape = {"vocab_size": 32000, "hidden_size": 128, "intermediate_size": 352, "num_layers": 2, "num_heads": 8,
             "num_kv_heads": 1, "head_dim": 16}
    linears = 2 * (2 * 128 * 128 + 2 * 128 * 16 + 3 * 128 * 352) + 32000 * 128
    # every int8 Linear and the int8 output layer once (their scales besides), the embedding table (untied,
    # only looked up) one row: the file holds both tables, so a token reads far less than its size
    got = lm.weight_bytes_per_token(d / "int8.tflite")
    assert linears < got < 1.1 * linears and got < 0.6 * size
    assert lm.weight_bytes_per_token(d / "fp32.tflite") > 3.9 * linears
    assert lm.decoder_weight_bytes(shape, 1) == linears + 4 * 128 * 5
    assert lm.decoder_weight_bytes(shape, 4) == 4 * linears + 4 * 128 * 5
    # an ONNX graph: all initializers, a table feeding only Gather counts one row
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    table = numpy_helper.from_array(np.zeros((100, 8), np.float32), "table")
    w = numpy_helper.from_array(np.zeros((8, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("Gather", ["table", "ids"], ["e"]), helper.make_node("MatMul", ["e", "w"], ["y"])],
                          "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [table, w])
    onnx.save(helper.make_model(g), tmp_path / "m.onnx")
    assert lm.onnx_weight_bytes_per_token(tmp_path) == 8 * 4 + 8 * 4 * 4
    with pytest.raises(InputError, match="no .onnx file"):
        lm.onnx_weight_bytes_per_token(tmp_path / "nothing")


@pytest.mark.slow
def test_peak_rss_child(tiny_llm):
    _, d = tiny_llm
    mb = lm.peak_rss_mb(d / "int8.tflite", "litert", prompt_tokens=12, decode_tokens=4, threads=1)
    assert 20 < mb < 2000
    with pytest.raises(InputError, match="measuring child failed: .*no such file"):
        lm.peak_rss_mb(d / "missing.tflite", "litert", 12, 4, 1)


@pytest.mark.slow
def test_time_in_children_keeps_each_model_loaded_across_rounds(tiny_llm):
    import psutil

    _, d = tiny_llm
    prompt = list(range(3, 15))
    models = {"fp32": (d / "fp32.tflite", "litert"), "int8": (d / "int8.tflite", "litert")}
    done = []
    t = lm.time_in_children(models, prompt, decode_tokens=4, repeats=2, threads=1, advance=lambda: done.append(1))
    assert len(done) == 4 and set(t) == {"fp32", "int8"}
    for r in t.values():
        assert r["repeats"] == 2 and r["decode_tokens"] == 8 and r["prompt_tokens"] == 12
        assert r["decode_tok_s"] > 0 and 20 < r["peak_rss_mb"] < 2000
    assert not psutil.Process().children()  # every resident child was ended
    # one round: a fresh child per model, no resident ones
    one = lm.time_in_children({"int8": models["int8"]}, prompt, decode_tokens=3, repeats=1, threads=1)
    assert one["int8"]["decode_tokens"] == 3 and one["int8"]["peak_rss_mb"] > 20
    with pytest.raises(InputError, match="gone: the measuring child failed: .*no such file"):
        lm.time_in_children({**models, "gone": (d / "gone.tflite", "litert")}, prompt, 4, repeats=2, threads=1)
    assert not psutil.Process().children()
