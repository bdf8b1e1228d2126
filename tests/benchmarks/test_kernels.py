"""benchmarks/kernels.py: its checks hold on the right numbers and fail (exit status 1) on wrong ones."""

from __future__ import annotations

import copy

from edgeopt.report.claims import exit_code

MIB = 2**20


def test_counts_are_measured_from_the_module_and_a_wrong_count_fails(load_benchmark):
    kb = load_benchmark("kernels")
    counts = kb.winograd_counts(c_in=2, c_out=3, size=24)
    assert [r["m"] for r in counts["rows"]] == [2, 4, 6, 8]
    assert counts["rows"][0]["elementwise"] == 16 * 3 * 2 * 144  # α² x C_out x C_in x tiles, from the bmm seen
    check, stmt = kb.count_claims(counts)
    assert check.holds is True and stmt.holds is None and "81/16" in check.numbers
    bad = copy.deepcopy(counts)
    bad["rows"][2]["elementwise"] += 1  # F6 doing one multiplication more than theory
    assert kb.count_claims(bad)[0].holds is False and exit_code(kb.count_claims(bad)) == 1
    missing = copy.deepcopy(counts)
    del missing["rows"][3]
    assert kb.count_claims(missing)[0].holds is False
    none_seen = copy.deepcopy(counts)
    none_seen["rows"][0]["elementwise"] = 0  # no batched matrix product ran
    assert kb.count_claims(none_seen)[0].holds is False


def _att(measured, analytic, T=4096):
    impls = ("naive", "partial_softmax", "flash")
    row = {"seq_len": T, "head_dim": 40, "impls": {i: {"peak_intermediate_bytes": {"measured": m, "analytic": a}}
                                                   for i, m, a in zip(impls, measured, analytic)}}
    short = copy.deepcopy(row)
    short["seq_len"] = 256  # only the longest sequence is checked
    return {"rows": [short, row]}


def test_attention_memory_is_checked_on_measured_bytes(load_benchmark):
    kb = load_benchmark("kernels")
    good = [256 * MIB, 17 * MIB, 1.2 * MIB]
    assert [c.holds for c in kb.attention_memory_claims(_att(good, good))] == [True, True]
    # measured partial softmax above naive / 4: fails even when the formula says otherwise
    worse = [256 * MIB, 70 * MIB, 1.2 * MIB]
    claims = kb.attention_memory_claims(_att(worse, good))
    assert [c.holds for c in claims] == [False, False] and exit_code(claims) == 1
    # the analytic model 10% off the measurement
    off = [256 * MIB * 1.1, 17 * MIB, 1.2 * MIB]
    assert [c.holds for c in kb.attention_memory_claims(_att(good, off))] == [True, False]
    # nothing measured: nothing can hold
    assert [c.holds for c in kb.attention_memory_claims(_att([None] * 3, good))] == [False, False]


def test_the_tuner_check_fails_when_direct_is_kept_or_the_ratio_spread_reaches_one(load_benchmark):
    kb = load_benchmark("kernels")
    grid = {"rows": [{"channels": 8, "size": 8, "choice": "direct", "speedup": 1.0}]}
    layer = {"c_in": 256, "c_out": 256, "size": 64}
    kept = kb.conv_claims({"vs_torch": None, "layer": layer}, grid)
    assert [c.holds for c in kept] == [False, None]
    v = {"ratio_p50": 1.3, "ratio_p10": 1.1, "ratio_p90": 1.5, "torch_ms": 13.0, "winograd_ms": 10.0}
    assert kb.conv_claims({"vs_torch": v, "layer": layer, "choice": "F4"}, grid)[0].holds is True
    v["ratio_p10"] = 0.95
    assert kb.conv_claims({"vs_torch": v, "layer": layer, "choice": "F4"}, grid)[0].holds is False
