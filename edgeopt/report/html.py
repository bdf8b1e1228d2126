"""The offline HTML report: one self-contained file (plotly's JavaScript inline) built from one or more run ledgers.

`build_report(runs, out)` writes the stage table, the incremental waterfall (latency and peak memory),
Pareto fronts (fidelity or accuracy against latency and size), per-layer latency and the op-type
breakdown (when profiles are given, see `profile_stages`) and an environment block. `load_run` reads a
run's ledger with one-line errors naming the file and the field.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from edgeopt.analyze.profile import profile
from edgeopt.errors import InputError
from edgeopt.ledger import READABLE_VERSIONS, SCHEMA_VERSION, Ledger, write_text_atomic
from edgeopt.report import figures
from edgeopt.report.table import (LLM_COLUMNS, SEARCH_COLUMNS, diagnosed, diagnosis_title, diffusion_final,
                                  diffusion_notes, llm_headers, llm_notes, llm_prompt_tokens, llm_rows, md_columns,
                                  search_notes, search_rows, stage_rows)

# ---------------------------------------------------------------------------------------- loading

def _ledger_file(path: Path) -> Path:
    if path.is_dir():
        f = path / "ledger.json"
        if not f.exists():
            raise InputError(f"{path}: no ledger.json in this folder (not an edgeopt run directory)")
        return f
    return path


def load_run(path: str | Path) -> Ledger:
    """The ledger of a run directory (or of a ledger.json file).

    A missing, corrupt or partial ledger raises a one-line InputError naming the file and the field; a
    ledger of another schema version is refused with what to do about it (no silent best-effort reading).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such run directory or ledger file")
    f = _ledger_file(path)
    try:
        data = json.loads(f.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None  # Ledger.load words these errors
    if isinstance(data, dict):
        version = data.get("schema_version")
        if version is None and "stages" in data:
            raise InputError(f"{f}: field 'schema_version' is missing: the ledger predates versioned ledgers "
                             f"(an older edgeopt wrote it); rerun `edgeopt optimize` to record it again")
        if isinstance(version, int) and not isinstance(version, bool) and version < min(READABLE_VERSIONS):
            raise InputError(f"{f}: field 'schema_version' is {version}: written by an older edgeopt; this "
                             f"edgeopt reads versions {min(READABLE_VERSIONS)}-{SCHEMA_VERSION}; rerun `edgeopt optimize` to record it again")
        if isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION:
            raise InputError(f"{f}: field 'schema_version' is {version}: written by a newer edgeopt; this edgeopt "
                             f"reads versions up to {SCHEMA_VERSION}; upgrade edgeopt to read it")
    try:
        ledger = Ledger.load(f)
    except InputError as e:
        raise InputError(_name_stage(str(e), data)) from None
    if not ledger.stages:
        raise InputError(f"{f}: field 'stages' is empty: the run recorded no stage")
    return ledger


def _name_stage(msg: str, data: Any) -> str:
    """Rewrite "field 'stages.2.latency_ms.p50'" as "stage 'int8' (stages.2): field 'latency_ms.p50'"."""
    m = re.search(r"field 'stages\.(\d+)\.?([^']*)'", msg)
    if not m or not isinstance(data, dict) or not isinstance(data.get("stages"), list):
        return msg
    i = int(m.group(1))
    st = data["stages"][i] if i < len(data["stages"]) else None
    name = st.get("name") if isinstance(st, dict) else None
    where = f"stage {name!r} (stages.{i})" if name else f"stages.{i}"
    return msg.replace(m.group(0), f"{where}: field {m.group(2) or 'stage'!r}")


def resolve_runs(runs: Sequence[Any]) -> list[tuple[str, Ledger]]:
    """(label, Ledger) pairs from Ledgers, (label, Ledger) pairs or run paths (labelled by folder name)."""
    if isinstance(runs, (str, Path, Ledger)):
        runs = [runs]
    out: list[tuple[str, Ledger]] = []
    seen: dict[str, int] = {}
    for r in runs:
        if isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], Ledger):
            label, led = str(r[0]), r[1]
        elif isinstance(r, Ledger):
            label, led = "run", r
        elif isinstance(r, (str, Path)):
            p = Path(r)
            led = load_run(p)
            label = (p if p.is_dir() else p.parent).resolve().name or str(p)
        else:
            raise InputError(f"expected a run directory, a ledger file or a (label, Ledger) pair, got {type(r).__name__}")
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} ({seen[label]})"
        out.append((label, led))
    if not out:
        raise InputError("no run given: pass at least one run directory or ledger")
    return out


