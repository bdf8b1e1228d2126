"""Kernel benchmark reports as tables: every report kind has its tables, rich and markdown alike."""

from __future__ import annotations

import pytest
from rich.console import Console

from edgeopt.report.kernels import TABLES, markdown, render, tables


def _counts_report():
    return {"kind": "winograd_counts", "rows": [
        {"m": 4, "alpha": 6, "direct": 144, "winograd": 36, "ratio": "4/1", "ratio_value": 4.0, "theory": "4/1",
         "stated": 4.0, "exact": True}]}


def test_a_report_renders_as_rich_and_markdown():
    (tab,) = tables(_counts_report())
    assert tab.rows == [["4", "6x6", "144", "36", "4/1 = 4x", "4/1", "4.0x", "exact"]]
    md = markdown(_counts_report())
    assert "| 4 | 6x6 | 144 | 36 |" in md and md.startswith("**Winograd F(m×m, 3×3)")
    console = Console(width=200, record=True)
    console.print(render(_counts_report()))
    assert "exact" in console.export_text()


def test_an_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match="report kind 'nope' has no tables; known: winograd"):
        tables({"kind": "nope"})
    assert {"winograd", "winograd_counts", "winograd_errors", "conv_grid", "conv_vs_torch", "attention_grid",
            "unet_table"} == set(TABLES)
