"""Rich renderables for analysis and profile reports (the CLI prints these, or the dict as JSON)."""

from __future__ import annotations

from typing import Any


def human(n: float | int | None, unit: str = "") -> str:
    """1234567 -> '1.23 M' (SI prefixes, base 1000); None -> '?'."""
    if n is None:
        return "?"
    n = float(n)
    for prefix in ("", "k", "M", "G", "T", "P"):
        if abs(n) < 1000 or prefix == "P":
            text = f"{n:.0f}" if prefix == "" and n == int(n) else f"{n:.3g}"
            return f"{text} {prefix}{unit}".rstrip()
        n /= 1000
    return str(n)  # pragma: no cover


def human_bytes(n: float | int | None) -> str:
    """Bytes with binary prefixes: 1536 -> '1.5 KiB'."""
    if n is None:
        return "?"
    n = float(n)
    for prefix in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or prefix == "TiB":
            return f"{n:.0f} {prefix}" if prefix == "B" else f"{n:.3g} {prefix}"
        n /= 1024
    return str(n)  # pragma: no cover


def _pct(x: float | None) -> str:
    return "?" if x is None else f"{100 * x:.1f}%"


def _shape(shapes: list | None) -> str:
    if not shapes:
        return ""
    parts = ["?" if s is None else "×".join("?" if d is None else str(d) for d in s) or "scalar" for s in shapes]
    return ", ".join(parts)


def render_analysis(report: dict[str, Any], top: int = 10):
    """Summary panel, op census, top nodes by FLOPs, opportunities and suggested passes, as one Group (a .tflite
    report: `render_tflite_analysis`)."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    from edgeopt.analyze.tflite import TFLITE_SCHEMA

    if report.get("schema") == TFLITE_SCHEMA:
        return render_tflite_analysis(report)
    m = report.get("model", {})
    fl = report.get("flops", {})
    mem = report.get("memory", {})
    params = report.get("params", {})
    shapes = report.get("shapes", {})
    target = report.get("target") or {}
    dims = ", ".join(f"{k}={v}" for k, v in (shapes.get("dims") or {}).items()) or "static shapes"
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    rows = [
        ("model", str(m.get("path") or m.get("source") or "?")
         + (f"  (exported from {m['exported_from']})" if m.get("exported_from") else "")),
        ("format", f"ONNX opset {m.get('opset')}, IR {m.get('ir_version')}, {m.get('producer') or 'unknown producer'}"),
        ("nodes", f"{m.get('nodes', '?')}  ({len(report.get('census', {}))} op types)"),
        ("params", f"{human(params.get('count'))}  ({human_bytes(params.get('bytes'))} of weights)"),
        ("compute", f"{human(fl.get('total'), 'FLOPs')}  ({human(fl.get('macs'), 'MACs')})  at {dims}"),
        ("activations", f"peak {human_bytes(mem.get('activation_peak_bytes'))}, "
                        f"all {human_bytes(mem.get('activation_total_bytes'))}"),
        ("int8", f"{_pct(report.get('quantizable_flops_share'))} of FLOPs in int8-capable ops"
                 + (f"; {_pct((report.get('quantization') or {}).get('int8_flops_share'))} already int8"
                    if (report.get("quantization") or {}).get("int8_flops_share") else "")),
        ("target", str(target.get("name") or "none")),
    ]
    for k, v in rows:
        summary.add_row(k, v)
    parts: list[Any] = [Panel(summary, title="Model analysis", expand=False)]

    census = Table(title="Op census", title_justify="left")
    census.add_column("op type")
    census.add_column("nodes", justify="right")
    census.add_column("FLOPs", justify="right")
    census.add_column("share", justify="right")
    by_op = fl.get("by_op_type", {})
    for op, count in report.get("census", {}).items():
        row = by_op.get(op, {})
        census.add_row(op, str(count), human(row.get("flops")) if row else "", _pct(row.get("share")) if row else "")
    parts.append(census)

    total = fl.get("total") or 0
    heavy = sorted((n for n in fl.get("nodes", []) if n.get("flops")), key=lambda n: -n["flops"])[:top]
    nodes = Table(title=f"Top {len(heavy)} nodes by FLOPs", title_justify="left")
    nodes.add_column("node", overflow="fold")
    nodes.add_column("op type")
    nodes.add_column("FLOPs", justify="right")
    nodes.add_column("share", justify="right")
    nodes.add_column("output shape")
    for n in heavy:
        nodes.add_row(n["name"], n["op_type"], human(n["flops"]), _pct(n["flops"] / total if total else None),
                      _shape(n.get("output_shapes")))
    parts.append(nodes)

    opp = Table(title="Opportunities", title_justify="left")
    opp.add_column("pattern")
    opp.add_column("count", justify="right")
    opp.add_column("pass")
    opp.add_column("what it does")
    for f in report.get("opportunities", []):
        opp.add_row(str(f.get("rule")), str(f.get("count")), str(f.get("pass")), str(f.get("description") or ""))
    no_int8 = report.get("no_int8_ops") or []
    for r in no_int8:
        opp.add_row(f"{r['op_type']} stays float", str(r["count"]), "—",
                    f"no int8 kernel on this target ({_pct(r.get('flops_share'))} of FLOPs)")
    parts.append(opp)

    sugg = Table(title="Suggested passes", title_justify="left")
    sugg.add_column("#", justify="right")
    sugg.add_column("pass")
    sugg.add_column("why")
    for i, s in enumerate(report.get("suggested_passes", []), 1):
        sugg.add_row(str(i), s["pass"], s.get("why", ""))
    parts.append(sugg)
    for w in report.get("warnings", []):
        parts.append(f"[yellow]warning:[/yellow] {w}")
    return Group(*parts)


def render_tflite_analysis(report: dict[str, Any]):
    """A LiteRT file's report (`analyze.tflite.analyze_tflite`): summary, the MatMul-like ops by precision and the
    bytes one call reads per signature, the op census, suggestions."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    m, w = report.get("model", {}), report.get("weights", {})
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    for k, v in (("model", m.get("path", "?")), ("format", f"{m.get('format')}, schema version {m.get('version')}, "
                                                           f"{m.get('subgraphs')} subgraphs"),
                 ("size", human_bytes(m.get("size_bytes"))),
                 ("weights", f"{human_bytes(w.get('bytes'))}: "
                             + (", ".join(f"{dt} ×{n}" for dt, n in (w.get("dtypes") or {}).items()) or "none")),
                 ("signatures", ", ".join(report.get("signatures", {})) or "none"),
                 ("target", str((report.get("target") or {}).get("name") or "none"))):
        summary.add_row(k, str(v))
    parts: list[Any] = [Panel(summary, title="LiteRT model analysis", expand=False)]
    sig = Table(title="Signatures: MatMul-like ops by the precision they compute in (as the file declares it)",
                title_justify="left")
    for col, just in (("signature", "left"), ("ops", "right"), ("int8", "right"), ("float", "right"),
                      ("kernels", "left"), ("weights read / call", "right")):
        sig.add_column(col, justify=just, overflow="fold")
    for name, s in report.get("signatures", {}).items():
        kernels = ", ".join(f"{k} ×{n}" for k, n in [*s["int8_kernels"].items(), *s["float_kernels"].items()])
        sig.add_row(name, str(s["ops"]), str(s["int8"]), str(s["float"]), kernels, human_bytes(s["weight_bytes_read"]))
    parts.append(sig)
    census = Table(title="Op census (all signatures)", title_justify="left")
    census.add_column("op")
    census.add_column("count", justify="right")
    for op, n in report.get("census", {}).items():
        census.add_row(op, str(n))
    parts.append(census)
    if report.get("suggestions"):
        sugg = Table(title="Suggestions", title_justify="left")
        sugg.add_column("what")
        sugg.add_column("why")
        for x in report["suggestions"]:
            sugg.add_row(x["what"], x["why"])
        parts.append(sugg)
    parts.append("[dim]No FLOPs or per-op times: LiteRT's Python API has neither a shape-inferring counter nor a "
                 "per-op profiler; `edgeopt bench` times the whole file.[/dim]")
    for warning in report.get("warnings", []):
        parts.append(f"[yellow]warning:[/yellow] {warning}")
    return Group(*parts)


