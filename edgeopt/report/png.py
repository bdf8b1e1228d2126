"""PNG export of each report figure with matplotlib (Agg, no browser needed at any time).

`export_pngs(runs, out_dir, profiles)` writes waterfall_<run>.png, pareto_latency.png, pareto_size.png and,
with profiles, layers.png and op_types.png; the figures draw the same data as the HTML report's plotly ones
(edgeopt.report.figures). Only matplotlib's object API is used (no pyplot state), so it is thread-safe.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Literal, Sequence

from edgeopt.ledger import Ledger
from edgeopt.report import figures as F
from edgeopt.report.html import resolve_runs

DPI = 110


def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # a renderer to measure text with (declutter)
    return fig


def _save(fig: Any, path: Path) -> Path:
    """Save atomically (temporary file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _title(fig: Any, title: str, subtitle: str) -> None:
    """Title and caption, the caption wrapped to the figure's width (never clipped at the edge)."""
    import textwrap

    chars = max(40, int(fig.get_figwidth() * DPI / 5.6))  # ~5.6 px a character at 9 pt
    fig.suptitle(f"{title}\n{textwrap.fill(subtitle, chars)}", fontsize=9, x=0.01, ha="left")


def _overlaps(texts: Sequence[Any], renderer: Any) -> bool:
    boxes = [t.get_window_extent(renderer).expanded(1.04, 1.0) for t in texts]
    return any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])


def declutter(fig: Any, ax: Any, texts: Sequence[Any]) -> None:
    """Lay bar labels out so none overlap: two lines first; if neighbours still collide, vertical text with
    head room above the bars; then smaller type until they fit."""
    fig.draw_without_rendering()  # the constrained layout places the axes first
    renderer = fig.canvas.get_renderer()
    if not _overlaps(texts, renderer):
        return
    for t in texts:  # upwards from the top of the bar, centred on it
        t.set_rotation(90)
        t.set_horizontalalignment("left")
        t.set_verticalalignment("center")
    size = texts[0].get_fontsize() if texts else 7
    fig.draw_without_rendering()
    while _overlaps(texts, renderer) and size > 4:
        size -= 0.5
        for t in texts:
            t.set_fontsize(size)
        fig.draw_without_rendering()
    # vertical labels are tall: raise the top of the axis until the tallest one is inside it
    lo, hi = ax.get_ylim()
    for _ in range(8):
        top = ax.get_window_extent(renderer).y1
        over = max((t.get_window_extent(renderer).y1 for t in texts), default=top) - top
        if over <= 0:
            break
        ax.set_ylim(lo, hi + (hi - lo) * over / max(1.0, ax.get_window_extent(renderer).height) * 1.1)
        lo, hi = ax.get_ylim()
        fig.draw_without_rendering()


def waterfall_png(ledger: Ledger, path: str | Path, run: str = "") -> Path:
    """Latency and peak memory waterfalls side by side (baseline, + each step, total), saved as PNG."""
    return _save(waterfall_figure(ledger, run), Path(path))


