"""The stage table: rows from a Ledger, rendered for the terminal (rich) and as markdown."""

from __future__ import annotations

from typing import Any

from edgeopt.ledger import Ledger

COLUMNS = ("stage", "runtime", "p50 ms", "p90 ms", "speedup", "size MB", "peak MB", "mean cos", "min cos", "gate")
MD_COLUMNS = ("stage", "pass", *COLUMNS[1:])


RUNTIME_SHORT = {"onnxruntime": "ort", "openvino": "ov", "litert": "litert", "ncnn": "ncnn", "torch": "torch"}
KIND_RUNTIME = {"coreml": "coreml", "tflite": "litert", "ncnn": "ncnn"}  # an untimed stage: its runtime by kind


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def stage_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """One dict per stage with the figures the table shows (speedup against the baseline's p50)."""
    base = ledger.stages[0].latency_ms.p50 if ledger.stages and ledger.stages[0].latency_ms else None
    rows = []
    for s in ledger.stages:
        lat = s.latency_ms
        fid = s.fidelity or {}
        gate = "failed: " + (s.error or "") if s.status == "failed" else "skipped: " + (s.error or "") if s.status == "skipped" else (
            f"not measured on this host ({s.notes['not_measured']})" if s.notes.get("not_measured") else
            "—" if s.gate is None else ("pass" if s.gate.passed else f"FAIL ({s.gate.why})"))
        rows.append({
            "stage": s.name + (" ★" if ledger.best == s.name else ""),
            "pass": s.pass_ or "—",
            "runtime": (RUNTIME_SHORT.get(lat.runtime, lat.runtime) if lat else
                        KIND_RUNTIME.get((s.artifact or {}).get("kind", ""), "—")),
            "p50 ms": _fmt(lat.p50 if lat else None, ".2f"),
            "p90 ms": _fmt(lat.p90 if lat else None, ".2f"),
            "speedup": _fmt(base / lat.p50 if (lat and base) else None, ".2f") + ("×" if lat and base else ""),
            "size MB": _fmt((s.artifact or {}).get("size_bytes", 0) / 1e6 if s.artifact else None, ".1f"),
            "peak MB": _fmt(s.peak_rss_mb, ".0f"),
            "mean cos": _fmt(fid.get("mean_cosine"), ".4f"),
            "min cos": _fmt(fid.get("min_cosine"), ".4f"),
            "gate": gate if len(gate) < 60 else gate[:57] + "…",
        })
    return rows


def choice_notes(ledger: Ledger) -> list[str]:
    """Why a faster stage was not chosen (it did not beat its parent beyond the measurement's spread) and why a
    stage is not faster than its parent (its diagnosis), one line each."""
    notes = [f"{s.name}: {w}" for s in ledger.stages for w in s.warnings if w.startswith("not chosen:")]
    for s in ledger.stages:
        d = s.notes.get("diagnosis")
        if d:
            notes.append(f"{s.name}: why no speed-up over {d.get('parent', s.parent)}: {d.get('summary', '')}")
    for s in ledger.stages:
        notes += [f"preflight: {w}" for w in s.notes.get("preflight", [])]
    return notes


SEARCH_COLUMNS = ("#", "candidate", "settings", "speedup", "95% interval", "fidelity", "size MB", "peak MB", "gate", "")


def _settings(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items()) or "—"


def search_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """One dict per search trial: its figures against the search root, and whether it is on the front."""
    rows = []
    for r in (ledger.search or {}).get("trials", []):
        done = r.get("status") == "done"
        sp = r.get("speedup") or {}
        gate = r.get("gate") or {}
        rows.append({
            "#": str(r["number"]), "candidate": r["label"], "settings": _settings(r.get("params", {})),
            "speedup": f"{sp['ratio']:.2f}×" if done else "—",
            "95% interval": f"{sp['lo']:.2f}–{sp['hi']:.2f}" if done else "—",
            "fidelity": f"{r['fidelity_value']:.4f}" if done else "—",
            "size MB": f"{r['size_mb']:.1f}" if done else "—",
            "peak MB": f"{r['peak_mb']:.0f}" if done and r["peak_mb"] < 1e8 else "—",
            "gate": ("pass" if gate.get("passed") else "FAIL") if done else "failed: " + str(r.get("error") or ""),
            "": "◆ front" if r.get("front") else "",
        })
    return rows


def search_notes(ledger: Ledger) -> list[str]:
    """Families skipped for this target or dropped after measuring no gain, one line each."""
    fams = (ledger.search or {}).get("families", {})
    return [f"{name}: {why}" for name, why in fams.items() if why != "searched"]


def render_search(ledger: Ledger):
    """A rich Table of the search's trials (the front marked), with skipped/dropped families as its caption."""
    from rich.table import Table

    from rich import box

    srch = ledger.search or {}
    fid = "accuracy" if any(r.get("accuracy") for r in srch.get("trials", [])) else "mean cosine"
    t = Table(title=f"search from {srch.get('root', '?')}: {len(srch.get('trials', []))} trials, front "
                    f"{', '.join(srch.get('front', [])) or 'empty'}", title_justify="left", box=box.SIMPLE_HEAD,
              show_edge=False, pad_edge=False, padding=(0, 1),
              caption="\n".join([f"speedup over the search root, timed interleaved with it; fidelity = {fid}",
                                  *search_notes(ledger)]), caption_justify="left")
    for c in SEARCH_COLUMNS:
        t.add_column(c, justify="right" if c in ("#", "speedup", "fidelity", "size MB", "peak MB") else "left",
                     no_wrap=c not in ("settings", "gate"))
    for row in search_rows(ledger):
        style = "green" if row[""] else ("red" if row["gate"].startswith(("FAIL", "failed")) else "dim")
        t.add_row(*[row[c] if len(row[c]) < 70 else row[c][:67] + "…" for c in SEARCH_COLUMNS], style=style)
    return t


