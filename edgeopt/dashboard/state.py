"""The dashboard's logic apart from Streamlit: config, access token, the runs it shows, safe paths, comparisons.

Every file name that reaches the dashboard (a run to open, a model or recipe file, a stage's model) goes
through `safe_path`, which resolves it (symlinks and `..` included) and refuses anything outside the
allowed folders: the run directories it was started on, the folders named with --root, and its own
work folder.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from edgeopt.errors import InputError
from edgeopt.ledger import Ledger
from edgeopt.report.html import load_run
from edgeopt.report.table import kl_text

ENV_RUNS = "EDGEOPT_DASHBOARD_RUNS"      # os.pathsep-separated run directories (when no --run is given)
ENV_ROOTS = "EDGEOPT_DASHBOARD_ROOTS"    # os.pathsep-separated extra folders model/recipe files may come from
ENV_WORKDIR = "EDGEOPT_DASHBOARD_WORKDIR"
ENV_TOKEN = "EDGEOPT_DASHBOARD_TOKEN"    # the access token the page asks for (never on the command line)
MIN_TOKEN_LEN = 12
DEFAULT_WORKDIR = Path("runs") / "dashboard"
NAMED_MODELS = ("zoo:", "demo:")  # sources that name no file


@dataclass(frozen=True)
class DashboardConfig:
    """What the dashboard was started on: run directories, the folders files may come from, its work folder."""

    run_dirs: tuple[Path, ...] = ()
    roots: tuple[Path, ...] = ()
    workdir: Path = DEFAULT_WORKDIR
    token: str | None = field(default=None, repr=False)  # when set, the page shows nothing until it is given

    @property
    def allowed(self) -> tuple[Path, ...]:
        """Every folder a file parameter may point into (resolved)."""
        return tuple(dict.fromkeys(p.resolve() for p in (*self.run_dirs, *self.roots, self.workdir)))


def parse_args(argv: Sequence[str]) -> DashboardConfig:
    """The config from the app's own arguments (`streamlit run app.py -- --run DIR --root DIR --workdir DIR`),
    falling back to the EDGEOPT_DASHBOARD_* environment variables. Unknown arguments are ignored. The access
    token comes only from the environment (EDGEOPT_DASHBOARD_TOKEN), so it never shows in a process list."""
    ap = argparse.ArgumentParser(prog="edgeopt-dashboard", add_help=False, allow_abbrev=False)
    ap.add_argument("--run", action="append", default=[])
    ap.add_argument("--root", action="append", default=[])
    ap.add_argument("--workdir", default=None)
    ns, _ = ap.parse_known_args(list(argv))
    env_list = lambda k: [p for p in os.environ.get(k, "").split(os.pathsep) if p]  # noqa: E731
    runs = ns.run or env_list(ENV_RUNS)
    roots = ns.root or env_list(ENV_ROOTS)
    workdir = ns.workdir or os.environ.get(ENV_WORKDIR) or DEFAULT_WORKDIR
    return DashboardConfig(tuple(Path(p).resolve() for p in runs), tuple(Path(p).resolve() for p in roots),
                           Path(workdir).resolve(), os.environ.get(ENV_TOKEN) or None)


# ---------------------------------------------------------------------------------------- access

def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach: localhost, 127.0.0.0/8, ::1."""
    import ipaddress

    h = str(host).strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def access_token(host: str, token: str | None = None) -> str | None:
    """The token the page will ask for: `token`, else $EDGEOPT_DASHBOARD_TOKEN, else (for a host other
    machines can reach) a new random one; None on loopback when neither is given."""
    import secrets

    tok = (token or os.environ.get(ENV_TOKEN) or "").strip()
    if not tok:
        return None if is_loopback(host) else secrets.token_urlsafe(24)
    if len(tok) < MIN_TOKEN_LEN or not tok.isprintable() or any(c.isspace() for c in tok):
        raise InputError(f"access token: at least {MIN_TOKEN_LEN} printable characters without spaces "
                         f"(or give none and one is generated)")
    return tok


def token_matches(given: str | None, token: str | None) -> bool:
    """Whether `given` opens a page protected by `token` (always, when there is no token); constant time."""
    import hmac

    if not token:
        return True
    return bool(given) and hmac.compare_digest(str(given).encode(), token.encode())


