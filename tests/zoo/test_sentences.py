"""zoo:sentences: deterministic, varied, long enough, and split without overlap."""

from __future__ import annotations

import pytest

from edgeopt.zoo.minilm import minilm_path
from edgeopt.zoo.sentences import sentences, split


def test_deterministic_and_distinct():
    a, b = sentences(), sentences()
    assert a == b and len(a) >= 512 and len(set(a)) == len(a)


def test_token_lengths_spread():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(minilm_path()), local_files_only=True)
    lengths = [len(tok(s)["input_ids"]) for s in sentences()]
    assert min(lengths) <= 12 and max(lengths) >= 128
    bands = [sum(lo <= n < hi for n in lengths) for lo, hi in ((0, 32), (32, 64), (64, 128), (128, 10_000))]
    assert all(b >= 20 for b in bands), bands


def test_calibration_and_eval_never_overlap():
    cal, ev = split("[:64]", slice(0, 1)), split("[64:320]", slice(0, 1))
    assert len(cal) == 64 and len(ev) == 256 and not set(cal) & set(ev)


def test_bad_slice():
    with pytest.raises(ValueError, match="slice"):
        split("[1:2:3]", slice(0, 1))


def test_slice_past_the_bundled_set_generates_more_without_overlap():
    extra = split("[640:1640]", slice(0, 1))
    assert len(extra) == 1000 and len(set(extra)) == 1000
    assert sentences(1640)[:640] == sentences()  # the generator is sequential: the bundled set is a prefix
    assert not set(extra) & set(sentences())


def test_slice_bounds_checked():
    with pytest.raises(ValueError, match="non-negative"):
        split("[-5:]", slice(0, 1))
    with pytest.raises(ValueError, match="at most"):
        split("[0:10000000]", slice(0, 1))


def test_the_longest_list_serves_shorter_requests(monkeypatch):
    from edgeopt.zoo import sentences as S

    made = []
    real = S._generate
    monkeypatch.setattr(S, "_LONGEST", {})
    monkeypatch.setattr(S, "_generate", lambda n, seed: made.append(n) or real(n, seed))
    long = S.sentences(3000, seed=5)
    assert S.sentences(1200, seed=5) == long[:1200] and made == [3000]  # sliced, not generated again
    assert S.sentences(3500, seed=5)[:3000] == long and made == [3000, 3500]
    assert S.sentences(10, seed=6) != long[:10] and made[-1] == 10  # another seed, another list
