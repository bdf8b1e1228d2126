"""The markdown report for READMEs: stage table, what each step bought, Pareto fronts, layers, environment, PNG figures."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from edgeopt.ledger import Ledger, write_text_atomic
from edgeopt.report import figures as F
from edgeopt.report.html import resolve_runs
from edgeopt.report.png import _slug as slug, export_pngs
from edgeopt.report.table import diffusion_markdown, llm_markdown, md_columns, stage_rows


def _cell(v: Any) -> str:
    return str(v).replace("|", "/").replace("\n", " ")


def _table(header: Sequence[str], rows: list[Sequence[Any]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(_cell(c) for c in r) + " |" for r in rows]
    return out


def _pct(v: float | None) -> str:
    return "—" if v is None else F.signed(v, ".1f") + "%"


def incremental_rows(ledger: Ledger) -> list[list[str]]:
    """Table 1 of "Speed Is All You Need" as rows: configuration, latency, step, cumulative, speedup, memory, step, cumulative."""
    rows = []
    for a, b in zip(F.waterfall_steps(ledger, "latency"), F.waterfall_steps(ledger, "memory")):
        st = ledger.stage(a.stage)
        what = a.label + (f" ({a.pass_})" if a.pass_ else "") + (f" [{st.status}]" if st and st.status != "done" else "")
        rows.append([what, "—" if a.value is None else f"{a.value:.3f}", _pct(a.delta_pct), _pct(a.cumulative_pct),
                     "—" if a.ratio is None else f"{a.ratio:.2f}×", "—" if b.value is None else f"{b.value:.1f}",
                     _pct(b.delta_pct), _pct(b.cumulative_pct)])
    return rows


INCREMENTAL_HEADER = ("configuration", "latency p50 ms", "step", "cumulative", "speedup", "peak MB", "step", "cumulative")


def incremental_header(ledger: Ledger) -> tuple[str, ...]:
    """INCREMENTAL_HEADER; an LLM run's latency is decode ms per generated token, and says so."""
    if F.is_llm_run(ledger):
        return ("configuration", "decode ms/token p50", *INCREMENTAL_HEADER[2:])
    if F.is_diffusion_run(ledger):  # the whole run, noise to image; memory as the waterfall's memory panel says
        memory = F.metric_titles(ledger)["memory"].removesuffix(" (MB)") + " MB"
        return ("configuration", "whole run ms p50", *INCREMENTAL_HEADER[2:5], memory, *INCREMENTAL_HEADER[6:])
    return INCREMENTAL_HEADER


def markdown_report(runs: list[tuple[str, Ledger]], profiles: dict[str, dict[str, Any]] | None = None,
                    images: dict[str, str] | None = None, title: str | None = None) -> str:
    """The report as markdown; `images` maps figure names (as export_pngs returns them) to relative links."""
    images = images or {}
    many = len(runs) > 1
    lines = [f"# {title or 'edgeopt report: ' + ', '.join(label for label, _ in runs)}", ""]
    for label, led in runs:
        if many:
            lines += [f"## Run {label}", ""]
        h = "###" if many else "##"
        lines += [f"Best stage that passed its gate: **{led.best}**" if led.best else
                  "No stage passed its gate.", ""]
        lines += [f"{h} Stages", ""]
        cols = md_columns(led)
        lines += _table(cols, [[r.get(c, "—") for c in cols] for r in stage_rows(led)]) + [""]
        llm = llm_markdown(led, h)
        lines += llm + ([""] if llm else [])
        lines += diffusion_markdown(led, h, image_links=False)  # the images live in the run folder
        lines += [f"{h} What each step bought", ""]
        lines += _table(incremental_header(led), incremental_rows(led)) + [""]
        key = next((k for k in (f"waterfall_{_slug(label)}", "waterfall") if k in images), None)
        # (the tokens/s chart is in the HTML report; the LLM table above holds the same figures)
        if key:
            lines += [f"![incremental waterfall]({images[key]})", ""]
        lines += [f"_{F.caption(led)}_", ""]
    points, qtitle = F.pareto_points(runs)
    lines += ["## Pareto fronts", ""]
    if all(F.is_llm_run(led) for _, led in runs):
        lines += ["LLM runs: latency is decode ms per generated token (p50), fidelity the next-token top-1 agreement "
                  "with the PyTorch fp32 baseline on held-out text.", ""]
    lat = "decode ms/token p50" if F.latency_title(runs).startswith("decode") else "latency p50 ms"
    for x, what in (("latency_ms", lat), ("size_mb", "size MB")):
        pairs = F.front_of(points, x)
        front = sorted((p for p, on in pairs if on), key=lambda p: getattr(p, x))
        dominated = [p for p, on in pairs if not on]
        lines.append(f"- {qtitle} vs {what}: front " + (", ".join(
            f"{p.label} ({getattr(p, x):.3g}, {p.quality:.4f})" for p in front) or "—") +
            ("; dominated: " + ", ".join(p.label for p in dominated) if dominated else ""))
    lines.append("")
    for k in ("pareto_latency", "pareto_size"):
        if k in images:
            lines += [f"![{k.replace('_', ' ')}]({images[k]})", ""]
    if profiles:
        lines += ["## Per-layer latency", ""]
        for name, prof in profiles.items():
            lines += [f"**{name}** (ONNX Runtime {prof.get('version', '?')}, {prof.get('threads', '?')} threads): "
                      f"top layers", ""]
            lines += _table(("layer", "op type", "ms", "share"),
                            [[r["name"], r["op_type"], f"{r['ms']:.4f}", f"{100 * r['share']:.1f}%"]
                             for r in F.layer_rows(prof, 10)]) + [""]
        order = F.op_type_order(profiles)
        tables = {n: F.op_type_table(p, order) for n, p in profiles.items()}
        lines += ["Op-type breakdown (ms per run)", ""]
        lines += _table(("op type", *profiles), [[o, *(f"{tables[n][o]['ms']:.4f}" for n in profiles)] for o in order])
        lines.append("")
        for k in ("layers", "op_types"):
            if k in images:
                lines += [f"![{k.replace('_', ' ')}]({images[k]})", ""]
    lines += ["## Environment", ""]
    for label, led in runs:
        if many:
            lines += [f"**{label}**", ""]
        lines += [f"- {k}: {v}" for k, v in F.environment_rows(led)] + [""]
    return "\n".join(lines)


def _slug(text: str) -> str:
    return slug(text)


def build_markdown(ledgers: Sequence[Any], out: str | Path, profiles: dict[str, dict[str, Any]] | None = None,
                   images: bool = True, title: str | None = None) -> Path:
    """Write the markdown report to `out` atomically; with `images`, also the figures as PNGs in
    `<out stem>_figures/` beside it (linked relatively). Returns `out`."""
    runs = resolve_runs(ledgers)
    out = Path(out)
    links: dict[str, str] = {}
    if images:
        fig_dir = out.parent / f"{out.stem}_figures"
        for k, p in export_pngs(runs, fig_dir, profiles).items():
            links[k] = f"{fig_dir.name}/{p.name}"
    write_text_atomic(out, markdown_report(runs, profiles, links, title))
    return out


__all__ = ["build_markdown", "markdown_report", "incremental_rows", "incremental_header"]
