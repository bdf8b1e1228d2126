"""The report's figures: waterfall steps, Pareto fronts and per-layer rows computed from ledgers, drawn with plotly.

The data functions (`waterfall_steps`, `pareto_points`, `layer_rows`, `environment_rows`, `caption`) return
plain Python values that the HTML, markdown and PNG renderers share; the `*_figure` functions turn them
into plotly figures (plotly is imported only there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgeopt.ledger import Ledger, Stage

Metric = Literal["latency", "memory"]
METRICS: dict[str, tuple[str, str]] = {"latency": ("latency p50", "ms"), "memory": ("peak memory", "MB")}

GOOD, BAD, FRONT, GREY, FAILED = "#2e7d32", "#c62828", "#1565c0", "#b0b0b0", "#e65100"
TOP_LAYERS = 15


# ---------------------------------------------------------------------------------------- waterfall

@dataclass(frozen=True)
class Step:
    """One row of the incremental table: a stage's value, its change against the previous measured stage
    and its cumulative change against the baseline (the layout of Table 1 in "Speed Is All You Need")."""

    stage: str
    pass_: str | None
    value: float | None
    delta: float | None          # against the previous measured stage (None for the baseline)
    delta_pct: float | None      # delta as a percentage of the previous stage's value
    cumulative_pct: float | None  # (value - baseline) / baseline, in %
    ratio: float | None          # baseline / value (a speedup for latency, a reduction factor for memory)

    @property
    def label(self) -> str:
        return self.stage if self.pass_ is None else f"+ {self.stage}"


def stage_value(stage: Stage, metric: Metric) -> float | None:
    """The stage's latency p50 (ms) or peak RSS (MB; a diffusion stage without one: its tensor peak plus weights);
    None when not measured or the stage did not finish."""
    if stage.status != "done":
        return None
    if metric == "latency":
        return stage.latency_ms.p50 if stage.latency_ms else None
    if metric == "memory":
        return stage.peak_rss_mb if stage.peak_rss_mb is not None else diffusion_memory_mb(stage)
    raise ValueError(f"metric must be 'latency' or 'memory', got {metric!r}")


def lineage(ledger: Ledger, end: str | None = None) -> list[Stage]:
    """The stages from the baseline to `end` (default: the best stage, else the last), following each
    stage's parent; a linear run is all of its stages. In a branched run, branches off that path are
    left out (they stay in the stage table and the Pareto plots)."""
    stages = list(ledger.stages)
    if not stages:
        return []
    by_name = {s.name: s for s in stages}
    branched = any(getattr(s, "parent", None) not in (None, stages[i - 1].name) for i, s in enumerate(stages) if i)
    if not branched and end is None:
        return stages
    end = end or ledger.best or stages[-1].name
    if end not in by_name:
        return stages
    path, seen = [], set()
    cur: Stage | None = by_name[end]
    while cur is not None and cur.name not in seen:
        path.append(cur)
        seen.add(cur.name)
        i = stages.index(cur)
        parent = getattr(cur, "parent", None) or (stages[i - 1].name if i > 0 else None)
        cur = by_name.get(parent) if parent else None
    return path[::-1]


def waterfall_steps(ledger: Ledger, metric: Metric) -> list[Step]:
    """Baseline, then + each optimization on the path to the best stage, each step's change and the
    cumulative change.

    Stages without a value (failed, or not measured) stay in the list with value None and are skipped
    when the next step's change is computed.
    """
    steps: list[Step] = []
    base: float | None = None
    prev: float | None = None
    for s in lineage(ledger):
        v = stage_value(s, metric)
        if v is None:
            steps.append(Step(s.name, s.pass_, None, None, None, None, None))
            continue
        if base is None:
            base = v
        delta = None if prev is None else v - prev
        steps.append(Step(
            stage=s.name, pass_=s.pass_, value=v, delta=delta,
            delta_pct=None if delta is None or not prev else 100.0 * delta / prev,
            cumulative_pct=100.0 * (v - base) / base if base else None,
            ratio=base / v if v else None,
        ))
        prev = v
    return steps


def signed(v: float, spec: str) -> str:
    return ("+" if v > 0 else "−" if v < 0 else "±") + format(abs(v), spec)


def step_text(step: Step, unit: str) -> str:
    """The label drawn on a waterfall bar: the absolute value for the baseline, the change for a step."""
    if step.value is None:
        return "not measured"
    if step.delta is None:
        return f"{step.value:.3g} {unit}"
    pct = f" ({signed(step.delta_pct, '.1f')}%)" if step.delta_pct is not None else ""
    return f"{signed(step.delta, '.3g')} {unit}{pct}"


# ---------------------------------------------------------------------------------------- Pareto

@dataclass(frozen=True)
class Point:
    """One stage as a point of the Pareto plots.

    `runtime` is the runtime that timed it (else the one its artifact kind runs on); `not_measured` is the
    stage's reason when it could not be timed on this host (a Core ML model off Apple)."""

    label: str
    run: str
    stage: str
    latency_ms: float | None
    size_mb: float | None
    quality: float | None
    gate_passed: bool | None
    runtime: str | None = None
    not_measured: str | None = None


