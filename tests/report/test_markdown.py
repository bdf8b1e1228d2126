"""The markdown report for READMEs: tables, Pareto lists, environment, and the PNG figures it links."""

from __future__ import annotations

from report.factory import make_ledger, write_run

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