def safe_path(candidate: str | Path, allowed: Sequence[Path], what: str = "file") -> Path:
    """`candidate` resolved, when it lies inside one of `allowed`; otherwise a one-line InputError.

    Relative paths are taken against the first allowed folder, never the server's working directory.
    """
    text = str(candidate).strip()
    if not text:
        raise InputError(f"{what}: no path given")
    if "\x00" in text:
        raise InputError(f"{what}: invalid path")
    if not allowed:
        raise InputError(f"{what} {text!r}: no folder is open to the dashboard (start it on a run directory or --root)")
    p = Path(text).expanduser()
    if not p.is_absolute():
        p = Path(allowed[0]) / p
    resolved = p.resolve()
    if not any(resolved.is_relative_to(Path(a).resolve()) for a in allowed):
        raise InputError(f"{what} {text!r}: outside the folders open to the dashboard "
                         f"({', '.join(str(a) for a in allowed)})")
    return resolved


def safe_model_source(source: str, allowed: Sequence[Path]) -> str:
    """A model source for analysis or a recipe run: a zoo:/demo: name as is, a path only inside `allowed`."""
    s = source.strip()
    if s.startswith(NAMED_MODELS):
        return s
    p = safe_path(s, allowed, "model")
    if not p.exists():
        raise InputError(f"model {s!r}: no such file or folder")
    return str(p)


# ---------------------------------------------------------------------------------------- runs

@dataclass
class RunInfo:
    """One run the dashboard can show: its label, folder, and the ledger or why it could not be read."""

    label: str
    path: Path
    ledger: Ledger | None = None
    error: str | None = None
    mtime: float = 0.0


def _is_run(p: Path) -> bool:
    return (p / "ledger.json").is_file()


def discover_runs(dirs: Sequence[Path]) -> list[RunInfo]:
    """Runs in `dirs`: a folder with ledger.json is a run; any other folder contributes its subfolders that
    are runs (so `edgeopt dashboard runs/` lists every run under it). Unreadable ledgers are kept with
    their one-line error rather than hidden."""
    found: list[Path] = []
    for d in dirs:
        d = Path(d)
        if _is_run(d):
            found.append(d)
        elif d.is_dir():
            found += sorted(c for c in d.iterdir() if c.is_dir() and _is_run(c))
    out, seen = [], {}
    for p in dict.fromkeys(x.resolve() for x in found):
        label = p.name
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label = f"{label} ({p.parent.name})"
        info = RunInfo(label, p, mtime=(p / "ledger.json").stat().st_mtime)
        try:
            info.ledger = load_run(p)
        except InputError as e:
            info.error = str(e)
        out.append(info)
    return out


def stage_options(runs: Sequence[RunInfo]) -> list[str]:
    """"run: stage" keys of every stage of every readable run."""
    return [f"{r.label}: {s.name}" for r in runs if r.ledger for s in r.ledger.stages]


def split_key(key: str) -> tuple[str, str]:
    run, _, stage = key.partition(": ")
    return run, stage


def _fmt(v: float | None, spec: str, suffix: str = "") -> str:
    return "—" if v is None else format(v, spec) + suffix


COMPARE_METRICS = ("pass", "status", "runtime", "threads", "latency p50 (ms)", "latency p90 (ms)", "std (ms)",
                   "throughput (/s)", "speedup vs its baseline", "vs first column", "size (MB)", "peak memory (MB)",
                   "mean cosine", "min cosine", "gate", "energy (mJ)")


# rows added when a chosen stage is an LLM stage (stage.llm); its latency rows are then per generated token
COMPARE_LLM_METRICS = ("TTFT (ms)", "prefill tok/s", "decode tok/s", "% of bandwidth limit", "top-1 agreement",
                       "KL", "perplexity", "answer")


def _llm_cells(st: Any) -> dict[str, str]:
    d = st.llm or {}
    return {
        "TTFT (ms)": _fmt(d.get("ttft_ms"), ".1f")
        + (f" (prompt {d['prompt_tokens']})" if d.get("prompt_tokens") else ""),
        "prefill tok/s": _fmt(d.get("prefill_tok_s"), ".0f"),
        "decode tok/s": _fmt(d.get("decode_tok_s"), ".1f"),
        "% of bandwidth limit": _fmt(d.get("bandwidth_pct"), ".0f", "%"),
        "top-1 agreement": _fmt(d.get("top1_agreement"), ".4f"),
        "KL": kl_text(d.get("kl")),
        "perplexity": _fmt(d.get("ppl"), ".2f"),
        "answer": " ".join(str(d["answer"]).split()) if d.get("answer") is not None else "—",
    }


def compare_metrics(table: dict[str, dict[str, str]]) -> tuple[str, ...]:
    """The rows of a compare_table: COMPARE_METRICS, plus COMPARE_LLM_METRICS when a chosen stage is an LLM's."""
    llm = any("decode tok/s" in col for col in table.values())
    return (*COMPARE_METRICS, *COMPARE_LLM_METRICS) if llm else COMPARE_METRICS


