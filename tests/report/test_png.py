"""PNG export with matplotlib: every figure written as a real PNG, no browser involved."""

from __future__ import annotations

import sys

import pytest

from report.factory import make_ledger

from edgeopt.report.png import export_pngs

PNG = b"\x89PNG\r\n\x1a\n"
PROFILE = {"version": "1.31.1", "threads": 2, "runs": 5,
           "nodes": [{"name": f"/l{i}/MatMul", "op_type": "MatMul", "ms": 1.0 / (i + 1), "share": 0.1} for i in range(5)],
           "op_types": [{"op_type": "MatMul", "nodes": 5, "ms": 2.0, "share": 1.0}]}


def _is_png(p) -> bool:
    data = p.read_bytes()
    return data[:8] == PNG and len(data) > 5000


def test_every_figure_exported_as_png(tmp_path):
    before = set(sys.modules)
    out = export_pngs([("demo", make_ledger())], tmp_path / "figs", profiles={"onnx": PROFILE, "int8": PROFILE})
    assert set(out) == {"waterfall", "pareto_latency", "pareto_size", "layers", "op_types"}
    assert all(_is_png(p) for p in out.values())
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.name for p in out.values())
    new = set(sys.modules) - before
    assert not any(m.startswith(("playwright", "kaleido")) for m in new)  # no browser behind it


def test_one_waterfall_per_run_when_several(tmp_path):
    led = make_ledger()
    out = export_pngs([("a", led), ("b/c", led)], tmp_path)
    assert {"waterfall_a", "waterfall_b_c", "pareto_latency", "pareto_size"} == set(out)
    assert all(_is_png(p) for p in out.values())


@pytest.mark.parametrize("n", [2, 5, 8, 14])
def test_waterfall_labels_never_overlap_and_caption_fits(n):
    """Bar labels of neighbouring steps collided (and the caption ran off the figure) with many stages."""
    from edgeopt.report.png import _overlaps, waterfall_figure

    stages = [("baseline", None, "torch", 17.8, 439.0, 90_000_000, 1.0, True)]
    for i in range(1, n):  # alternating small and large changes: the hardest case for neighbours
        stages.append((f"stage-{i}", "graph.fuse", "onnxruntime", 17.8 - i * (0.05 if i % 2 else 1.1),
                       439.0 - i * (0.4 if i % 2 else 20), 90_000_000, 0.999, True))
    fig = waterfall_figure(make_ledger(tuple(stages), best=None), run="a-long-run-name")
    renderer = fig.canvas.get_renderer()
    for ax in fig.axes:
        labels = getattr(ax, "waterfall_labels", [])
        assert len(labels) == n + (1 if n > 1 else 0)
        assert not _overlaps(labels, renderer), [t.get_text() for t in labels]
        top = ax.get_window_extent(renderer).y1
        assert all(t.get_window_extent(renderer).y1 <= top + 1 for t in labels), "labels inside the axes"
    title = fig._suptitle.get_window_extent(renderer)
    assert title.x1 <= fig.get_figwidth() * fig.dpi, "caption wrapped inside the figure"