def render_profile(report: dict[str, Any], top: int = 15):
    """Summary panel, the slowest nodes and time by op type, as one Group."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    if report.get("op_census") is not None:  # a LiteRT model: no per-op timings, its op census instead
        census = Table(title="Op census", title_justify="left")
        for c in ("op", "count", "share"):
            census.add_column(c, justify="left" if c == "op" else "right")
        for row in report["op_census"][:top]:
            census.add_row(row["op_type"], str(row["count"]), f"{100 * row['share']:.1f}%")
        info = report.get("info") or {}
        facts = (f"{report.get('n_ops')} ops; inputs "
                 + ", ".join(f"{t['name']} {'×'.join(map(str, t['shape']))} {t['dtype']}" for t in info.get("inputs", []))
                 + f"; weights {info.get('weight_dtypes', {})}")
        return Group(f"{report.get('model')}: {report.get('note')}", census, facts)
    wall = report.get("wall_ms", {})
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("model", str(report.get("model")))
    summary.add_row("runtime", f"{report.get('runtime')} {report.get('version')} ({report.get('provider')}), "
                               f"{report.get('threads')} threads, graph optimization {report.get('graph_optimization')}")
    summary.add_row("inputs", ", ".join(f"{k} {'×'.join(map(str, v))}" for k, v in (report.get("inputs") or {}).items()))
    summary.add_row("wall / run", f"p50 {wall.get('p50', 0):.3f} ms, mean {wall.get('mean', 0):.3f} ms "
                                  f"± {wall.get('std', 0):.3f}  ({report.get('runs')} runs after {report.get('warmup')} warm-up)")
    summary.add_row("kernels / run", f"{report.get('node_total_ms', 0):.3f} ms over {report.get('n_nodes')} nodes")
    parts: list[Any] = [Panel(summary, title="Profile", expand=False)]

    nodes = Table(title="Slowest nodes", title_justify="left")
    nodes.add_column("node", overflow="fold")
    nodes.add_column("op type")
    nodes.add_column("ms / run", justify="right")
    nodes.add_column("share", justify="right")
    entries = report.get("nodes", [])[:top]
    for e in entries:
        nodes.add_row(e["name"], e["op_type"], f"{e['ms']:.4f}", _pct(e["share"]))
    shown_ms = sum(e["ms"] for e in entries)
    rest_ms = report.get("node_total_ms", 0) - shown_ms
    rest_n = report.get("n_nodes", 0) - len(entries)
    if rest_n > 0:
        total = report.get("node_total_ms") or 0
        nodes.add_row(f"({rest_n} more nodes)", "", f"{rest_ms:.4f}", _pct(rest_ms / total if total else None),
                      style="dim")
    parts.append(nodes)

    ops = Table(title="Time by op type", title_justify="left")
    ops.add_column("op type")
    ops.add_column("nodes", justify="right")
    ops.add_column("ms / run", justify="right")
    ops.add_column("share", justify="right")
    for r in report.get("op_types", []):
        ops.add_row(r["op_type"], str(r["nodes"]), f"{r['ms']:.4f}", _pct(r["share"]))
    parts.append(ops)
    return Group(*parts)