# ---------------------------------------------------------------------------------------- stage files

def stage_dirname(stage: str) -> str:
    """The stage folder name the pipeline uses (edgeopt.pipeline writes OUT/<this>/model.*)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stage)


def inside(path: Path, roots: Iterable[Path]) -> bool:
    """Whether `path`, fully resolved (symlinks, ..), lies in one of `roots` (also resolved)."""
    p = Path(path).resolve()
    return any(p.is_relative_to(Path(r).resolve()) for r in roots)


def stage_model_file(run_dir: str | Path, stage: str, ledger: Ledger | None = None) -> Path:
    """The model file of `stage` inside `run_dir`.

    The ledger's artifact path is used when it resolves inside the run directory; otherwise (the run was
    moved) the pipeline's own location, RUN/<stage>/model.onnx. A path that would leave the run directory
    is refused, so neither a ledger nor a request can make edgeopt read files elsewhere.
    """
    run_dir = Path(run_dir)
    ledger = ledger or load_run(run_dir)
    st = ledger.stage(stage)
    if st is None:
        raise InputError(f"{run_dir}: no stage {stage!r} (stages: {', '.join(s.name for s in ledger.stages)})")
    art = st.artifact or {}
    if art.get("kind") not in (None, "onnx"):
        raise InputError(f"{run_dir}: stage {stage!r} is a {art.get('kind')} model; per-layer profiles read ONNX files")
    candidates = []
    if art.get("path"):
        p = Path(art["path"])
        candidates.append(p if p.is_absolute() else run_dir / p)
    candidates.append(run_dir / stage_dirname(stage) / "model.onnx")
    for c in candidates:
        if inside(c, [run_dir]) and c.is_file():
            return c.resolve()
    outside = [str(c) for c in candidates if not inside(c, [run_dir])]
    why = f" ({outside[0]} is outside the run directory)" if outside else ""
    raise InputError(f"{run_dir}: stage {stage!r} has no model file in the run directory{why}")


def profile_stages(run_dir: str | Path, stages: Sequence[str] | None = None, threads: int = 2, runs: int = 10,
                   top: int = figures.TOP_LAYERS, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """Per-layer profiles ({stage: edgeopt.analyze.profile report}) of ONNX stages of a run.

    `stages` None profiles every finished ONNX stage. Batch and sequence length come from the run's
    recipe; `kwargs` go to edgeopt.analyze.profile.profile (warmup, graph_optimization, ...).
    """
    run_dir = Path(run_dir)
    ledger = load_run(run_dir)
    if stages is None:
        stages = [s.name for s in ledger.stages if s.status == "done" and (s.artifact or {}).get("kind") == "onnx"]
    m = ledger.recipe.get("measure") or {}
    kwargs.setdefault("seq_len", int(m.get("seq_len") or 128))
    kwargs.setdefault("batch", int(m.get("batch") or 1))
    out = {}
    for name in stages:
        path = stage_model_file(run_dir, name, ledger)
        out[name] = profile(str(path), threads=threads, runs=runs, top=top, **kwargs)
    return out


def default_profile_stages(ledger: Ledger) -> list[str]:
    """The stages profiled when none are named: the first ONNX stage and the fastest ONNX stage."""
    onnx = [s for s in ledger.stages if s.status == "done" and (s.artifact or {}).get("kind") == "onnx"]
    if not onnx:
        return []
    timed = [s for s in onnx if s.latency_ms is not None]
    names = [onnx[0].name]
    if timed:
        fastest = min(timed, key=lambda s: s.latency_ms.p50).name
        if fastest not in names:
            names.append(fastest)
    return names


# ---------------------------------------------------------------------------------------- HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#263238;color:#fff;padding:18px 28px}header h1{margin:0;font-size:22px}
header p{margin:4px 0 0;color:#cfd8dc;font-size:13px}
nav{padding:8px 28px;background:#eceff1;font-size:13px}nav a{margin-right:14px;color:#1565c0}
main{padding:8px 28px 40px;max-width:1400px}section{margin-top:26px}
h2{font-size:18px;border-bottom:1px solid #ddd;padding-bottom:4px}h3{font-size:15px;margin-bottom:4px}
table{border-collapse:collapse;font-size:13px;background:#fff;margin:6px 0}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;white-space:nowrap}
th{background:#eceff1}td.l,th.l{text-align:left}tr.best td{background:#e8f5e9;font-weight:600}
.images{display:flex;gap:24px;flex-wrap:wrap}.images figure{margin:0}.images img{height:160px;image-rendering:pixelated;
border:1px solid #e0e0e0}tr.fail td{color:#b71c1c}tr.unmeasured td{color:#9e9e9e;background:#f5f5f5}.good{color:#2e7d32}.bad{color:#c62828}.note{color:#666;font-size:12px}
.fig{background:#fff;border:1px solid #e0e0e0;margin:8px 0;padding:4px}
dl.env{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:13px;background:#fff;
padding:8px 12px;border:1px solid #e0e0e0}dl.env dt{font-weight:600}dl.env dd{margin:0}
"""


