"""The stage table: rows from a Ledger, rendered for the terminal (rich) and as markdown."""

from __future__ import annotations

from typing import Any

from edgeopt.ledger import Ledger
from edgeopt.report.figures import lineage

COLUMNS = ("stage", "runtime", "p50 ms", "p90 ms", "speedup", "size MB", "peak MB", "mean cos", "min cos", "gate")
MD_COLUMNS = ("stage", "pass", *COLUMNS[1:])
# an LLM run (a stage with `llm` figures): latency is decode ms per generated token, and the outputs are next-token
# distributions, so top-1 agreement and KL against the PyTorch fp32 baseline stand where the cosines stand
LLM_STAGE_COLUMNS = (*COLUMNS[:7], "top-1 agr.", "KL", "gate")


RUNTIME_SHORT = {"onnxruntime": "ort", "openvino": "ov", "litert": "litert", "ncnn": "ncnn", "torch": "torch"}
KIND_RUNTIME = {"coreml": "coreml", "tflite": "litert", "ncnn": "ncnn"}  # an untimed stage: its runtime by kind


def _fmt(v: float | None, spec: str) -> str:
    return "—" if v is None else format(v, spec)


def has_llm(ledger: Ledger) -> bool:
    """Whether any stage of the run carries LLM figures (`stage.llm`)."""
    return any(s.llm for s in ledger.stages)


def stage_columns(ledger: Ledger) -> tuple[str, ...]:
    """The terminal table's columns: COLUMNS, for an LLM run LLM_STAGE_COLUMNS (top-1 agreement and KL), for a
    diffusion run those of DIFFUSION_COLUMNS (Table 1: per-component latency, memory, image fidelity) its model has."""
    if has_diffusion(ledger):  # without the columns no stage has (digits: text encoder, VAE; SD: accuracy, FD)
        cells = [diffusion_cells(s) for s in ledger.stages]
        return tuple(c for c in DIFFUSION_COLUMNS if c in ("stage", "gate") or any(x[c] != "—" for x in cells))
    return LLM_STAGE_COLUMNS if has_llm(ledger) else COLUMNS


def md_columns(ledger: Ledger) -> tuple[str, ...]:
    """The markdown and HTML stage table's columns (the terminal's plus the pass)."""
    cols = stage_columns(ledger)
    return (cols[0], "pass", *cols[1:])


def stage_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """One dict per stage with the figures the table shows (speedup against the baseline's p50); an LLM run's
    rows also have "top-1 agr." and "KL", a diffusion run's are Table 1's (DIFFUSION_COLUMNS)."""
    llm, diffusion = has_llm(ledger), has_diffusion(ledger)
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
        if llm:
            rows[-1].update({"top-1 agr.": _fmt(fid.get("top1_agreement"), ".4f"), "KL": kl_text(fid.get("kl"))})
            rows[-1] = {c: rows[-1][c] for c in ("stage", "pass", *LLM_STAGE_COLUMNS[1:])}
        if diffusion:
            rows[-1].update(diffusion_cells(s))
            rows[-1] = {c: rows[-1][c] for c in ("stage", "pass", *DIFFUSION_COLUMNS[1:])}
    return rows


def diagnosis_title(stage: str, d: dict[str, Any]) -> str:
    """"Why X is not faster than P", or "Why X gains only 1.10× over P" for a stage that is faster, but by less than
    it should be (an INT8 stage on a CPU without int8 dot products)."""
    sp = d.get("facts", {}).get("speedup") or {}
    parent = d.get("parent")
    if sp.get("lo", 0) > 1:
        return f"Why {stage} gains only {sp['ratio']:.2f}× over {parent}"
    return f"Why {stage} is not faster than {parent}"


def diagnosed(ledger: Ledger) -> list[tuple[str, dict[str, Any]]]:
    """(name, diagnosis) of every diagnosed stage, then of every diagnosed search trial that is not a stage
    ("trial N (family)": see Pipeline._diagnose_trials)."""
    out = [(s.name, s.notes["diagnosis"]) for s in ledger.stages if s.notes.get("diagnosis")]
    out += [(d.get("stage") or f"trial {t.get('number')}", d) for t in (ledger.search or {}).get("trials", [])
            if (d := t.get("diagnosis"))]
    return out


