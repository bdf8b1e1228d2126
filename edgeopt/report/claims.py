"""Claims a benchmark prints: pass/fail checks and plain statements, as a table, markdown, JSON and an exit code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

STATEMENT = "statement"  # what a claim that is not pass/fail shows in the "holds" column


@dataclass(frozen=True)
class Claim:
    """One line of a benchmark's check table: what is claimed, whether it holds, and the numbers behind it.

    `holds` is True or False for a check, None for a statement (a measured fact that is not pass/fail).
    """

    claim: str
    holds: bool | None
    numbers: str = ""

    def __post_init__(self) -> None:
        if self.holds is not None:  # numpy's bool_ from a comparison becomes a plain bool
            object.__setattr__(self, "holds", bool(self.holds))

    @property
    def verdict(self) -> str:
        return STATEMENT if self.holds is None else ("yes" if self.holds else "NO")


def statement(claim: str, numbers: str = "") -> Claim:
    """A measured fact printed beside the checks, never failing."""
    return Claim(claim, None, numbers)


def failed(claims: Iterable[Claim]) -> list[Claim]:
    """The checks that do not hold (statements never fail)."""
    return [c for c in claims if c.holds is False]


def exit_code(claims: Iterable[Claim]) -> int:
    """0 when every check holds, 1 when one does not: what a benchmark script returns."""
    return 1 if failed(claims) else 0


def table(claims: Iterable[Claim], title: str = "checks") -> Any:
    """A rich table: claim, holds (yes / NO / statement), numbers."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    for col in ("claim", "holds", "numbers"):
        t.add_column(col, overflow="fold")
    for c in claims:
        style = {"yes": "green", "NO": "bold red"}.get(c.verdict, "dim")
        t.add_row(c.claim, f"[{style}]{c.verdict}[/{style}]", c.numbers)
    return t


def summary(claims: Iterable[Claim]) -> str:
    """One line: how many checks hold, how many statements, and which checks do not hold."""
    claims = list(claims)
    checks = [c for c in claims if c.holds is not None]
    bad = failed(claims)
    line = f"{len(checks) - len(bad)} of {len(checks)} checks hold ({len(claims) - len(checks)} statements)"
    return line + ("; NOT holding: " + "; ".join(c.claim for c in bad) if bad else "")


def markdown(claims: Iterable[Claim]) -> str:
    """The claims as a markdown table."""
    lines = ["| claim | holds | numbers |", "|---|---|---|"]
    lines += [f"| {c.claim} | {c.verdict} | {c.numbers} |" for c in claims]
    return "\n".join(lines)


def to_json(claims: Iterable[Claim]) -> list[dict[str, Any]]:
    """JSON-ready records: {claim, holds (true / false / null for a statement), numbers}."""
    return [{"claim": c.claim, "holds": c.holds, "numbers": c.numbers} for c in claims]


def run_parts(parts: Sequence[tuple[str, Callable[..., Any]]], wanted: Sequence[str], *args: Any
              ) -> tuple[dict[str, Any], dict[str, float]]:
    """Run each benchmark part `fn(*args)` named in `wanted`, in `parts` order; returns (results, seconds) per part."""
    import time

    results: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    for name, fn in parts:
        if name in wanted:
            t0 = time.perf_counter()
            results[name] = fn(*args)
            seconds[name] = time.perf_counter() - t0
    return results, seconds


def finish(claims: list[Claim], console: Any, *, cpu: str, args: Any, results: dict[str, Any],
           seconds: dict[str, float], load_before: float) -> int:
    """A benchmark's ending: the checks table (titled with the CPU), seconds per part and the load average before
    and after, the JSON record when `args.json` names a file, the summary line; returns the exit status."""
    import json
    import os

    console.print(table(claims, title=f"checks on {cpu}"))
    console.print("seconds per part: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items())
                  + f"; 1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after")
    if getattr(args, "json", None):
        args.json.write_text(json.dumps({"cpu": cpu, "args": vars(args) | {"json": str(args.json)},
                                         "results": results, "seconds": seconds, "checks": to_json(claims),
                                         "markdown": markdown(claims)}, indent=1, default=str))
    console.print(summary(claims))
    return exit_code(claims)


__all__ = ["Claim", "statement", "failed", "exit_code", "table", "summary", "markdown", "to_json", "run_parts", "finish"]
