"""The stage table: report.md and the terminal say why a faster stage was not chosen; the LLM table."""

from __future__ import annotations

from report.factory import make_ledger, make_llm_ledger

from edgeopt.report.table import (COLUMNS, MD_COLUMNS, choice_notes, has_llm, kl_text, llm_headers, llm_notes, llm_rows,
                                  llm_table, md_columns, render_table, short_answer, stage_columns, stage_rows,
                                  to_markdown)


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


def _render(table, width: int = 200) -> str:
    from rich.console import Console

    c = Console(width=width, record=True)
    c.print(table)
    return c.export_text()


def test_llm_table_is_none_for_other_runs_and_holds_each_figure_for_llm_runs():
    assert llm_table(make_ledger()) is None and llm_rows(make_ledger()) == [] and not has_llm(make_ledger())
    led = make_llm_ledger()
    rows = {r["stage"]: r for r in llm_rows(led)}
    assert list(rows) == ["baseline", "litert", "litert-int8 ★", "litert-int4"]
    base, int8, int4 = rows["baseline"], rows["litert-int8 ★"], rows["litert-int4"]
    assert (base["runtime"], base["quantization"], base["× decode"]) == ("torch", "fp32 (PyTorch)", "1.00×")
    assert (int8["runtime"], int8["quantization"], int8["TTFT ms"], int8["prefill tok/s"]) == \
        ("litert", "int8 dyn", "49.0", "2600")
    # 42%: 120 tok/s of the 40 GB/s / 140 MB ceiling
    assert (int8["decode tok/s"], int8["× decode"], int8["% bw limit"]) == ("120.0", "3.00×", "42%")
    assert (int8["peak MB"], int8["size MB"], int8["top-1 agr."], int8["KL"], int8["ppl"]) == ("300", "140.0", "0.9700",
                                                                                               "0.0200", "12.90")
    assert int4["quantization"] == "int4 dyn b32 + emb int8 dyn" and int4["gate"] == "FAIL (top1_agreement 0.91)"
    assert base["answer"] == "“Paris. It is”"
    assert int4["answer"] == "“Paris, France | and the”"  # one line
    assert short_answer("x" * 40) == "“" + "x" * 27 + "…”" and short_answer(None) == "—"
    assert rows["litert"]["KL"] == "4.0e-04" and kl_text(3.3e-15) == "3.3e-15" and kl_text(0.0) == "0"
    assert llm_headers(led)["TTFT ms"] == "TTFT ms (prompt 128)"
    text = _render(llm_table(led))
    assert "LLM stages" in text and "(prompt 128)" in text and "int4 dyn b32" in text and "“Paris. It is”" in text
    assert "copy bandwidth 40.0 GB/s" in text and "litert = LiteRT CompiledModel · XNNPACK · 2 threads" in text
    assert "FAIL" in text and "(top1_agreement" not in text  # the terminal says pass/FAIL; report.md says why


def test_llm_row_of_a_stage_without_figures_says_why():
    led = make_llm_ledger()
    st = led.stage("litert-int4")
    st.llm, st.status, st.latency_ms, st.gate = None, "failed", None, None
    st.error = "quantize.litert_llm: out of memory"
    row = llm_rows(led)[-1]
    assert row["decode tok/s"] == "—" and row["× decode"] == "—" and row["% bw limit"] == "—"
    assert row["gate"] == "failed: quantize.litert_llm: out of memory" and row["runtime"] == "litert"


def test_stage_table_of_an_llm_run_shows_top1_and_kl_instead_of_cosines():
    led = make_llm_ledger()
    assert stage_columns(led)[-3:] == ("top-1 agr.", "KL", "gate") and "mean cos" not in md_columns(led)
    assert stage_columns(make_ledger()) == COLUMNS and md_columns(make_ledger()) == MD_COLUMNS
    rows = stage_rows(led)
    assert list(rows[0]) == list(md_columns(led))
    assert rows[2]["p50 ms"] == "8.33" and rows[2]["speedup"] == "3.00×" and rows[2]["top-1 agr."] == "0.9700"
    text = _render(render_table(led))
    assert "decode ms per generated token" in text and "0.9100" in text and "cos" not in text


def test_report_md_of_an_llm_run_has_the_llm_section():
    md = to_markdown(make_llm_ledger())
    assert "## LLM" in md and "Copy bandwidth 40.0 GB/s; prompt 128 tokens." in md
    assert ("| stage | runtime | quantization | TTFT ms (prompt 128) | prefill tok/s | decode tok/s | × vs baseline "
            "decode | % of bandwidth limit | peak MB | size MB | top-1 agr. | KL | ppl | gate | answer |") in md
    assert ("| litert-int8 ★ | litert | int8 dyn | 49.0 | 2600 | 120.0 | 3.00× | 42% | 300 | 140.0 | 0.9700 | 0.0200 | "
            "12.90 | pass | “Paris. It is” |") in md
    assert "“Paris, France / and the”" in md  # a | in an answer cannot break the table
    assert "Latency: decode ms per generated token" in md and "cosine per sample" not in md
    assert "## LLM" not in to_markdown(make_ledger())


def test_a_decode_rate_above_the_bandwidth_limit_is_explained():
    led = make_llm_ledger()
    assert not any("Above 100%" in n for n in llm_notes(led))
    led.stage("litert-int4").llm["bandwidth_pct"] = 484.0  # a tiny model whose weights stay in cache
    assert "Above 100% (litert-int4): the limit is an estimate from a copy" in " ".join(llm_notes(led))