# the runtime an artifact kind runs on, for a stage that was not timed (a timed stage records its runtime)
KIND_RUNTIME = {"torch": "torch", "onnx": "onnxruntime", "openvino": "openvino", "tflite": "litert",
                "ncnn": "ncnn", "coreml": "coreml"}
RUNTIME_ORDER = ("torch", "onnxruntime", "openvino", "litert", "ncnn", "coreml")
RUNTIME_COLORS = {"torch": "#6d4c41", "onnxruntime": "#1565c0", "openvino": "#6a1b9a", "litert": "#00897b",
                  "ncnn": "#c2185b", "coreml": "#757575"}
OTHER_COLORS = ("#f9a825", "#283593", "#558b2f", "#4e342e", "#00acc1")


def stage_runtime(stage: Stage) -> str | None:
    """The runtime a stage was timed on (its latency record), else the one its artifact kind runs on."""
    if stage.latency_ms is not None:
        return stage.latency_ms.runtime
    return KIND_RUNTIME.get(str((stage.artifact or {}).get("kind") or ""))


def runtimes_of(points: list[Point]) -> list[str]:
    """The runtimes of `points`, known ones in a fixed order (torch, onnxruntime, openvino, litert, ncnn,
    coreml), then any other alphabetically."""
    present = {p.runtime for p in points if p.runtime}
    return [r for r in RUNTIME_ORDER if r in present] + sorted(present - set(RUNTIME_ORDER))


def runtime_color(runtime: str, order: list[str] | None = None) -> str:
    """A fixed colour per known runtime; others take the next colour of a small palette."""
    if runtime in RUNTIME_COLORS:
        return RUNTIME_COLORS[runtime]
    others = [r for r in (order or [runtime]) if r not in RUNTIME_COLORS]
    i = others.index(runtime) if runtime in others else 0
    return OTHER_COLORS[i % len(OTHER_COLORS)]


def is_llm_run(ledger: Ledger) -> bool:
    """Whether the run measured LLM stages (a stage carries `llm` figures): its latency is decode ms per token."""
    return any(s.llm for s in ledger.stages)


def is_diffusion_run(ledger: Ledger) -> bool:
    """Whether the run measured diffusion stages (a stage carries `diffusion` figures): its latency is one whole
    run from noise to image."""
    return any(s.diffusion for s in ledger.stages)


def diffusion_memory_mb(stage: Stage) -> float | None:
    """A diffusion stage's tensor peak plus weights (MB); None for other stages."""
    d = stage.diffusion or {}
    if d.get("tensor_peak_mb") is None or d.get("weights_mb") is None:
        return None
    return float(d["tensor_peak_mb"]) + float(d["weights_mb"])


def metric_titles(ledger: Ledger) -> dict[str, str]:
    """The waterfall's panel titles by metric: what latency and memory mean for this run."""
    titles = {m: f"{METRICS[m][0]} ({METRICS[m][1]})" for m in METRICS}
    if is_llm_run(ledger):
        titles["latency"] = "decode latency p50 (ms per token)"
    if is_diffusion_run(ledger):
        titles["latency"] = "whole run p50 (ms, noise to image)"
        if not any(s.peak_rss_mb is not None for s in ledger.stages):
            titles["memory"] = "tensor peak + weights (MB)"
    return titles


def latency_title(ledgers: list[tuple[str, Ledger]]) -> str:
    """The latency axis: "latency p50 (ms)", or for LLM runs only "decode latency p50 (ms per token)", for diffusion
    runs only "whole-run latency p50 (ms)"."""
    if ledgers and all(is_llm_run(led) for _, led in ledgers):
        return "decode latency p50 (ms per token)"
    if ledgers and all(is_diffusion_run(led) for _, led in ledgers):
        return "whole-run latency p50 (ms)"
    return "latency p50 (ms)"


def quality_metric(ledgers: list[tuple[str, Ledger]]) -> tuple[str, str]:
    """(key, axis title): the first accuracy metric when any stage has one; for LLM runs the next-token top-1
    agreement with the baseline; else mean cosine to the baseline."""
    for _, led in ledgers:
        for s in led.stages:
            if s.accuracy:
                name = next(iter(s.accuracy))
                return f"accuracy.{name}", f"accuracy ({name})"
    if any(is_llm_run(led) for _, led in ledgers):
        return "fidelity.top1_agreement", "fidelity (next-token top-1 agreement with baseline)"
    if any(is_diffusion_run(led) for _, led in ledgers):
        return "fidelity.ssim", "fidelity (SSIM to the baseline's images)"
    return "fidelity.mean_cosine", "fidelity (mean cosine to baseline)"