def waterfall_figure(ledger: Ledger, run: str = "") -> Any:
    """The waterfall figure, laid out: no two bar labels overlap and the caption wraps inside the figure."""
    n = len(ledger.stages) + 1
    fig = _figure(max(11.0, 1.3 * n + 2), 4.6)
    axes = fig.subplots(1, 2)
    for ax, metric in zip(axes, F.METRICS):
        name, unit = F.METRICS[metric]
        steps = [s for s in F.waterfall_steps(ledger, metric) if s.value is not None]
        ax.set_title(f"{name} ({unit})", fontsize=10)
        if not steps:
            ax.text(0.5, 0.5, f"no {name} measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        labels, bottoms, heights, colors, texts = [], [], [], [], []
        prev = 0.0
        for s in steps:
            labels.append(s.label)
            if s.delta is None:
                bottoms.append(0.0)
                heights.append(s.value)
                colors.append(F.FRONT)
            else:
                bottoms.append(min(prev, s.value))
                heights.append(abs(s.delta))
                colors.append(F.GOOD if s.delta < 0 else F.BAD)
            texts.append(F.step_text(s, unit).replace(" (", "\n("))
            prev = s.value
        if len(steps) > 1:
            last = steps[-1]
            labels.append(f"total ({last.stage})")
            bottoms.append(0.0)
            heights.append(last.value)
            colors.append(F.FRONT)
            texts.append(f"{last.value:.3g} {unit}\n({F.signed(last.cumulative_pct, '.0f')}%)")
        xs = range(len(labels))
        bars = ax.bar(xs, heights, bottom=bottoms, color=colors, width=0.6)
        notes = [ax.annotate(t, (b.get_x() + b.get_width() / 2, bot + h), ha="center", va="bottom", fontsize=7,
                             xytext=(0, 2), textcoords="offset points", rotation_mode="anchor")
                 for b, t, bot, h in zip(bars, texts, bottoms, heights)]
        ax.set_xticks(list(xs), labels, rotation=30, ha="right", rotation_mode="anchor", fontsize=8)
        ax.set_ylabel(unit)
        ax.set_ylim(0, max(b + h for b, h in zip(bottoms, heights)) * 1.2)
        ax.grid(axis="y", alpha=0.3)
        ax.waterfall_labels = notes  # for declutter below (and tests)
    _title(fig, "Incremental waterfall" + (f": {run}" if run else ""), F.caption(ledger))
    for ax in axes:
        if getattr(ax, "waterfall_labels", None):
            declutter(fig, ax, ax.waterfall_labels)
    fig.draw_without_rendering()
    return fig


def pareto_png(runs: list[tuple[str, Ledger]], x: Literal["latency_ms", "size_mb"], path: str | Path) -> Path:
    """Quality against latency or size: front points coloured and joined, dominated ones grey."""
    points, qtitle = F.pareto_points(runs)
    pairs = F.front_of(points, x)
    xtitle = F.latency_title(runs) if x == "latency_ms" else "model size (MB)"
    fig = _figure(7.5, 4.4)
    ax = fig.subplots()
    front = sorted((p for p, on in pairs if on), key=lambda p: getattr(p, x))
    if front:
        ax.step([getattr(p, x) for p in front], [p.quality for p in front], where="post", color=F.FRONT, lw=1.2,
                label="Pareto front")
    for p, on in pairs:
        failed = p.gate_passed is False
        ax.scatter([getattr(p, x)], [p.quality], s=45, marker="x" if failed else "o",
                   color=F.FAILED if failed else (F.FRONT if on else F.GREY), zorder=3)
        ax.annotate(p.label, (getattr(p, x), p.quality), fontsize=7, xytext=(0, 5), textcoords="offset points",
                    ha="center", color="#222" if on else "#999")
    xs = [getattr(p, x) for p, _ in pairs if getattr(p, x)]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
        xtitle += " (log scale)"
    ax.set_xlabel(xtitle)
    ax.set_ylabel(qtitle)
    ax.grid(alpha=0.3)
    if front:
        ax.legend(fontsize=7, loc="lower right")
    what = "latency" if x == "latency_ms" else "size"
    _title(fig, f"Pareto front: {qtitle.split(' (')[0]} vs {what} (grey: dominated, x: failed its gate)",
           F.caption(runs[0][1]) if len(runs) == 1 else f"{len(runs)} runs")
    return _save(fig, Path(path))


def layers_png(profiles: dict[str, dict[str, Any]], path: str | Path, top: int = F.TOP_LAYERS) -> Path:
    """The `top` slowest layers of each profiled stage, one panel each."""
    names = list(profiles)
    tallest = max([len(F.layer_rows(p, top)) for p in profiles.values()] or [1])
    fig = _figure(max(6.0, 5.5 * len(names)), 1.2 + 0.28 * tallest)
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names):
        rows = list(reversed(F.layer_rows(profiles[name], top)))
        ax.barh(F.short_names([r["name"] for r in rows]), [r["ms"] for r in rows], color=F.FRONT)
        for i, r in enumerate(rows):
            ax.annotate(f" {r['op_type']} {100 * r['share']:.1f}%", (r["ms"], i), va="center", fontsize=6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("ms per run")
        ax.tick_params(axis="y", labelsize=6)
    p0 = profiles[names[0]] if names else {}
    _title(fig, f"Per-layer latency: top {top} layers",
           f"ONNX Runtime {p0.get('version', '?')} profiler, {p0.get('threads', '?')} threads, {p0.get('runs', '?')} runs")
    return _save(fig, Path(path))


def op_types_png(profiles: dict[str, dict[str, Any]], path: str | Path, top: int = 12) -> Path:
    """Time per op type for each profiled stage (grouped bars)."""
    order = F.op_type_order(profiles, top)
    fig = _figure(10, 4.2)
    ax = fig.subplots()
    width = 0.8 / max(1, len(profiles))
    for i, (name, p) in enumerate(profiles.items()):
        by = F.op_type_table(p, order)
        ax.bar([j + i * width for j in range(len(order))], [by[o]["ms"] for o in order], width=width, label=name)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(order))], order, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("ms per run")
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    p0 = next(iter(profiles.values()), {})
    _title(fig, "Op-type breakdown", f"ONNX Runtime {p0.get('version', '?')} profiler, {p0.get('threads', '?')} threads")
    return _save(fig, Path(path))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "run"


def export_pngs(ledgers: Sequence[Any], out_dir: str | Path, profiles: dict[str, dict[str, Any]] | None = None
                ) -> dict[str, Path]:
    """Write each report figure as a PNG into `out_dir`; returns {figure name: path}.

    `ledgers` takes what edgeopt.report.html.build_report takes (run paths, Ledgers, (label, Ledger) pairs).
    """
    runs = resolve_runs(ledgers)
    out_dir = Path(out_dir)
    many = len(runs) > 1
    out: dict[str, Path] = {}
    for label, led in runs:
        key = f"waterfall_{_slug(label)}" if many else "waterfall"
        out[key] = waterfall_png(led, out_dir / f"{key}.png", label if many else "")
    out["pareto_latency"] = pareto_png(runs, "latency_ms", out_dir / "pareto_latency.png")
    out["pareto_size"] = pareto_png(runs, "size_mb", out_dir / "pareto_size.png")
    if profiles:
        out["layers"] = layers_png(profiles, out_dir / "layers.png")
        out["op_types"] = op_types_png(profiles, out_dir / "op_types.png")
    return out


__all__ = ["export_pngs", "waterfall_png", "pareto_png", "layers_png", "op_types_png"]
