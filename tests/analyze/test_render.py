"""Rich rendering of analysis and profile reports."""

from __future__ import annotations

import io

from rich.console import Console

from edgeopt.analyze import analyze
from edgeopt.analyze.profile import profile
from edgeopt.analyze.render import human, human_bytes, render_analysis, render_profile


def _text(renderable) -> str:
    console = Console(file=io.StringIO(), width=200, color_system=None)
    console.print(renderable)
    return console.file.getvalue()


def test_render_analysis_tables(tiny_bert_onnx):
    text = _text(render_analysis(analyze(tiny_bert_onnx.path, target=None, seq_len=16)))
    for title in ("Model analysis", "Op census", "nodes by FLOPs", "Opportunities", "Suggested passes"):
        assert title in text
    assert "attention" in text and "graph.fuse" in text and "MatMul" in text


def test_render_profile_tables(tiny_cnn_onnx):
    report = profile(tiny_cnn_onnx.path, threads=1, runs=2, warmup=1, top=3)
    text = _text(render_profile(report, top=2))
    for title in ("Profile", "Slowest nodes", "Time by op type"):
        assert title in text
    assert "more nodes" in text  # the nodes past `top` are summed in one row
    assert report["nodes"][0]["name"][:20] in text


def test_human_numbers():
    assert human(644303, "FLOPs") == "644 kFLOPs"
    assert human(12) == "12"
    assert human(None) == "?"
    assert human_bytes(1536) == "1.5 KiB"
    assert human_bytes(100) == "100 B"