def _quality(stage: Stage, key: str) -> float | None:
    group, name = key.split(".", 1)
    d = getattr(stage, group) or {}
    v = d.get(name)
    return float(v) if v is not None else None


def pareto_points(ledgers: list[tuple[str, Ledger]]) -> tuple[list[Point], str]:
    """Every finished stage of every run as a Point (labelled "run: stage" when there are several runs),
    plus the stages that could not be timed on this host (`not_measured` set, no latency)."""
    key, title = quality_metric(ledgers)
    many = len(ledgers) > 1
    pts = []
    for run, led in ledgers:
        for s in led.stages:
            why = s.notes.get("not_measured") if s.status != "failed" else None
            if s.status != "done" and not why:
                continue
            size = (s.artifact or {}).get("size_bytes")
            pts.append(Point(
                label=f"{run}: {s.name}" if many else s.name, run=run, stage=s.name,
                latency_ms=s.latency_ms.p50 if s.latency_ms else None,
                size_mb=size / 1e6 if size else None,
                quality=_quality(s, key),
                gate_passed=s.gate.passed if s.gate else None,
                runtime=stage_runtime(s),
                not_measured=str(why) if why and s.latency_ms is None else None,
            ))
    return pts, title


def pareto_front(points: list[tuple[float, float]], tol: float = 1e-6) -> list[bool]:
    """For each (cost, quality) pair: True when no other pair is at least as cheap and at least as good,
    and strictly better in one of the two (lower cost is better, higher quality is better).

    Qualities closer than `tol` count as equal (a baseline's cosine of exactly 1 does not make it better
    than an export that agrees to 1e-13).
    """
    points = [(c, round(q / tol) * tol) for c, q in points]
    out = []
    for i, (c, q) in enumerate(points):
        dominated = any(c2 <= c and q2 >= q and (c2 < c or q2 > q) for j, (c2, q2) in enumerate(points) if j != i)
        out.append(not dominated)
    return out


def front_of(points: list[Point], x: Literal["latency_ms", "size_mb"]) -> list[tuple[Point, bool]]:
    """The points that have both coordinates, each with whether it lies on the front."""
    usable = [p for p in points if getattr(p, x) is not None and p.quality is not None]
    flags = pareto_front([(getattr(p, x), p.quality) for p in usable])
    return list(zip(usable, flags))


# ---------------------------------------------------------------------------------------- layers

def layer_rows(profile: dict[str, Any], top: int = TOP_LAYERS) -> list[dict[str, Any]]:
    """The `top` slowest nodes of a profile report (edgeopt.analyze.profile): name, op_type, ms, share."""
    return [{"name": n.get("name", "?"), "op_type": n.get("op_type", "?"), "ms": float(n.get("ms", 0.0)),
             "share": float(n.get("share", 0.0))} for n in (profile.get("nodes") or [])[:top]]


def short_name(name: str, width: int = 36) -> str:
    """A node name cut to its last `width` characters (the distinctive end of a long scoped name)."""
    return name if len(name) <= width else "…" + name[-(width - 1):]


def short_names(names: list[str], width: int = 36) -> list[str]:
    """`short_name` of each, kept distinct (a repeated short form gets " #2", " #3", ...)."""
    out, seen = [], {}
    for n in names:
        s = short_name(n, width)
        seen[s] = seen.get(s, 0) + 1
        out.append(s if seen[s] == 1 else f"{s} #{seen[s]}")
    return out


