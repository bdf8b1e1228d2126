"""The stage table: report.md and the terminal say why a faster stage was not chosen."""

from __future__ import annotations

from report.factory import make_ledger

from edgeopt.report.table import choice_notes, to_markdown


def test_passed_over_stage_is_explained():
    led = make_ledger()
    led.stage("int8-aggressive").warnings.append("something else")
    led.stage("int8").warnings.append("not chosen: 1.01× its parent fused (95% interval 0.98–1.04 includes 1), "
                                      "so the simpler stage wins")
    assert choice_notes(led) == ["int8: not chosen: 1.01× its parent fused (95% interval 0.98–1.04 includes 1), "
                                 "so the simpler stage wins"]
    md = to_markdown(led)
    assert "- int8: not chosen: 1.01× its parent fused" in md and "something else" not in md.split("|")[0]
    assert choice_notes(make_ledger()) == []
