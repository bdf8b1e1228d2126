"""Benchmark claims: checks and statements, their exit code and renderings."""

from __future__ import annotations

import numpy as np
from rich.console import Console

from edgeopt.report.claims import Claim, exit_code, failed, markdown, statement, summary, table, to_json


def test_a_check_that_does_not_hold_makes_the_exit_code_non_zero():
    ok = Claim("fast", True, "2.0x")
    assert exit_code([ok, statement("where it is fastest", "3 cells")]) == 0
    bad = Claim("accurate", np.float64(0.5) > 0.9, "0.5")  # numpy's bool_ is taken as a bool
    assert bad.holds is False
    assert exit_code([ok, bad]) == 1
    assert failed([ok, bad]) == [bad]
    assert exit_code([]) == 0


def test_statements_are_marked_and_never_fail():
    s = statement("cumulative latency change", "-12%")
    assert s.holds is None and s.verdict == "statement"
    assert failed([s]) == []
    assert [c.verdict for c in (Claim("a", True), Claim("b", False), s)] == ["yes", "NO", "statement"]


def test_renderings_show_every_claim_and_its_verdict():
    cs = [Claim("fast", True, "2.0x"), Claim("accurate", False, "0.5"), statement("cells", "3")]
    md = markdown(cs)
    assert "| fast | yes | 2.0x |" in md and "| accurate | NO | 0.5 |" in md and "| cells | statement | 3 |" in md
    assert to_json(cs) == [{"claim": "fast", "holds": True, "numbers": "2.0x"},
                           {"claim": "accurate", "holds": False, "numbers": "0.5"},
                           {"claim": "cells", "holds": None, "numbers": "3"}]
    assert summary(cs) == "1 of 2 checks hold (1 statements); NOT holding: accurate"
    console = Console(width=200, record=True)
    console.print(table(cs))
    text = console.export_text()
    assert "NO" in text and "statement" in text and "accurate" in text


def test_finish_prints_the_checks_and_writes_the_json_record(tmp_path):
    import argparse
    import json

    from rich.console import Console

    from edgeopt.report.claims import finish

    claims = [Claim("fast", True, "2.0x"), Claim("small", False, "9 MB"), statement("note", "x")]
    args = argparse.Namespace(threads=2, json=tmp_path / "out.json")
    console = Console(record=True, width=200)
    rc = finish(claims, console, cpu="Some CPU; flags: avx2", args=args, results={"a": 1}, seconds={"a": 1.5},
                load_before=0.5)
    text = console.export_text()
    assert rc == 1 and "checks on Some CPU; flags: avx2" in text and "1 of 2 checks hold" in text
    rec = json.loads((tmp_path / "out.json").read_text())
    assert rec["cpu"].startswith("Some CPU") and rec["args"]["threads"] == 2 and rec["results"] == {"a": 1}
    assert [c["holds"] for c in rec["checks"]] == [True, False, None]


def test_run_parts_runs_the_wanted_parts_in_order_and_times_them():
    from edgeopt.report.claims import run_parts

    calls = []
    results, seconds = run_parts((("a", lambda x: calls.append("a") or x + 1), ("b", lambda x: calls.append("b") or x)),
                                 ["b", "a"], 1)
    assert calls == ["a", "b"] and results == {"a": 2, "b": 1} and set(seconds) == {"a", "b"}
    assert run_parts((("a", lambda: 1),), []) == ({}, {})