def choice_notes(ledger: Ledger) -> list[str]:
    """Why a faster stage was not chosen (it did not beat its parent beyond the measurement's spread) and why a
    stage or a search trial is not faster than its parent (its diagnosis), one line each."""
    notes = [f"{s.name}: {w}" for s in ledger.stages for w in s.warnings if w.startswith("not chosen:")]
    for name, d in diagnosed(ledger):
        notes.append(f"{diagnosis_title(name, d)}: {d.get('summary', '')}")
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

    caption = ("\n".join(diffusion_notes(ledger)) if has_diffusion(ledger) else
               "latency in ms, size and peak RSS in MB, cosine to the baseline" if not has_llm(ledger) else
               "latency: decode ms per generated token; size and peak RSS in MB; top-1 agreement and KL to the "
               "baseline's next-token distributions")
    t = Table(title=title or "edgeopt stages", title_justify="left", pad_edge=False, padding=(0, 0),
              box=box.SIMPLE_HEAD, show_edge=False, caption=caption, caption_justify="left")
    shown = list(stage_columns(ledger))
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


# ---------------------------------------------------------------------------------------- LLM runs

LLM_COLUMNS = ("stage", "runtime", "quantization", "TTFT ms", "prefill tok/s", "decode tok/s", "× decode",
               "% bw limit", "peak MB", "size MB", "top-1 agr.", "KL", "ppl", "gate", "answer")
ANSWER_WIDTH = 28  # characters of the probe answer a table shows

_QUANT = {"none": "fp32", "dynamic_int8": "int8 dyn", "weight_only_int8": "int8 w-only", "fp16": "fp16"}


def quantization_label(variant: str | None) -> str:
    """A short name of an LLM quantization variant: fp32, int8 dyn, int8 w-only, fp16, int4 dyn b32, ..."""
    if not variant:
        return "fp32"
    if variant in _QUANT:
        return _QUANT[variant]
    if variant.startswith("dynamic_int4_block"):
        return "int4 dyn b" + variant.rsplit("block", 1)[1]
    return variant


def llm_quantization(stage: Any) -> str:
    """What a stage's weights are: "fp32 (PyTorch)" for the baseline, else its variant (config `quantize` or
    `variant`) and, when it differs, the embedding's (" + emb int8 dyn")."""
    if stage.pass_ is None:
        return "fp32 (PyTorch)"
    cfg = stage.config or {}
    text = quantization_label(cfg.get("quantize") or cfg.get("variant"))
    emb = cfg.get("embedding")
    if emb and emb != "same":
        text += " + emb " + ("fp32" if emb == "none" else quantization_label(emb))
    return text


def kl_text(v: float | None) -> str:
    """A KL divergence: 4 decimals, or 2 significant digits below 0.001 (so 3e-15 does not read as 0.0000)."""
    if v is None:
        return "—"
    return "0" if v == 0 else format(v, ".4f") if abs(v) >= 1e-3 else format(v, ".1e")


def short_answer(answer: str | None, width: int = ANSWER_WIDTH) -> str:
    """The probe answer on one line, quoted, cut to `width` characters ("—" when there is none)."""
    if answer is None:
        return "—"
    text = " ".join(str(answer).split())
    return "“" + (text if len(text) <= width else text[:width - 1] + "…") + "”"


def _llm_gate(s: Any) -> str:
    if s.status == "failed":
        return "failed: " + (s.error or "")
    if s.status == "skipped":
        return "skipped: " + (s.error or "")
    if s.notes.get("not_measured"):
        return f"not measured ({s.notes['not_measured']})"
    return "—" if s.gate is None else ("pass" if s.gate.passed else f"FAIL ({s.gate.why})")


