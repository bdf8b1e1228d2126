"""Kernel benchmark reports as tables: rich for the terminal, markdown for READMEs (any `edgeopt.kernels/1` report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Group
from rich.table import Table

from edgeopt.analyze.render import human_bytes


@dataclass
class Tab:
    """One table as plain strings: what both `render` (rich) and `markdown` print."""

    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    caption: str = ""


def _ms(v: float | None) -> str:
    return "?" if v is None else (f"{v:.3g}" if v < 10 else f"{v:.1f}")


def _bytes(n: float | None) -> str:
    return "—" if n is None else human_bytes(n)


def _err(e: float | None) -> str:
    return "?" if e is None else f"{e:.1e}"


def _tabs_winograd(r: dict[str, Any]) -> list[Tab]:
    out = []
    for name, res in r["layers"].items():
        if not res.get("supported"):
            continue
        t = Tab(f"{name or 'model'}: input {'x'.join(map(str, res['input_shape']))}, choice {res['choice']}"
                + (f" ({res['speedup']:.2f}x vs direct)" if res.get("speedup") else ""),
                ["candidate", "multiplications", "FLOPs ratio", "latency ms", "extra memory", "rel. error vs fp64",
                 "verdict"])
        for k, c in res["candidates"].items():
            verdict = "chosen" if k == res["choice"] else ("ok" if c["accepted"] else "refused: over budget")
            t.rows.append([k, f"{c['multiplications']:,}", f"{c['flops_ratio']:.2f}x", _ms(c["latency_ms"]),
                           _bytes(c["extra_bytes"]["total"]), _err(c["rel_error"]), verdict])
        out.append(t)
    s = r["summary"]
    t = Tab(f"Winograd tuner: {r['description']}", ["layers", "count / reason"],
            caption=f"error budget {r['error_budget']:.0e} (norm-wise, fp32 vs fp64); {r['threads']} threads; "
                    f"median of {r['runs']} interleaved runs")
    t.rows += [["Conv2d layers", str(s["convs"])], ["eligible (3x3, stride 1, groups 1, dilation 1)", str(s["eligible"])],
               ["Winograd chosen", str(s["winograd"])], ["direct kept", str(s["direct"])]]
    for n, why in s["skipped"].items():
        t.rows.append([f"skipped {n}", why])
    return [t] + out


def _tabs_counts(r: dict[str, Any]) -> list[Tab]:
    t = Tab("Winograd F(m×m, 3×3): multiplications per m×m output tile and input channel (counted at run time)",
            ["m", "input tile α×α", "direct m²·9", "Winograd α²", "fewer (exact)", "m²·9/(m+2)²", "stated", "match"])
    for row in r["rows"]:
        t.rows.append([str(row["m"]), f"{row['alpha']}x{row['alpha']}", str(row["direct"]), str(row["winograd"]),
                       f"{row['ratio']} = {row['ratio_value']:.4g}x", row["theory"], f"{row['stated']}x",
                       "exact" if row["exact"] else "MISMATCH"])
    return [t]


def _tabs_winograd_errors(r: dict[str, Any]) -> list[Tab]:
    keys = list(r["rows"][0]["rel_error"]) if r["rows"] else []
    t = Tab("Relative error against float64 (fp32 input and weights, norm-wise)", ["layer"] + keys,
            caption=f"budget {r['error_budget']:.0e}: ✗ marks a tile the tuner refuses")
    for row in r["rows"]:
        t.rows.append([f"{row['c_in']}→{row['c_out']} @ {row['size']}x{row['size']}"]
                      + [_err(row["rel_error"][k]) + ("" if row["within_budget"][k] else " ✗") for k in keys])
    return [t]


def _tabs_conv_vs_torch(r: dict[str, Any]) -> list[Tab]:
    L = r["layer"]
    tabs = _tabs_winograd({"layers": {"tuner": r["tuner"]}, "summary": {"convs": 1, "eligible": 1,
                                                                       "winograd": int(r["choice"] != "direct"),
                                                                       "direct": int(r["choice"] == "direct"),
                                                                       "skipped": {}},
                           "description": f"Conv2d {L['c_in']}→{L['c_out']} at {L['size']}x{L['size']}, batch {L['batch']}",
                           "error_budget": r["tuner"]["error_budget"], "threads": r["threads"],
                           "runs": r["tuner"]["runs"]})[1:]
    v = r["vs_torch"]
    t = Tab(f"tuner's pick against torch.nn.functional.conv2d on the same input ({r['threads']} threads)",
            ["", "torch conv2d ms", f"{r['choice']} ms", "speedup (ratio of medians)",
             "p10 … p90 (paired bootstrap over rounds)"])
    if v is None:
        t.rows.append(["tuner kept direct convolution", "", "", "1.00x", ""])
    else:
        t.rows.append([f"{L['c_in']}→{L['c_out']} @ {L['size']}x{L['size']}", _ms(v["torch_ms"]),
                       _ms(v["winograd_ms"]), f"{v['ratio_p50']:.2f}x", f"{v['ratio_p10']:.2f}x … {v['ratio_p90']:.2f}x"])
        t.caption = f"{v['runs']} interleaved rounds after 2 warm-up rounds"
    return tabs + [t]


def _tabs_conv_grid(r: dict[str, Any]) -> list[Tab]:
    names = ["direct"] + [f"F{t}" for t in r["tiles"]]
    t = Tab(f"3x3 conv C→C, direct vs Winograd: median ms ({r['threads']} threads, batch {r['batch']}); "
            f"✗ = over the {r['error_budget']:.0e} error budget",
            ["C", "H=W"] + names + ["choice", "speedup", "max err (accepted)"])
    for row in r["rows"]:
        c = row["candidates"]
        worst = max((c[k]["rel_error"] for k in names if k in c and c[k]["accepted"]), default=None)
        t.rows.append([str(row["channels"]), str(row["size"])]
                      + [(_ms(c[k]["latency_ms"]) + ("" if c[k]["accepted"] else " ✗")) if k in c else "" for k in names]
                      + [row["choice"], f"{row['speedup']:.2f}x", _err(worst)])
    return [t]


def _tabs_attention(r: dict[str, Any]) -> list[Tab]:
    impls = r["impls"]
    lat = Tab(f"attention latency, median ms (batch {r['batch']}, {r['heads']} heads, fp32, {r['threads']} threads, "
              f"blocks q {r['blocks']['q_block']} / k {r['blocks']['k_block']})", ["tokens", "head dim"] + impls
              + ["fastest"])
    mem = Tab("peak intermediate memory: analytic (ATen-visible, measured)", ["tokens", "head dim"] + impls,
              caption="SDPA's kernel workspace is internal to it: measured shows only what it allocates through ATen")
    err = Tab("relative error against a float64 reference", ["tokens", "head dim"] + impls)
    for row in r["rows"]:
        key = [str(row["seq_len"]), str(row["head_dim"])]
        c = row["impls"]
        lat.rows.append(key + [_ms(c[i]["latency_ms"]) for i in impls] + [row["fastest"]])
        mem.rows.append(key + [f"{_bytes(c[i]['peak_intermediate_bytes']['analytic'])} "
                               f"({_bytes(c[i]['peak_intermediate_bytes']['measured'])})" for i in impls])
        err.rows.append(key + [_err(c[i]["rel_error"]) for i in impls])
    return [lat, mem, err]


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}%"


def _tabs_unet(r: dict[str, Any]) -> list[Tab]:
    cols = ["row", "ms / step (p10…p90)", "vs untouched", "vs row above", "peak tensors", "child peak RSS",
            "rel. error", "max abs", "what changed"]
    t = Tab(f"diffusers UNet2DConditionModel ({r['size']}: latent {'x'.join(map(str, r['latent']))}, "
            f"{r['text_tokens']} text tokens, {r['params'] / 1e6:.1f} M params, random weights), "
            f"{r['threads']} threads, {r['runs']} interleaved runs", cols,
            caption="peak tensors: " + r["memory"]["peak_tensor_bytes"] + "; child peak RSS: "
                    + r["memory"]["child_rss_mb"])
    for row in r["rows"]:
        lat = row["latency_ms"]
        rss = row.get("child_rss_mb")
        t.rows.append([row["label"], f"{_ms(lat['p50'])} ({_ms(lat['p10_p90'][0])}…{_ms(lat['p10_p90'][1])})",
                       _pct(row["change_vs_untouched"]), _pct(row["change_vs_previous"]),
                       _bytes(row["peak_tensor_bytes"]),
                       "—" if not rss else f"{rss['peak_mb']:.0f} MB (step +{rss['peak_mb'] - rss['built_mb']:.0f})",
                       _err(row["rel_error"]), f"{row['max_abs_error']:.1e}", row["changes"] or row["what"]])
    return [t]


TABLES: dict[str, Callable[[dict[str, Any]], list[Tab]]] = {
    "winograd": _tabs_winograd, "winograd_errors": _tabs_winograd_errors, "conv_grid": _tabs_conv_grid,
    "conv_vs_torch": _tabs_conv_vs_torch, "attention_grid": _tabs_attention, "unet_table": _tabs_unet,
    "winograd_counts": _tabs_counts,
}  # report kind -> its tables


def tables(report: dict[str, Any]) -> list[Tab]:
    """The report as plain-string tables (one or more per kind)."""
    kind = report.get("kind")
    if kind not in TABLES:
        raise ValueError(f"report kind {kind!r} has no tables; known: {', '.join(TABLES)}")
    return TABLES[kind](report)


def render(report: dict[str, Any]) -> Any:
    """Rich renderable (a Group of tables) of any kernel benchmark report."""
    out = []
    for tab in tables(report):
        t = Table(title=tab.title, title_justify="left", caption=tab.caption or None, caption_justify="left")
        for c in tab.columns:
            t.add_column(c, overflow="fold")
        for row in tab.rows:
            t.add_row(*row)
        out.append(t)
    return Group(*out)


def markdown(report: dict[str, Any]) -> str:
    """Markdown tables of any kernel benchmark report."""
    parts = []
    for tab in tables(report):
        lines = [f"**{tab.title}**", "", "| " + " | ".join(tab.columns) + " |",
                 "|" + "|".join("---" for _ in tab.columns) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in tab.rows]
        if tab.caption:
            lines += ["", f"_{tab.caption}_"]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"
