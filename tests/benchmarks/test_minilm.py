"""benchmarks/minilm.py: every target is a check that fails (exit status 1) when its number misses."""

from __future__ import annotations

from edgeopt.report.claims import exit_code


def _rows(best_bytes=20e6):
    return {"edgeopt best (int8)": {"speedup": 5.0, "mean_cosine": 0.998, "min_cosine": 0.99, "size_bytes": best_bytes},
            "ort-tools int8": {"mean_cosine": 0.99}, "onnxruntime fp32": {"size_bytes": 90e6}}


def test_minilm_claims_hold_on_good_numbers_and_fail_on_each_miss(load_benchmark):
    mb = load_benchmark("minilm")
    good = mb.claims(_rows(), "edgeopt best (int8)", (1.1, 1.0, 1.2))
    assert len(good) == 6 and all(c.holds for c in good) and exit_code(good) == 0
    big = mb.claims(_rows(best_bytes=40e6), "edgeopt best (int8)", (1.1, 1.0, 1.2))
    assert [c.holds for c in big][-1] is False and exit_code(big) == 1
    slower = mb.claims(_rows(), "edgeopt best (int8)", (0.9, 0.8, 1.0))
    assert slower[3].holds is False and exit_code(slower) == 1