def _llm_runtime(s: Any) -> str:
    """The short runtime name (litert, torch); the full label (LiteRT CompiledModel · XNNPACK · …) is in the notes."""
    if s.latency_ms is not None:
        return RUNTIME_SHORT.get(s.latency_ms.runtime, s.latency_ms.runtime)
    return str((s.llm or {}).get("runtime") or KIND_RUNTIME.get((s.artifact or {}).get("kind", ""), "—"))


def llm_prompt_tokens(ledger: Ledger) -> int | None:
    """The prompt length TTFT and prefill were timed at (the first stage that records it)."""
    return next((int(s.llm["prompt_tokens"]) for s in ledger.stages if s.llm and s.llm.get("prompt_tokens")), None)


def llm_headers(ledger: Ledger) -> dict[str, str]:
    """Column key -> header text: TTFT names the prompt length, e.g. "TTFT ms (prompt 128)"."""
    n = llm_prompt_tokens(ledger)
    heads = {c: c for c in LLM_COLUMNS}
    heads["TTFT ms"] = f"TTFT ms (prompt {n})" if n else "TTFT ms"
    heads["× decode"] = "× vs baseline decode"
    heads["% bw limit"] = "% of bandwidth limit"
    return heads


def llm_rows(ledger: Ledger) -> list[dict[str, Any]]:
    """One dict per stage of an LLM run (keys LLM_COLUMNS, texts): TTFT, prefill and decode tokens/s, decode
    rate against the baseline and as a share of the memory-bandwidth limit, memory, size, fidelity, the probe
    answer and the gate. Empty when no stage has LLM figures."""
    if not has_llm(ledger):
        return []
    first = ledger.stages[0].llm or {}
    base = first.get("decode_tok_s")
    rows = []
    for s in ledger.stages:
        d = s.llm or {}
        dec = d.get("decode_tok_s")
        gate = _llm_gate(s)
        size = (s.artifact or {}).get("size_bytes")
        rows.append({
            "stage": s.name + (" ★" if ledger.best == s.name else ""),
            "runtime": _llm_runtime(s),
            "quantization": llm_quantization(s),
            "TTFT ms": _fmt(d.get("ttft_ms"), ".1f"),
            "prefill tok/s": _fmt(d.get("prefill_tok_s"), ".0f"),
            "decode tok/s": _fmt(dec, ".1f"),
            "× decode": _fmt(dec / base if dec and base else None, ".2f") + ("×" if dec and base else ""),
            "% bw limit": _fmt(d.get("bandwidth_pct"), ".0f") + ("%" if d.get("bandwidth_pct") is not None else ""),
            "peak MB": _fmt(s.peak_rss_mb, ".0f"),
            "size MB": _fmt(size / 1e6 if size else None, ".1f"),
            "top-1 agr.": _fmt(d.get("top1_agreement", (s.fidelity or {}).get("top1_agreement")), ".4f"),
            "KL": kl_text(d.get("kl", (s.fidelity or {}).get("kl"))),
            "ppl": _fmt(d.get("ppl", (s.fidelity or {}).get("ppl")), ".2f"),
            "answer": short_answer(d.get("answer")),
            "gate": gate if len(gate) < 60 else gate[:57] + "…",
        })
    return rows


