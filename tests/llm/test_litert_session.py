"""edgeopt.llm.litert_session: prefill/decode/score on LiteRT with the KV cache held in place."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from edgeopt.errors import InputError
from edgeopt.llm.litert_session import LiteRtLlm

IDS = [int(x) for x in (np.arange(24) * 37 + 5) % 32000]


def _hf_logits(hf, ids):
    with torch.no_grad():
        return hf(input_ids=torch.tensor([ids])).logits[0].numpy()


def test_prefill_then_decode_matches_hugging_face(tiny_llm):
    hf, d = tiny_llm
    ref = _hf_logits(hf, IDS)
    with LiteRtLlm(d / "fp32.tflite", threads=1) as s:
        assert (s.max_prompt, s.max_cache, s.vocab_size) == (17, 64, 32000)
        got = [s.prefill(IDS[:10])] + [s.decode(t) for t in IDS[10:]]
        assert s.position == len(IDS)
        np.testing.assert_allclose(np.stack(got), ref[9:], atol=1e-4 * np.abs(ref).max())
        # a second request reuses the cache from position 0: same numbers again
        np.testing.assert_allclose(s.prefill(IDS[:3]), ref[2], atol=1e-4 * np.abs(ref).max())


def test_transposed_kv_cache_layout_and_decode_windows_compute_the_same_logits(tiny_llm, tmp_path):
    """The transposed layout (K as (1, kv heads, len, dim), V as (1, kv heads, dim, len), attention without repeated
    K/V heads) is a different graph with the same function, and so are decode_<W> signatures that attend over the
    first W positions only: prefill, windowed and full decode, and score all match Hugging Face."""
    from edgeopt.analyze.tflite import tflite_info
    from edgeopt.llm import export as E

    hf, _ = tiny_llm
    ids = [int(x) for x in (np.arange(40) * 37 + 5) % 32000]
    ref = _hf_logits(hf, ids)
    out = tmp_path / "t" / "model.tflite"
    facts = E.convert(hf, out, prefill_lens=(8,), kv_cache_max_len=64, score_len=32, kv_layout="transposed",
                      decode_windows=(32, 16))
    E.write_sidecar(out.parent, facts, None)
    assert facts["kv_layout"] == "transposed" and facts["verification"]["rel_error"] < 1e-4
    sigs = tflite_info(out)["signatures"]
    assert {"decode", "decode_16", "decode_32"} <= set(sigs) and facts["decode_windows"] == [16, 32]
    dec = {t["name"]: t["shape"] for t in sigs["decode"]["inputs"]}
    assert dec["kv_cache_k_0"] == [1, 1, 64, 16] and dec["kv_cache_v_0"] == [1, 1, 16, 64]  # 1 KV head, dim 16
    assert {t["name"]: t["shape"] for t in sigs["decode_16"]["inputs"]} == dec  # the same cache buffers
    with LiteRtLlm(out, threads=1) as s:
        assert (s.max_prompt, s.max_cache, s.decode_windows) == (9, 64, [16, 32])
        ran = []
        run = s._run
        s._run = lambda sig, *a: ran.append(sig) or run(sig, *a)
        # positions 8-15 decode in the 16-window, 16-31 in the 32-window, 32-39 over the whole cache
        got = [s.prefill(ids[:9])] + [s.decode(t) for t in ids[9:]]
        np.testing.assert_allclose(np.stack(got), ref[8:], atol=1e-4 * np.abs(ref).max())
        assert ran.count("decode_16") == 8 and ran.count("decode_32") == 16 and ran.count("decode") == 8
        np.testing.assert_allclose(s.score(ids[:24]), ref[:24], atol=1e-4 * np.abs(ref).max())
    with pytest.raises(InputError, match="unknown KV cache layout 'sideways'"):
        E.convert(hf, tmp_path / "x.tflite", kv_layout="sideways")
    with pytest.raises(InputError, match="decode windows need the transposed"):
        E.convert(hf, tmp_path / "x.tflite", prefill_lens=(8,), kv_cache_max_len=64, score_len=None,
                  decode_windows=(16,))
    with pytest.raises(InputError, match="between 1 and the KV cache length \\(64\\)"):
        E.convert(hf, tmp_path / "x.tflite", prefill_lens=(8,), kv_cache_max_len=64, score_len=None,
                  kv_layout="transposed", decode_windows=(64,))
    assert not (tmp_path / "x.tflite").exists()


def test_score_is_teacher_forced_and_never_nan(tiny_llm):
    hf, d = tiny_llm
    ref = _hf_logits(hf, IDS)
    with LiteRtLlm(d / "fp32.tflite", threads=1) as s:
        sc = s.score(IDS)  # the padded positions of score_32 attend only to a zeroed cache
        assert sc.shape == (24, 32000) and not np.isnan(sc).any()
        np.testing.assert_allclose(sc, ref, atol=1e-4 * np.abs(ref).max())
    with LiteRtLlm(d / "int8.tflite", threads=1) as s:
        q = s.score(IDS)
        assert (q.argmax(-1) == ref.argmax(-1)).mean() > 0.8 and not np.allclose(q, ref, atol=1e-6)


def test_prompt_and_cache_limits(tiny_llm):
    _, d = tiny_llm
    with LiteRtLlm(d / "fp32.tflite", threads=1) as s:
        with pytest.raises(InputError, match="longer than the largest prefill this model takes \\(17"):
            s.prefill(list(range(18)))
        with pytest.raises(InputError, match="the prompt is empty"):
            s.prefill([])
        s.prefill(list(range(1, 17)))
        for t in range(64 - 16):
            s.decode(t + 1)
        with pytest.raises(InputError, match="KV cache is full \\(64"):
            s.decode(5)


def test_bad_files(tiny_llm, tmp_path):
    _, d = tiny_llm
    with pytest.raises(InputError, match="no such file"):
        LiteRtLlm(tmp_path / "none.tflite")
    shutil.copy(d / "fp32.tflite", tmp_path / "m.tflite")
    with pytest.raises(InputError, match="no llm.json beside the model"):
        LiteRtLlm(tmp_path / "m.tflite")
    shutil.copy(d / "llm.json", tmp_path / "llm.json")
    data = (d / "fp32.tflite").read_bytes()
    (tmp_path / "m.tflite").write_bytes(data[: len(data) // 3])
    with pytest.raises(InputError, match="not a valid .tflite"):
        LiteRtLlm(tmp_path / "m.tflite")
    with pytest.raises(InputError, match="threads must be >= 1"):
        LiteRtLlm(d / "fp32.tflite", threads=0)


def test_packed_weight_files_are_evicted_least_recently_used_first(tmp_path):
    import os

    from edgeopt.llm.litert_session import evict_weight_caches

    files = []
    for i in range(4):  # 100 bytes each, used at t = 1000, 2000, 3000, 4000
        f = tmp_path / f"{i}.xnn"
        f.write_bytes(b"x" * 100)
        os.utime(f, (1000 * (i + 1), 1000 * (i + 1)))
        files.append(f)
    (tmp_path / "other.bin").write_bytes(b"y" * 1000)  # not a packed-weight file: never touched
    gone = evict_weight_caches(tmp_path, keep_bytes=250)
    assert gone == files[:2] and [f.exists() for f in files] == [False, False, True, True]
    assert (tmp_path / "other.bin").exists()
    assert evict_weight_caches(tmp_path, keep_bytes=250) == [] and evict_weight_caches(tmp_path / "none") == []