def render_table(ledger: Ledger, title: str | None = None):
    """A rich Table of the stages (the best gated stage is starred)."""
    from rich.table import Table

    from rich import box

    t = Table(title=title or "edgeopt stages", title_justify="left", pad_edge=False, padding=(0, 0),
              box=box.SIMPLE_HEAD, show_edge=False, caption="latency in ms, size and peak RSS in MB, cosine to the baseline",
              caption_justify="left")
    shown = list(COLUMNS)
    for c in shown:
        t.add_column(c.replace(" ", "\n") if c not in ("p50 ms", "p90 ms", "size MB", "peak MB") else c.split()[0],
                     justify="left" if c in ("stage", "runtime", "gate") else "right",
                     no_wrap=True)
    for row in stage_rows(ledger):
        style = ("red" if row["gate"].startswith(("FAIL", "failed")) else "bold green" if "★" in row["stage"] else
                 "dim" if row["gate"].startswith(("not measured", "skipped")) else None)
        cells = [row[c] for c in shown]
        cells[-1] = cells[-1].split(" (")[0].split(":")[0]  # the terminal shows pass/FAIL; report.md says why
        t.add_row(*cells, style=style)
    return t


def to_markdown(ledger: Ledger) -> str:
    """The stage table and the environment as markdown (written as report.md)."""
    rows = stage_rows(ledger)
    lines = ["# edgeopt run", ""]
    if ledger.best:
        lines += [f"Best stage that passed its gate: **{ledger.best}**", ""]
        notes = choice_notes(ledger)
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["| " + " | ".join(MD_COLUMNS) + " |", "|" + "|".join("---" for _ in MD_COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]).replace("|", "/") for c in MD_COLUMNS) + " |")
    for s in ledger.stages:
        d = s.notes.get("diagnosis")
        if d:
            lines += ["", f"### Why {s.name} is not faster than {d.get('parent', s.parent)}", "", d.get("summary", "")]
            lines += [f"- {x}" for x in d.get("lines", [])]
    if ledger.search:
        srch = ledger.search
        lines += ["", f"## Search ({len(srch.get('trials', []))} trials from {srch.get('root')}; "
                      f"front: {', '.join(srch.get('front', [])) or 'empty'})", "",
                  "| " + " | ".join(c or "front" for c in SEARCH_COLUMNS) + " |",
                  "|" + "|".join("---" for _ in SEARCH_COLUMNS) + "|"]
        for r in search_rows(ledger):
            lines.append("| " + " | ".join(str(r[c]).replace("|", "/") for c in SEARCH_COLUMNS) + " |")
        notes = search_notes(ledger)
        lines += [""] + [f"- {n}" for n in notes]
    m = ledger.recipe.get("measure", {})
    env = ledger.environment
    lines += ["", f"Latency: batch {m.get('batch')}, sequence {m.get('seq_len')}, {m.get('threads')} intra-op threads, "
              f"{m.get('runs')} timed runs after {m.get('warmup')} warm-up, all stages interleaved in one process.",
              f"Fidelity: outputs against the baseline on {m.get('fidelity_samples')} held-out inputs (cosine per sample).",
              *[f"Data ({role}): {what}" for role, what in
                ((ledger.stages[0].notes.get("data") or {}) if ledger.stages else {}).items()],
              f"Machine: {env.get('cpu_model', '?')}, {env.get('cores', '?')} cores; ISA: {', '.join(env.get('isa', []) or [])}.",
              ""]
    for s in ledger.stages:
        ranking = s.notes.get("sensitivity")
        if ranking:
            q = s.notes.get("quantization", {})
            lines += [f"## Sensitivity ranking ({s.name})", "",
                      f"Each layer quantized alone, output drift (1 − mean cosine) on the calibration data; "
                      f"{q.get('kept_float', 0)} most sensitive kept in float.", "",
                      "| # | layer | op | drift | kept float |", "|---|---|---|---|---|"]
            kept = set(q.get("excluded", []))
            for i, r in enumerate(ranking[:15], 1):
                lines.append(f"| {i} | {r['node']} | {r['op_type']} | {r['drift']:.2e} | {'yes' if r['node'] in kept else ''} |")
            lines.append("")
        fusions = s.notes.get("fusions")
        if fusions:
            lines += [f"Fusions in {s.name}: " + ", ".join(f"{k} ×{v}" for k, v in fusions.items()), ""]
    energies = [(s.name, s.energy_mj) for s in ledger.stages if s.energy_mj]
    if energies:
        lines += ["Energy per inference (" + energies[0][1].method + "): " +
                  ", ".join(f"{n} {e.value:.1f} mJ" for n, e in energies), ""]
    return "\n".join(lines)