def llm_notes(ledger: Ledger) -> list[str]:
    """How the LLM figures were measured, one sentence each: timing, the bandwidth limit, fidelity, the probe."""
    d = next((s.llm for s in ledger.stages if s.llm), None) or {}
    bw = ledger.environment.get("copy_bandwidth_gbs")
    n = llm_prompt_tokens(ledger)
    threads = next((s.latency_ms.threads for s in ledger.stages if s.llm and s.latency_ms), None)
    notes = [f"Timing: TTFT = prefill of a {n or '?'}-token prompt to the first token; decode tok/s from the median "
             f"per-token time over {d.get('decode_tokens', '?')} greedy tokens ({d.get('repeats', '?')} repeats), "
             f"{d.get('timed_in', 'all stages interleaved')}, {threads or '?'} threads; × vs baseline = decode tok/s over the "
             f"{ledger.stages[0].name} stage's."]
    notes.append(f"Bandwidth limit: 2 × copy bandwidth {bw:.1f} GB/s (a copy reads and writes each byte) ÷ weight "
                     "bytes read per token; % = decode tok/s as a "
                 f"share of it." if isinstance(bw, (int, float)) else
                 "Bandwidth limit: copy bandwidth not recorded.")
    over = [s.name for s in ledger.stages if s.llm and (s.llm.get("bandwidth_pct") or 0) > 100]
    if over:
        notes.append(f"Above 100% ({', '.join(over)}): the limit is an estimate from a copy, which writes as much as "
                     f"it reads; a decode step mostly reads, and streaming reads can go faster (or the weights fit in "
                     f"the CPU caches).")
    notes.append(f"Fidelity: next-token top-1 agreement, KL and perplexity on {d.get('sequences', '?')} held-out "
                 f"sequences × {d.get('seq_len', '?')} tokens, teacher-forced, against the {ledger.stages[0].name} "
                 f"stage.")
    labels = {_llm_runtime(s): str(s.llm["runtime"]) for s in ledger.stages if s.llm and s.llm.get("runtime")}
    labels = {k: v for k, v in labels.items() if v != k}
    if labels:
        notes.append("Runtimes: " + "; ".join(f"{k} = {v}" for k, v in labels.items()) + ".")
    prompt = next((s.llm.get("prompt") for s in ledger.stages if s.llm and s.llm.get("prompt")), None)
    if prompt:
        notes.append(f"Answer: each stage's greedy continuation of “{prompt}”.")
    return notes


def llm_table(ledger: Ledger, title: str | None = None):
    """A rich Table of an LLM run's stages (tokens/s, bandwidth share, fidelity, probe answer), with how it was
    measured as its caption; None when no stage has LLM figures."""
    rows = llm_rows(ledger)
    if not rows:
        return None
    from rich.table import Table

    from rich import box

    n = llm_prompt_tokens(ledger)
    heads = {**{c: c.replace(" ", "\n", 1) for c in LLM_COLUMNS}, "quantization": "quantization",
             "TTFT ms": f"TTFT ms\n(prompt {n})" if n else "TTFT\nms", "× decode": "× base\ndecode",
             "% bw limit": "% bw\nlimit"}
    t = Table(title=title or "LLM stages", title_justify="left", pad_edge=False, padding=(0, 0), box=box.SIMPLE_HEAD,
              show_edge=False, caption="\n".join(llm_notes(ledger)), caption_justify="left")
    for c in LLM_COLUMNS:
        left = c in ("stage", "runtime", "quantization", "answer", "gate")
        t.add_column(heads[c], justify="left" if left else "right", no_wrap=c not in ("answer", "quantization"),
                     min_width=16 if c == "answer" else None)
    for row in rows:
        style = ("red" if row["gate"].startswith(("FAIL", "failed")) else "bold green" if "★" in row["stage"] else
                 "dim" if row["gate"].startswith(("not measured", "skipped")) else None)
        cells = [row[c] if c != "gate" else row[c].split(" (")[0].split(":")[0] for c in LLM_COLUMNS]  # pass/FAIL
        t.add_row(*cells, style=style)
    return t


def llm_markdown(ledger: Ledger, heading: str = "##") -> list[str]:
    """The LLM section of report.md as lines: a heading, the copy bandwidth and prompt length, the table and how it
    was measured. Empty when no stage has LLM figures."""
    rows = llm_rows(ledger)
    if not rows:
        return []
    bw = ledger.environment.get("copy_bandwidth_gbs")
    n = llm_prompt_tokens(ledger)
    heads = llm_headers(ledger)
    lines = [f"{heading} LLM", "",
             f"Copy bandwidth {bw:.1f} GB/s" if isinstance(bw, (int, float)) else "Copy bandwidth not recorded",
             ]
    lines[-1] += f"; prompt {n} tokens." if n else "; prompt length not recorded."
    lines += ["", "| " + " | ".join(heads[c] for c in LLM_COLUMNS) + " |",
              "|" + "|".join("---" for _ in LLM_COLUMNS) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]).replace("|", "/") for c in LLM_COLUMNS) + " |")
    lines += [""] + [f"- {note}" for note in llm_notes(ledger)]
    return lines


