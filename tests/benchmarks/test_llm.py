"""benchmarks/llm.py: the issue's claims hold on good numbers and fail (exit status 1) on each miss."""

from __future__ import annotations

from edgeopt.report.claims import exit_code


def _rows(best_dec=80.0, best_ttft=100.0, int4_answer=" Paris."):
    row = lambda rt, dec, ttft, top1, answer=" Paris.": {  # noqa: E731
        "runtime": rt, "decode_tok_s": dec, "ttft_ms": ttft, "top1_agreement": top1, "answer": answer,
        "size_mb": 100.0, "bandwidth_pct": 50.0}
    return {"PyTorch fp32": row("torch", 15.0, 400.0, 1.0), "ORT GenAI int8": row("ortgenai", 60.0, 200.0, 0.95),
            "LiteRT dynamic int8": row("litert", best_dec, best_ttft, 0.96),
            "LiteRT fp32": row("litert", 30.0, 290.0, 1.0),
            "LiteRT int4 b32": row("litert", 90.0, 90.0, 0.7, int4_answer)}


def test_llm_claims_hold_on_good_numbers_and_fail_on_each_miss(load_benchmark):
    b = load_benchmark("llm")
    good = b.check(_rows(), 11.0, {"LiteRT dynamic int8": 150_000_000})
    assert [c.holds for c in good] == [True, True, True, None, True] and exit_code(good) == 0
    assert "LiteRT dynamic int8" in good[0].claim  # the fastest variant with top-1 >= 0.95, not the int4 one
    slow = b.check(_rows(best_dec=65.0), 11.0, {})
    assert slow[0].holds is False or slow[1].holds is False
    assert exit_code(slow) == 1
    assert b.check(_rows(best_ttft=250.0), 11.0, {})[2].holds is False
    lost = b.check(_rows(int4_answer=" located in"), 11.0, {})
    assert lost[-1].holds is False and exit_code(lost) == 1