def op_type_rows(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Per-op-type time of a profile report: op_type, nodes, ms, share (slowest first)."""
    return [{"op_type": r.get("op_type", "?"), "nodes": int(r.get("nodes", 0)), "ms": float(r.get("ms", 0.0)),
             "share": float(r.get("share", 0.0))} for r in (profile.get("op_types") or [])]


# ---------------------------------------------------------------------------------------- environment

def _measure_settings(ledger: Ledger) -> dict[str, Any]:
    return dict(ledger.recipe.get("measure") or {})


def runtime_versions(ledger: Ledger) -> dict[str, str]:
    """Runtime and library versions: the environment's runtimes, then each stage's recorded versions."""
    out: dict[str, str] = {}
    for k, v in (ledger.environment.get("runtimes") or ledger.target.get("runtimes") or {}).items():
        out[str(k)] = str(v)
    for s in ledger.stages:
        for k, v in (s.versions or {}).items():
            out.setdefault(str(k), str(v))
    return out


def environment_rows(ledger: Ledger) -> list[tuple[str, str]]:
    """(field, value) rows: CPU model, ISA flags, cores, threads, target, platform, runtimes and versions."""
    env, tgt, m = ledger.environment, ledger.target, _measure_settings(ledger)
    lat = next((s.latency_ms for s in ledger.stages if s.latency_ms), None)
    threads = m.get("threads") or (lat.threads if lat else None)
    isa = env.get("isa") or tgt.get("isa") or []
    runtimes = sorted({s.latency_ms.runtime for s in ledger.stages if s.latency_ms})
    vers = runtime_versions(ledger)
    rows = [
        ("CPU", str(env.get("cpu_model") or tgt.get("cpu_model") or "?")),
        ("ISA flags", ", ".join(isa) or "—"),
        ("cores", str(env.get("cores") or tgt.get("cores") or "?")),
        ("memory", f"{env.get('memory_gb') or tgt.get('memory_gb')} GB" if (env.get("memory_gb") or tgt.get("memory_gb")) else "?"),
        ("intra-op threads", str(threads or "?")),
        ("target", str(tgt.get("name") or ledger.recipe.get("target") or "?")),
        ("platform", str(env.get("platform") or "?")),
        ("runtimes timed", ", ".join(f"{r} {vers.get(r, '?')}" for r in runtimes) or "—"),
        ("versions", ", ".join(f"{k} {v}" for k, v in vers.items()) or "—"),
    ]
    if is_llm_run(ledger):
        d = next((s.llm for s in ledger.stages if s.llm), None) or {}
        bw = env.get("copy_bandwidth_gbs")
        rows.append(("measurement", f"LLM: prompt {d.get('prompt_tokens', '?')} tokens, {d.get('decode_tokens', '?')} "
                                    f"decode tokens over {d.get('repeats', '?')} repeats, timed in "
                                    f"{d.get('timed_in', 'one process, interleaved')}; fidelity on "
                                    f"{d.get('sequences', '?')} sequences × {d.get('seq_len', '?')} tokens"))
        rows.append(("copy bandwidth", f"{bw:.1f} GB/s" if isinstance(bw, (int, float)) else "not recorded"))
    elif is_diffusion_run(ledger):
        d = env.get("diffusion") or {}
        rows.append(("measurement", f"diffusion ({d.get('model', '?')}): {d.get('steps', '?')} "
                                    f"{d.get('scheduler', '?')} steps, seed {d.get('seed', '?')}, "
                                    f"{d.get('images', '?')} images; timed run: {d.get('timed_run', '?')}, "
                                    f"{d.get('rounds', '?')} rounds, {d.get('timed', '?')}"))
    elif m:
        rows.append(("measurement", f"batch {m.get('batch', '?')}, sequence {m.get('seq_len', '?')}, "
                                    f"{m.get('runs', '?')} timed runs after {m.get('warmup', '?')} warm-up, interleaved"))
    return rows


def caption(ledger: Ledger) -> str:
    """One line naming runtime(s), threads, input shapes and versions, so anyone can rerun a figure."""
    vers = runtime_versions(ledger)
    lat = [s.latency_ms for s in ledger.stages if s.latency_ms]
    runtimes = sorted({x.runtime for x in lat})
    threads = sorted({x.threads for x in lat})
    shapes = next((x.shapes for x in lat if x.shapes), {})
    shape_txt = ", ".join(f"{k} {'×'.join(str(d) for d in v)}" for k, v in shapes.items()) or "shapes not recorded"
    rt = ", ".join(f"{r} {vers.get(r, '?')}" for r in runtimes) or "no runtime timed"
    cpu = ledger.environment.get("cpu_model") or ledger.target.get("cpu_model") or "?"
    return (f"{rt} · {', '.join(str(t) for t in threads) or '?'} threads · {shape_txt} · {cpu} · "
            f"edgeopt {vers.get('edgeopt', '?')}")


# ---------------------------------------------------------------------------------------- plotly

def _layout(fig: Any, title: str, subtitle: str, height: int) -> Any:
    fig.update_layout(
        title={"text": f"{title}<br><sup>{subtitle}</sup>", "x": 0.01, "xanchor": "left"},
        height=height, margin={"l": 60, "r": 30, "t": 90, "b": 60}, template="plotly_white",
        font={"size": 12}, showlegend=True,
    )
    return fig


def waterfall_figure(ledger: Ledger, run: str = "") -> Any:
    """Latency and peak memory per stage as two incremental waterfalls (baseline, + each step, total)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = metric_titles(ledger)
    titles = [names[m] for m in METRICS]
    fig = make_subplots(rows=1, cols=2, subplot_titles=titles, horizontal_spacing=0.1)
    for col, metric in enumerate(METRICS, start=1):
        unit = METRICS[metric][1]
        steps = [s for s in waterfall_steps(ledger, metric) if s.value is not None]
        if not steps:
            fig.add_annotation(text=f"no {METRICS[metric][0]} measured", showarrow=False,
                               xref=f"x{col} domain" if col > 1 else "x domain",
                               yref=f"y{col} domain" if col > 1 else "y domain", x=0.5, y=0.5)
            continue
        x = [s.label for s in steps]
        y = [steps[0].value] + [s.delta for s in steps[1:]]
        measure = ["absolute"] + ["relative"] * (len(steps) - 1)
        text = [step_text(s, unit) for s in steps]
        last = steps[-1]
        if len(steps) > 1:
            x.append(f"total ({last.stage})")
            y.append(0.0)
            measure.append("total")
            text.append(f"{last.value:.3g} {unit} ({signed(last.cumulative_pct, '.0f')}%)")
        fig.add_trace(go.Waterfall(
            name=METRICS[metric][0], x=x, y=y, measure=measure, text=text, textposition="outside",
            decreasing={"marker": {"color": GOOD}}, increasing={"marker": {"color": BAD}},
            totals={"marker": {"color": FRONT}}, connector={"line": {"color": "#999", "width": 1}},
            showlegend=False, cliponaxis=False,
            hovertemplate="%{x}<br>%{text}<extra></extra>"), row=1, col=col)
        fig.update_yaxes(title_text=unit, rangemode="tozero", row=1, col=col)
    title = "Incremental waterfall" + (f": {run}" if run else "")
    fig.update_layout(uniformtext={"minsize": 10, "mode": "show"})
    return _layout(fig, title, caption(ledger), 460)


def _front_line(go: Any, pts: list[Point], x: str, name: str, color: str, visible: bool) -> Any:
    """The front as a step line; a per-runtime line (hidden until its runtime is picked) stays out of the
    legend and out of the runtime's legend group, so a legend click in the "all" view cannot reveal it."""
    pts = sorted(pts, key=lambda p: getattr(p, x))
    return go.Scatter(x=[getattr(p, x) for p in pts], y=[p.quality for p in pts], mode="lines", name=name,
                      line={"color": color, "shape": "hv", "width": 1.5}, hoverinfo="skip", visible=visible,
                      showlegend=visible)


def runtime_buttons(traces: list[tuple[str | None, str]], runtimes: list[str]) -> list[dict[str, Any]]:
    """The runtime dropdown's buttons. `traces` is each trace's (runtime, role): role "front" (the overall
    front line, runtime None), "points" or "runtime front" (the front among one runtime's points). "all"
    shows every runtime's points and the overall front; a runtime shows only its points and its own front."""
    buttons = [{"label": "runtime: all", "method": "restyle",
                "args": [{"visible": [role in ("front", "points") for _, role in traces]}]}]
    for r in runtimes:
        buttons.append({"label": f"runtime: {r}", "method": "restyle",
                        "args": [{"visible": [g == r for g, _ in traces]}]})
    return buttons


def pareto_figure(ledgers: list[tuple[str, Ledger]], x: Literal["latency_ms", "size_mb"]) -> Any:
    """Quality against latency or size, one trace group per runtime (its legend entry toggles the runtime)
    and a "runtime" dropdown that shows one runtime at a time with the front recomputed among its points.

    Points on the front are large with a dark outline and dark label, dominated ones small and faded, gate
    failures crosses; the overall front is the joined line. Stages not timed on this host (Core ML) are
    named in the subtitle, as are other stages without a value.
    """
    import plotly.graph_objects as go

    points, qtitle = pareto_points(ledgers)
    pairs = front_of(points, x)
    runtimes = runtimes_of([p for p, _ in pairs])
    xtitle = latency_title(ledgers) if x == "latency_ms" else "model size (MB)"
    fig = go.Figure()
    traces: list[tuple[str | None, str]] = []  # (runtime, role) of each trace, for the dropdown
    front = [p for p, on in pairs if on]
    if front:
        fig.add_trace(_front_line(go, front, x, "Pareto front", FRONT, True))
        traces.append((None, "front"))
    hover = ("%{text} (%{customdata[0]}, %{customdata[1]})<br>" + xtitle + " %{x:.4g}<br>" + qtitle
             + " %{y:.5f}<extra></extra>")
    for r in runtimes:
        # front points first: the legend draws a trace's icon from its first point
        sel = sorted(((p, on) for p, on in pairs if p.runtime == r), key=lambda po: not po[1])
        color = runtime_color(r, runtimes)
        fig.add_trace(go.Scatter(
            x=[getattr(p, x) for p, _ in sel], y=[p.quality for p, _ in sel], mode="markers+text", name=r,
            legendgroup=r, text=[p.label for p, _ in sel], textposition="top center",
            customdata=[[r, "gate failed" if p.gate_passed is False else "on the front" if on else "dominated"]
                        for p, on in sel],
            marker={"size": [12 if on else 9 for _, on in sel], "color": color,
                    "opacity": [1.0 if on else 0.45 for _, on in sel],
                    "symbol": ["x" if p.gate_passed is False else "circle" for p, _ in sel],
                    "line": {"width": [1.5 if on else 0 for _, on in sel], "color": "#222"}},
            textfont={"color": ["#222" if on else "#999" for _, on in sel]}, hovertemplate=hover))
        traces.append((r, "points"))
        if len(runtimes) > 1:  # the front among this runtime's points alone, shown when it is picked
            own = front_of([p for p, _ in sel], x)
            fig.add_trace(_front_line(go, [p for p, on in own if on], x, f"front ({r})", color, False))
            traces.append((r, "runtime front"))
    if len(runtimes) > 1:
        fig.update_layout(  # the dropdown heads the legend column, right of the plot
            updatemenus=[{"type": "dropdown", "name": "runtime", "buttons": runtime_buttons(traces, runtimes),
                          "active": 0, "showactive": True, "x": 1.02, "xanchor": "left", "y": 1.0, "yanchor": "top"}],
            legend={"y": 0.86, "yanchor": "top"})
    plotted = {id(p) for p, _ in pairs}
    unmeasured = [p.label for p in points if id(p) not in plotted and p.not_measured]
    missing = [p.label for p in points if id(p) not in plotted and not p.not_measured]
    sub = caption(ledgers[0][1]) if len(ledgers) == 1 else f"{len(ledgers)} runs"
    if unmeasured:
        sub += " · not measured on this host: " + ", ".join(unmeasured)
    if missing:
        sub += " · not plotted (no value): " + ", ".join(missing)
    if any(is_llm_run(led) for _, led in ledgers) and not all(is_llm_run(led) for _, led in ledgers):
        sub += " · LLM and other runs mixed: each is plotted by the fidelity its stages have"
    xs = [getattr(p, x) for p, _ in pairs if getattr(p, x) and getattr(p, x) > 0]
    log = bool(xs) and max(xs) / min(xs) > 20
    fig.update_xaxes(title_text=xtitle + (" (log scale)" if log else ""), type="log" if log else "linear")
    fig.update_yaxes(title_text=qtitle)
    what = ("decode latency" if xtitle.startswith("decode") else "latency") if x == "latency_ms" else "size"
    return _layout(fig, f"Pareto front: {qtitle.split(' (')[0]} vs {what}", sub, 440)


def search_points(ledger: Ledger) -> list[dict[str, Any]]:
    """The search's finished trials: label, family, latency (ms, from the paired speedup over the root),
    fidelity, size, gate and whether the trial is on the front."""
    out = []
    for r in (ledger.search or {}).get("trials", []):
        if r.get("status") != "done":
            continue
        out.append({"label": r["label"], "family": r["family"], "latency_ms": r["latency_ms"],
                    "fidelity": r["fidelity_value"], "size_mb": r["size_mb"], "front": bool(r.get("front")),
                    "passed": bool((r.get("gate") or {}).get("passed")),
                    "speedup": r["speedup"]["ratio"]})
    return out


def search_figure(ledger: Ledger) -> Any:
    """Every search trial, fidelity against latency, one colour per family; the front's trials are large
    diamonds joined by a line, gate failures crosses."""
    import plotly.graph_objects as go

    pts = search_points(ledger)
    fig = go.Figure()
    front = sorted((p for p in pts if p["front"]), key=lambda p: p["latency_ms"])
    if front:
        fig.add_trace(go.Scatter(x=[p["latency_ms"] for p in front], y=[p["fidelity"] for p in front], mode="lines",
                                 line={"color": FRONT, "shape": "hv", "width": 1.5}, name="front", hoverinfo="skip"))
    for fam in dict.fromkeys(p["family"] for p in pts):
        sel = [p for p in pts if p["family"] == fam]
        fig.add_trace(go.Scatter(
            x=[p["latency_ms"] for p in sel], y=[p["fidelity"] for p in sel], mode="markers", name=fam,
            text=[f"{p['label']}: {p['speedup']:.2f}×, {p['size_mb']:.1f} MB" + ("" if p["passed"] else " (gate failed)")
                  for p in sel],
            marker={"size": [15 if p["front"] else 9 for p in sel],
                    "symbol": ["x" if not p["passed"] else ("diamond" if p["front"] else "circle") for p in sel],
                    "line": {"width": [2 if p["front"] else 0 for p in sel], "color": "#222"}},
            hovertemplate="%{text}<br>latency %{x:.3g} ms<br>fidelity %{y:.5f}<extra></extra>"))
    srch = ledger.search or {}
    sub = (f"{len(srch.get('trials', []))} trials from {srch.get('root')}; latency = the root's p50 / the paired "
           "speedup measured in each trial · " + caption(ledger))
    fig.update_xaxes(title_text="latency p50 (ms)")
    fig.update_yaxes(title_text="fidelity (accuracy, else mean cosine)")
    return _layout(fig, "Search: every trial, the front in large diamonds", sub, 440)


def layers_figure(profiles: dict[str, dict[str, Any]], top: int = TOP_LAYERS) -> Any:
    """The `top` slowest layers of each profiled stage, one panel per stage (horizontal bars in ms)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(profiles)
    fig = make_subplots(rows=1, cols=max(1, len(names)), subplot_titles=names, horizontal_spacing=0.25)
    for i, name in enumerate(names, start=1):
        rows = list(reversed(layer_rows(profiles[name], top)))
        fig.add_trace(go.Bar(
            x=[r["ms"] for r in rows], y=short_names([r["name"] for r in rows]), orientation="h", name=name,
            text=[f"{r['op_type']} {100 * r['share']:.1f}%" for r in rows], textposition="auto",
            customdata=[[r["name"], r["op_type"]] for r in rows], showlegend=False, marker={"color": FRONT},
            hovertemplate="%{customdata[0]}<br>%{customdata[1]}<br>%{x:.4f} ms<extra></extra>"), row=1, col=i)
        fig.update_xaxes(title_text="ms per run", row=1, col=i)
    p0 = profiles[names[0]] if names else {}
    sub = (f"ONNX Runtime {p0.get('version', '?')} profiler · {p0.get('threads', '?')} threads · "
           f"{p0.get('runs', '?')} runs · inputs " +
           ", ".join(f"{k} {'×'.join(str(d) for d in v)}" for k, v in (p0.get('inputs') or {}).items()))
    tallest = max([len(layer_rows(p, top)) for p in profiles.values()] or [1])
    return _layout(fig, f"Per-layer latency: top {top} layers", sub, 180 + 24 * tallest)


def op_type_order(profiles: dict[str, dict[str, Any]], top: int = 12) -> list[str]:
    """The `top` op types by their largest time in any profile, then "other" when more exist."""
    best: dict[str, float] = {}
    for p in profiles.values():
        for r in op_type_rows(p):
            best[r["op_type"]] = max(best.get(r["op_type"], 0.0), r["ms"])
    order = sorted(best, key=lambda k: -best[k])
    return order[:top] + (["other"] if len(order) > top else [])


def op_type_table(profile: dict[str, Any], order: list[str]) -> dict[str, dict[str, float]]:
    """{op type: {"ms", "share"}} for the op types in `order`; "other" sums the rest."""
    rows = {r["op_type"]: r for r in op_type_rows(profile)}
    out = {o: {"ms": rows[o]["ms"], "share": rows[o]["share"]} if o in rows else {"ms": 0.0, "share": 0.0}
           for o in order if o != "other"}
    if "other" in order:
        rest = [r for k, r in rows.items() if k not in out]
        out["other"] = {"ms": sum(r["ms"] for r in rest), "share": sum(r["share"] for r in rest)}
    return out


def op_types_figure(profiles: dict[str, dict[str, Any]], top: int = 12) -> Any:
    """Time per op type for each profiled stage (grouped bars, ms per run; the rest summed as "other")."""
    import plotly.graph_objects as go

    order = op_type_order(profiles, top)
    fig = go.Figure()
    for name, p in profiles.items():
        by = op_type_table(p, order)
        fig.add_trace(go.Bar(
            x=order, y=[by[o]["ms"] for o in order], name=name,
            text=[f"{100 * by[o]['share']:.0f}%" if by[o]["ms"] else "" for o in order], textposition="outside",
            hovertemplate="%{x}<br>%{y:.4f} ms<extra>" + name + "</extra>"))
    fig.update_layout(barmode="group")
    fig.update_yaxes(title_text="ms per run")
    p0 = next(iter(profiles.values()), {})
    return _layout(fig, "Op-type breakdown", f"ONNX Runtime {p0.get('version', '?')} profiler · "
                                             f"{p0.get('threads', '?')} threads", 420)


# ---------------------------------------------------------------------------------------- LLM tokens/s

@dataclass(frozen=True)
class LlmSpeed:
    """One LLM stage's throughput: prefill and decode tokens/s and the decode ceiling that memory bandwidth sets
    (copy bandwidth / weight bytes read per token)."""

    stage: str
    runtime: str | None
    prefill_tok_s: float | None
    decode_tok_s: float | None
    ceiling_tok_s: float | None
    bandwidth_pct: float | None
    gate_passed: bool | None


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def llm_speeds(ledger: Ledger) -> list[LlmSpeed]:
    """The stages with LLM figures, in ledger order."""
    return [LlmSpeed(stage=s.name, runtime=stage_runtime(s), prefill_tok_s=_num(s.llm.get("prefill_tok_s")),
                     decode_tok_s=_num(s.llm.get("decode_tok_s")),
                     ceiling_tok_s=_num(s.llm.get("bandwidth_ceiling_tok_s")),
                     bandwidth_pct=_num(s.llm.get("bandwidth_pct")), gate_passed=s.gate.passed if s.gate else None)
            for s in ledger.stages if s.llm]


def llm_caption(ledger: Ledger) -> str:
    """One line: prompt length, decode tokens × repeats, threads, copy bandwidth, CPU, edgeopt version."""
    d = next((s.llm for s in ledger.stages if s.llm), None) or {}
    bw = ledger.environment.get("copy_bandwidth_gbs")
    threads = sorted({s.latency_ms.threads for s in ledger.stages if s.llm and s.latency_ms})
    cpu = ledger.environment.get("cpu_model") or ledger.target.get("cpu_model") or "?"
    return (f"prompt {d.get('prompt_tokens', '?')} tokens · decode {d.get('decode_tokens', '?')} tokens "
            f"({d.get('repeats', '?')} repeats, median) · {', '.join(map(str, threads)) or '?'} threads · "
            "copy bandwidth " + (f"{bw:.1f} GB/s" if isinstance(bw, (int, float)) else "not recorded")
            + f" · {cpu} · edgeopt {runtime_versions(ledger).get('edgeopt', '?')}")


def llm_speed_figure(ledger: Ledger, run: str = "") -> Any:
    """Prefill and decode tokens/s per stage (grouped bars), with each stage's decode ceiling from memory bandwidth
    as a marker over its decode bar; a log axis when prefill and decode differ by more than 20×."""
    import plotly.graph_objects as go

    rows = llm_speeds(ledger)
    x = [r.stage for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=x, y=[r.decode_tok_s for r in rows], name="decode tok/s", offsetgroup="decode",
                         marker={"color": [FRONT if r.gate_passed is not False else FAILED for r in rows]},
                         text=[f"{r.decode_tok_s:.1f}" if r.decode_tok_s else "" for r in rows], textposition="outside",
                         customdata=[["—" if r.bandwidth_pct is None else f"{r.bandwidth_pct:.0f}%"] for r in rows],
                         hovertemplate="%{x}<br>decode %{y:.1f} tok/s (%{customdata[0]} of the bandwidth limit)"
                                       "<extra></extra>"))
    fig.add_trace(go.Bar(x=x, y=[r.prefill_tok_s for r in rows], name="prefill tok/s", offsetgroup="prefill",
                         marker={"color": GOOD},
                         text=[f"{r.prefill_tok_s:.0f}" if r.prefill_tok_s else "" for r in rows],
                         textposition="outside",
                         hovertemplate="%{x}<br>prefill %{y:.0f} tok/s<extra></extra>"))
    if any(r.ceiling_tok_s for r in rows):
        fig.add_trace(go.Scatter(x=x, y=[r.ceiling_tok_s for r in rows], name="decode ceiling (memory bandwidth)",
                                 mode="markers", offsetgroup="decode",
                                 marker={"symbol": "line-ew-open", "size": 34, "color": "#212121",
                                         "line": {"width": 3, "color": "#212121"}},
                                 hovertemplate="%{x}<br>bandwidth limit %{y:.1f} tok/s<extra></extra>"))
    values = [v for r in rows for v in (r.decode_tok_s, r.prefill_tok_s, r.ceiling_tok_s) if v and v > 0]
    log = bool(values) and max(values) / min(values) > 20
    fig.update_layout(barmode="group", scattermode="group", uniformtext={"minsize": 9, "mode": "show"})
    fig.update_yaxes(title_text="tokens per second" + (" (log scale)" if log else ""), type="log" if log else "linear",
                     **({"dtick": "D2"} if log else {}))
    failed = [r.stage for r in rows if r.gate_passed is False]
    sub = llm_caption(ledger) + (" · orange: failed its fidelity gate (" + ", ".join(failed) + ")" if failed else "")
    return _layout(fig, "Tokens per second" + (f": {run}" if run else ""), sub, 440)