def _e(v: Any) -> str:
    return html.escape(str(v), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def _fig_html(fig: Any, div_id: str) -> str:
    body = fig.to_html(include_plotlyjs=False, full_html=False, div_id=f"fig-{div_id}",
                       config={"displaylogo": False})
    return f'<div class="fig">{body}</div>'


def stage_table_html(ledger: Ledger) -> str:
    """The stage table (the same rows as the terminal table) as an HTML table."""
    rows = stage_rows(ledger)
    cols = md_columns(ledger)
    left = {"stage", "pass", "runtime", "gate"}
    out = ["<table class='stages'><tr>" + "".join(
        f"<th class='{'l' if c in left else ''}'>{_e(c)}</th>" for c in cols) + "</tr>"]
    for s, r in zip(ledger.stages, rows):
        out.append(f"<tr class='{_row_class(ledger, s)}'>" + "".join(
            f"<td class='{'l' if c in left else ''}'>{_e(r.get(c, '—'))}</td>" for c in cols) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _row_class(ledger: Ledger, s: Any) -> str:
    return ("best" if ledger.best == s.name else "fail" if s.status != "done" or (s.gate and not s.gate.passed) else
            "unmeasured" if s.notes.get("not_measured") else "")


def llm_table_html(ledger: Ledger) -> str:
    """An LLM run's table (the terminal's LLM table: tokens/s, bandwidth share, fidelity, probe answer) as HTML;
    the full answer shows on hover. Empty when no stage has LLM figures."""
    rows = llm_rows(ledger)
    if not rows:
        return ""
    heads = llm_headers(ledger)
    left = {"stage", "runtime", "quantization", "answer", "gate"}
    out = ["<table class='stages llm'><tr>" + "".join(
        f"<th class='{'l' if c in left else ''}'>{_e(heads[c])}</th>" for c in LLM_COLUMNS) + "</tr>"]
    for s, r in zip(ledger.stages, rows):
        answer = (s.llm or {}).get("answer")
        cells = []
        for c in LLM_COLUMNS:
            title = f" title='{_e(answer)}'" if c == "answer" and answer else ""
            cells.append(f"<td class='{'l' if c in left else ''}'{title}>{_e(r[c])}</td>")
        out.append(f"<tr class='{_row_class(ledger, s)}'>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def llm_html(ledger: Ledger, sid: str, run: str = "") -> str:
    """The LLM section: copy bandwidth and prompt length, the table, how it was measured, the tokens/s chart."""
    bw = ledger.environment.get("copy_bandwidth_gbs")
    n = llm_prompt_tokens(ledger)
    head = ("<p>Copy bandwidth " + (f"<b>{bw:.1f} GB/s</b>" if isinstance(bw, (int, float)) else "not recorded"))
    head += f"; prompt <b>{n}</b> tokens.</p>" if n else "; prompt length not recorded.</p>"
    notes = "<ul class='note'>" + "".join(f"<li>{_e(x)}</li>" for x in llm_notes(ledger)) + "</ul>"
    return "\n".join([head, llm_table_html(ledger), notes,
                      _fig_html(figures.llm_speed_figure(ledger, run), f"llm-speed-{sid}")])


def _pct(v: float | None) -> str:
    if v is None:
        return "—"
    cls = "good" if v < 0 else ("bad" if v > 0 else "")
    return f"<span class='{cls}'>{figures.signed(v, '.1f')}%</span>"


def incremental_table_html(ledger: Ledger) -> str:
    """Table 1 of "Speed Is All You Need": baseline, + each optimization, each step's and the cumulative change."""
    lat = figures.waterfall_steps(ledger, "latency")
    mem = figures.waterfall_steps(ledger, "memory")
    titles = figures.metric_titles(ledger)
    what = titles["latency"] if figures.is_llm_run(ledger) or figures.is_diffusion_run(ledger) else "latency p50 (ms)"
    head = (f"<tr><th class='l' rowspan=2>configuration</th><th colspan=4>{_e(what)}</th>"
            f"<th colspan=3>{_e(titles['memory'])}</th></tr><tr><th>value</th><th>step</th><th>cumulative</th>"
            "<th>speedup</th><th>value</th><th>step</th><th>cumulative</th></tr>")
    out = ["<table class='incremental'>", head]
    for a, b in zip(lat, mem):
        st = ledger.stage(a.stage)
        what = _e(a.label) + (f" <span class='note'>({_e(a.pass_)})</span>" if a.pass_ else "")
        if st is not None and st.status != "done":
            what += f" <span class='bad'>{_e(st.status)}</span>"
        out.append(
            f"<tr><td class='l'>{what}</td>"
            f"<td>{'—' if a.value is None else f'{a.value:.3f}'}</td><td>{_pct(a.delta_pct)}</td>"
            f"<td>{_pct(a.cumulative_pct)}</td><td>{'—' if a.ratio is None else f'{a.ratio:.2f}×'}</td>"
            f"<td>{'—' if b.value is None else f'{b.value:.1f}'}</td><td>{_pct(b.delta_pct)}</td>"
            f"<td>{_pct(b.cumulative_pct)}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def diffusion_html(ledger: Ledger) -> str:
    """The diffusion section: the baseline's and the final stage's images side by side (PNG inline, from the
    ledger's previews) and how Table 1 was measured."""
    shown = {s.name: s for s in (ledger.stages[0], diffusion_final(ledger))
             if s is not None and (s.diffusion or {}).get("preview_png")}
    figs = "".join(f"<figure><img alt='{_e(n)}' src='data:image/png;base64,{_e(s.diffusion['preview_png'])}'>"
                   f"<figcaption>{_e(n)}</figcaption></figure>" for n, s in shown.items())
    notes = "<ul class='note'>" + "".join(f"<li>{_e(x)}</li>" for x in diffusion_notes(ledger)) + "</ul>"
    return f"<div class='images'>{figs}</div>\n{notes}"


def environment_html(ledger: Ledger) -> str:
    rows = figures.environment_rows(ledger)
    return "<dl class='env'>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in rows) + "</dl>"


def search_html(ledger: Ledger, sid: str) -> str:
    """The search's trials (front marked), the families skipped or dropped with the reason, and its figure."""
    rows = search_rows(ledger)
    out = ["<table class='stages'><tr>" + "".join(f"<th class='l'>{_e(c or 'front')}</th>" for c in SEARCH_COLUMNS)
           + "</tr>"]
    for r in rows:
        cls = "best" if r[""] else ("fail" if r["gate"].startswith(("FAIL", "failed")) else "")
        out.append(f"<tr class='{cls}'>" + "".join(f"<td class='l'>{_e(r[c])}</td>" for c in SEARCH_COLUMNS) + "</tr>")
    out.append("</table>")
    notes = search_notes(ledger)
    if notes:
        out.append("<ul class='note'>" + "".join(f"<li>{_e(n)}</li>" for n in notes) + "</ul>")
    out.append(_fig_html(figures.search_figure(ledger), f"search-fig-{sid}"))
    return "\n".join(out)


def diagnosis_html(ledger: Ledger) -> str:
    """Each diagnosed stage and search trial: the one-line summary and its evidence; the preflight warnings."""
    out = []
    for name, d in diagnosed(ledger):
        out.append(f"<h3>{_e(diagnosis_title(name, d))}</h3><p>{_e(d.get('summary', ''))}</p>"
                   "<ul class='note'>" + "".join(f"<li>{_e(x)}</li>" for x in d.get("lines", [])) + "</ul>")
    pre = [w for s in ledger.stages for w in s.notes.get("preflight", [])]
    if pre:
        out.append("<h3>Preflight: benchmark conditions</h3><ul class='note'>"
                   + "".join(f"<li>{_e(w)}</li>" for w in pre) + "</ul>")
    return "\n".join(out)


def _warnings_html(ledger: Ledger) -> str:
    items = [f"<li><b>{_e(s.name)}</b>: {_e(s.error)}</li>" for s in ledger.stages if s.error]
    items += [f"<li><b>{_e(s.name)}</b>: {_e(w)}</li>" for s in ledger.stages for w in s.warnings]
    return f"<ul class='note'>{''.join(items)}</ul>" if items else ""


def report_html(runs: list[tuple[str, Ledger]], profiles: dict[str, dict[str, Any]] | None = None,
                title: str | None = None) -> str:
    """The whole report as one HTML document (plotly's JavaScript inline: it opens offline)."""
    from plotly.offline import get_plotlyjs

    title = title or ("edgeopt report: " + ", ".join(label for label, _ in runs))
    many = len(runs) > 1
    sections: list[tuple[str, str, str]] = []  # (id, heading, html)
    for label, led in runs:
        sid = _slug(label)
        best = (f"Best stage that passed its gate: <b>{_e(led.best)}</b>." if led.best else
                "No stage passed its gate.")
        model = (led.recipe.get("model") or {}).get("source") or (led.stages[0].notes.get("meta", {}) or {}).get("source")
        intro = f"<p>{_e(model or 'model')} · target {_e(led.target.get('name') or led.recipe.get('target') or '?')} · {best}</p>"
        body = [intro, "<h3>Stages</h3>", stage_table_html(led), _warnings_html(led),
                "<h3>What each step bought</h3>", incremental_table_html(led),
                _fig_html(figures.waterfall_figure(led, label if many else ""), f"waterfall-{sid}")]
        sections.append((f"run-{sid}", f"Run {label}" if many else "Stages and what each step bought", "\n".join(body)))
        if figures.is_llm_run(led):
            sections.append((f"llm-{sid}", f"LLM: tokens/s, fidelity, answers{': ' + label if many else ''}",
                             llm_html(led, sid, label if many else "")))
        if figures.is_diffusion_run(led):
            sections.append((f"diffusion-{sid}", f"Diffusion: images and how Table 1 was measured"
                                                 f"{': ' + label if many else ''}", diffusion_html(led)))
        if led.search:
            sections.append((f"search-{sid}", f"Search{': ' + label if many else ''}", search_html(led, sid)))
        diag = diagnosis_html(led)
        if diag:
            sections.append((f"why-{sid}", f"Why no speed-up{': ' + label if many else ''}", diag))
    pareto = [_fig_html(figures.pareto_figure(runs, "latency_ms"), "pareto-latency"),
              _fig_html(figures.pareto_figure(runs, "size_mb"), "pareto-size"),
              "<p class='note'>Front points in colour and joined; dominated points grey; a cross marks a stage "
              "that failed its fidelity gate.</p>"]
    if any(figures.is_llm_run(led) for _, led in runs):
        pareto.append("<p class='note'>LLM runs: latency is the decode time per generated token (p50) and fidelity "
                      "the next-token top-1 agreement with the PyTorch fp32 baseline on held-out text.</p>")
    sections.append(("pareto", "Pareto fronts", "\n".join(pareto)))
    if profiles:
        layers = [_fig_html(figures.layers_figure(profiles), "layers"), _fig_html(figures.op_types_figure(profiles), "op-types")]
    else:
        layers = ["<p class='note'>No per-layer profile in this report. Build it with profiles, e.g. "
                  "<code>edgeopt.report.html.build_report(runs, out, profiles=profile_stages(run_dir, ['onnx', 'int8']))</code>.</p>"]
    sections.append(("layers", "Per-layer latency and op types", "\n".join(layers)))
    env = []
    for label, led in runs:
        env += ([f"<h3>{_e(label)}</h3>"] if many else []) + [environment_html(led)]
    sections.append(("environment", "Environment", "\n".join(env)))
    nav = "".join(f"<a href='#{sid}'>{_e(h)}</a>" for sid, h, _ in sections)
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    body = "\n".join(f"<section id='{sid}'><h2>{_e(h)}</h2>\n{content}</section>" for sid, h, content in sections)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<style>{_CSS}</style>\n<script type='text/javascript'>{get_plotlyjs()}</script>\n</head><body>"
            f"<header><h1>{_e(title)}</h1><p>generated {_e(now)} by edgeopt · self-contained: opens offline</p></header>"
            f"<nav>{nav}</nav><main>{body}</main></body></html>\n")


def build_report(ledgers: Sequence[Any], out: str | Path, profiles: dict[str, dict[str, Any]] | None = None,
                 title: str | None = None) -> Path:
    """Write one self-contained HTML report of `ledgers` to `out` atomically; returns `out`.

    `ledgers`: run directories or ledger files (labelled by folder name), Ledgers, or (label, Ledger)
    pairs. `profiles`: {panel title: edgeopt.analyze.profile report}, e.g. from `profile_stages`.
    """
    runs = resolve_runs(ledgers)
    out = Path(out)
    if out.is_dir():
        raise InputError(f"{out}: is a folder; give the report's file name (e.g. {out / 'report.html'})")
    write_text_atomic(out, report_html(runs, profiles, title))
    return out


__all__ = ["build_report", "load_run", "profile_stages", "resolve_runs", "stage_model_file", "report_html", "inside",
           "stage_dirname", "llm_table_html", "llm_html", "diffusion_html"]