def compare_table(runs: Sequence[RunInfo], keys: Sequence[str]) -> dict[str, dict[str, str]]:
    """{"run: stage": {metric: text}} for the chosen stages, side by side (metrics in `compare_metrics(table)`).

    "vs first column" is the first chosen stage's p50 over this one's (above 1: faster than the first). When a
    chosen stage is an LLM stage, every column also has the COMPARE_LLM_METRICS ("—" where it has none).
    """
    by_label = {r.label: r for r in runs if r.ledger}
    cols: dict[str, dict[str, str]] = {}
    first_p50: float | None = None
    for i, key in enumerate(keys):
        run, stage = split_key(key)
        info = by_label.get(run)
        st = info.ledger.stage(stage) if info else None
        if st is None:
            continue
        led = info.ledger
        lat = st.latency_ms
        base = led.stages[0].latency_ms.p50 if led.stages[0].latency_ms else None
        p50 = lat.p50 if lat else None
        if i == 0:
            first_p50 = p50
        fid = st.fidelity or {}
        size = (st.artifact or {}).get("size_bytes")
        cols[key] = {
            "pass": st.pass_ or "— (baseline)",
            "status": st.status,
            "runtime": lat.runtime if lat else "—",
            "threads": str(lat.threads) if lat else "—",
            "latency p50 (ms)": _fmt(p50, ".3f"),
            "latency p90 (ms)": _fmt(lat.p90 if lat else None, ".3f"),
            "std (ms)": _fmt(lat.std if lat else None, ".3f"),
            "throughput (/s)": _fmt(1000.0 * (lat.batch or 1) / p50 if p50 else None, ".1f"),
            "speedup vs its baseline": _fmt(base / p50 if base and p50 else None, ".2f", "×"),
            "vs first column": _fmt(first_p50 / p50 if first_p50 and p50 else None, ".2f", "×"),
            "size (MB)": _fmt(size / 1e6 if size else None, ".2f"),
            "peak memory (MB)": _fmt(st.peak_rss_mb, ".0f"),
            "mean cosine": _fmt(fid.get("mean_cosine"), ".5f"),
            "min cosine": _fmt(fid.get("min_cosine"), ".5f"),
            "gate": "—" if st.gate is None else ("pass" if st.gate.passed else f"FAIL ({st.gate.why})"),
            "energy (mJ)": _fmt(st.energy_mj.value if st.energy_mj else None, ".2f"),
        }
        if st.llm:
            cols[key].update(_llm_cells(st))
    if any(st_cols.get("decode tok/s") for st_cols in cols.values()):
        for c in cols.values():
            for m in COMPARE_LLM_METRICS:
                c.setdefault(m, "—")
    return cols


def llm_runs(runs: Sequence[RunInfo]) -> list[RunInfo]:
    """The readable runs that measured LLM stages (a stage with `llm` figures)."""
    return [r for r in runs if r.ledger and any(s.llm for s in r.ledger.stages)]


def onnx_stages(info: RunInfo) -> list[str]:
    """Finished ONNX stages of a run (the ones a per-layer profile can read)."""
    if not info.ledger:
        return []
    return [s.name for s in info.ledger.stages if s.status == "done" and (s.artifact or {}).get("kind") == "onnx"]


@dataclass
class Session:
    """Per-browser-session state kept in st.session_state (plain data, so tests can build it without Streamlit)."""

    config: DashboardConfig
    extra_runs: list[Path] = field(default_factory=list)  # runs opened or produced from the page

    def runs(self) -> list[RunInfo]:
        return discover_runs([*self.config.run_dirs, *self.extra_runs])

    def open_run(self, path: str) -> Path:
        """Add a run directory typed into the page (it must lie in an allowed folder and hold a ledger)."""
        p = safe_path(path, self.config.allowed, "run directory")
        load_run(p)
        if p not in self.extra_runs:
            self.extra_runs.append(p)
        return p


def default_config() -> DashboardConfig:
    """The config for `edgeopt dashboard` without run directories: ./runs when it exists."""
    runs = Path("runs")
    return DashboardConfig((runs.resolve(),) if runs.is_dir() else (), (), DEFAULT_WORKDIR.resolve())


def as_config(run_dirs: Sequence[str | Path], roots: Sequence[str | Path] = (), workdir: str | Path | None = None,
              token: str | None = None) -> DashboardConfig:
    return DashboardConfig(tuple(Path(p).resolve() for p in run_dirs), tuple(Path(p).resolve() for p in roots),
                           Path(workdir or DEFAULT_WORKDIR).resolve(), token)


__all__ = ["DashboardConfig", "parse_args", "safe_path", "safe_model_source", "RunInfo", "discover_runs",
           "compare_table", "compare_metrics", "COMPARE_LLM_METRICS", "llm_runs", "stage_options", "Session",
           "as_config", "onnx_stages", "is_loopback", "access_token", "token_matches", "ENV_TOKEN"]