def to_markdown(ledger: Ledger) -> str:
    """The stage table and the environment as markdown (written as report.md)."""
    rows = stage_rows(ledger)
    cols = md_columns(ledger)
    lines = ["# edgeopt run", ""]
    if ledger.best:
        lines += [f"Best stage that passed its gate: **{ledger.best}**", ""]
        notes = choice_notes(ledger)
        lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(str(r[c]).replace("|", "/") for c in cols) + " |")
    if has_llm(ledger):
        lines += ["", *llm_markdown(ledger, "##")]
    if has_diffusion(ledger):
        lines += ["", *diffusion_markdown(ledger, "##", image_links=True)]
    for name, d in diagnosed(ledger):
        lines += ["", f"### {diagnosis_title(name, d)}", "", d.get("summary", "")]
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
    timed_in = next((s.llm.get("timed_in") for s in ledger.stages if s.llm), None) or "all stages interleaved"
    how = (["Latency, memory and fidelity of the diffusion stages: see the Diffusion section."]
           if has_diffusion(ledger) else
           [f"Latency: decode ms per generated token, {m.get('threads')} intra-op threads, timed in {timed_in} "
            f"(see the LLM section)."] if has_llm(ledger) else
           [f"Latency: batch {m.get('batch')}, sequence {m.get('seq_len')}, {m.get('threads')} intra-op threads, "
            f"{m.get('runs')} timed runs after {m.get('warmup')} warm-up, all stages interleaved in one process.",
            f"Fidelity: outputs against the baseline on {m.get('fidelity_samples')} held-out inputs "
            f"(cosine per sample)."])
    lines += ["", *how,
              *[f"Data ({role}): {what}" for role, what in  # a diffusion run draws its images from seeds
                ((ledger.stages[0].notes.get("data") or {}) if ledger.stages and not has_diffusion(ledger)
                 else {}).items()],
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


# ---------------------------------------------------------------------------------------- diffusion runs

# Table 1 of "Speed Is All You Need": per stage, the whole run and its components, memory, image fidelity
DIFFUSION_COLUMNS = ("stage", "whole run ms", "UNet step ms", "text enc. ms", "VAE dec. ms", "tensor peak MB",
                     "weights MB", "PSNR dB", "SSIM", "cond. acc.", "FD", "gate")
# the best stage is chosen among file-backed models; a diffusion run's stages are PyTorch modules


def has_diffusion(ledger: Ledger) -> bool:
    """Whether any stage of the run carries diffusion figures (`stage.diffusion`)."""
    return any(s.diffusion for s in ledger.stages)


def _mb(v: float | None) -> str:
    return _fmt(v, ".2f" if v is not None and v < 10 else ".1f" if v is not None and v < 1000 else ".0f")


def diffusion_cells(stage: Any) -> dict[str, str]:
    """A stage's Table 1 cells (DIFFUSION_COLUMNS but stage and gate): "—" for what its model has not (digits: no
    text encoder or VAE; Stable Diffusion: no conditional accuracy or FD)."""
    d = stage.diffusion or {}
    return {"whole run ms": _fmt(d.get("whole_run_ms"), ".1f"), "UNet step ms": _fmt(d.get("unet_step_ms"), ".2f"),
            "text enc. ms": _fmt(d.get("text_encoder_ms"), ".1f"), "VAE dec. ms": _fmt(d.get("vae_decode_ms"), ".1f"),
            "tensor peak MB": _mb(d.get("tensor_peak_mb")), "weights MB": _mb(d.get("weights_mb")),
            "PSNR dB": _fmt(d.get("psnr"), ".1f"), "SSIM": _fmt(d.get("ssim"), ".4f"),
            "cond. acc.": _fmt(d.get("accuracy"), ".3f"), "FD": _fmt(d.get("fd"), ".2f")}


def diffusion_changes(stage: Any) -> str | None:
    """What a kernel pass changed in a diffusion stage, from its notes (None for other stages)."""
    n = stage.notes
    if "fused_norm" in n:
        fn = n["fused_norm"]
        return f"{len(fn.get('fused', {}))} norm+activation pairs fused ({fn.get('backend', '?')} kernel)"
    if "attention" in n:
        layers = n["attention"].get("layers", {})
        if not layers:
            return "no attention layer in this model: the same computation as the stage before"
        impls = sorted({str(r.get("impl")) for r in layers.values()})
        return f"{len(layers)} attention layers on {', '.join(impls)}"
    if "winograd" in n:
        w = n["winograd"]
        tiles = sorted({f"F{t}" for t in w.get("replaced", {}).values()})
        return (f"{len(w.get('replaced', {}))} 3×3 convolutions on Winograd {', '.join(tiles) or '—'}, "
                f"{len(w.get('skipped', {}))} left direct")
    return None


def diffusion_final(ledger: Ledger) -> Any:
    """The last stage with diffusion images on the path from the baseline (the fully optimized one)."""
    return next((s for s in reversed(lineage(ledger)) if (s.diffusion or {}).get("images")), None)


def diffusion_notes(ledger: Ledger) -> list[str]:
    """How Table 1 was measured, one sentence each, and what each kernel stage changed."""
    e = ledger.environment.get("diffusion") or {}
    what = (f"{e.get('samples_per_class', '?')} per class" if e.get("model") == "digits" else
            f"one per prompt ({', '.join(map(repr, e.get('prompts', []))) or '?'})")
    notes = [f"Latency: the whole run from noise to image ({e.get('timed_run', '?')}; {e.get('steps', '?')} "
             f"{e.get('scheduler', '?')} steps), the median UNet call within it, and the text encoder and VAE decode "
             f"(Stable Diffusion); medians over {e.get('rounds', '?')} rounds, {e.get('timed', 'interleaved')}, "
             f"{e.get('threads', '?')} intra-op threads, PyTorch.",
             "Memory: tensor peak = the largest peak of the tensors one call (UNet step, text encoder, VAE decode) "
             "allocates and does not return (inputs and weights excluded; workspace inside a library kernel is not "
             "seen); weights = parameter and buffer bytes (Winograd keeps transformed weights).",
             f"Fidelity: PSNR (capped at 100 dB: identical) and SSIM of each stage's {e.get('images', '?')} "
             f"image{'' if e.get('images') == 1 else 's'} ({what}) against the baseline's from the same seed "
             f"{e.get('seed', '?')}."]
    if e.get("model") == "digits":
        notes.append("Digits: cond. acc. = share of the images zoo:digits-cnn classifies as the class they were drawn "
                     "for; FD = Fréchet distance of that classifier's features to the digits test split.")
    notes += [f"{s.name}: {c}" for s in ledger.stages if (c := diffusion_changes(s))]
    return notes


def diffusion_markdown(ledger: Ledger, heading: str = "##", image_links: bool = True) -> list[str]:
    """The diffusion section of a markdown report: how Table 1 was measured and the baseline's and the final
    stage's images side by side (`image_links`: markdown links relative to the run folder, else their paths).
    Empty when no stage has diffusion figures."""
    if not has_diffusion(ledger):
        return []
    lines = [f"{heading} Diffusion: how Table 1 was measured", "", *[f"- {n}" for n in diffusion_notes(ledger)], ""]
    base, final = ledger.stages[0], diffusion_final(ledger)
    shown = [s for s in (base, final) if s is not None and (s.diffusion or {}).get("grid")]
    shown = list({s.name: s for s in shown}.values())
    if shown and image_links:
        lines += ["| " + " | ".join(s.name for s in shown) + " |", "|" + "|".join("---" for _ in shown) + "|",
                  "| " + " | ".join(f"![{s.name}]({s.diffusion['grid']})" for s in shown) + " |", ""]
    elif shown:
        lines += ["Images (in the run folder): " + "; ".join(f"{s.name} {s.diffusion['grid']}" for s in shown), ""]
    return lines
