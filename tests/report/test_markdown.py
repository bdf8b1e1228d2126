"""The markdown report for READMEs: tables, Pareto lists, environment, and the PNG figures it links."""

from __future__ import annotations

from report.factory import make_ledger, make_llm_ledger, write_run

from edgeopt.report.markdown import build_markdown, markdown_report


def test_markdown_has_tables_front_and_environment():
    text = markdown_report([("demo", make_ledger())])
    assert "| stage | pass |" in text
    assert "| + onnx (convert.onnx) | 20.000 | −50.0% | −50.0% | 2.00× | 200.0 | −50.0% | −50.0% |" in text
    assert "front int8-aggressive (7, 0.9500), int8 (8, 0.9920), fused (16, 1.0000); dominated: baseline, onnx" in text
    assert "- CPU: Test CPU 9000" in text and "- ISA flags: avx2, avx512_vnni" in text
    assert "![" not in text  # no images asked for


def test_build_markdown_writes_and_links_pngs(tmp_path):
    run = write_run(tmp_path / "run")
    out = build_markdown([run], tmp_path / "docs" / "report.md")
    text = out.read_text()
    figs = tmp_path / "docs" / "report_figures"
    for name in ("waterfall.png", "pareto_latency.png", "pareto_size.png"):
        assert (figs / name).is_file()
        assert f"](report_figures/{name})" in text
    assert build_markdown([run], tmp_path / "plain.md", images=False).read_text().count("![") == 0


def test_markdown_of_an_llm_run_has_the_llm_table_and_per_token_latency():
    text = markdown_report([("demo-llm", make_llm_ledger())])
    assert "| stage | pass | runtime | p50 ms | p90 ms | speedup | size MB | peak MB | top-1 agr. | KL | gate |" in text
    assert "## LLM" in text and "Copy bandwidth 40.0 GB/s; prompt 128 tokens." in text
    assert "| litert-int4 | litert | int4 dyn b32 + emb int8 dyn | 64.0 | 2000 | 150.0 | 3.75× | 34% |" in text
    assert "| configuration | decode ms/token p50 | step |" in text
    # the Pareto fronts of an LLM run: decode ms per token against next-token top-1 agreement
    assert ("fidelity (next-token top-1 agreement with baseline) vs decode ms/token p50: front litert-int4 (6.67, "
            "0.9100), litert-int8 (8.33, 0.9700), litert (16.7, 0.9990), baseline (25, 1.0000)") in text
    assert "- measurement: LLM: prompt 128 tokens, 192 decode tokens over 3 repeats" in text
    assert "- copy bandwidth: 40.0 GB/s" in text
    plain = markdown_report([("demo", make_ledger())])
    assert "## LLM" not in plain and "decode ms" not in plain and "| configuration | latency p50 ms |" in plain


def test_build_markdown_of_an_llm_run_writes_its_pngs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    make_llm_ledger().save(run / "ledger.json")
    text = build_markdown([run], tmp_path / "report.md").read_text()
    for name in ("pareto_latency.png", "pareto_size.png"):
        assert (tmp_path / "report_figures" / name).is_file() and f"](report_figures/{name})" in text
