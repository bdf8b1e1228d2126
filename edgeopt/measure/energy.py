"""Energy per inference: measured from RAPL package counters where readable, else estimated, always labelled."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

POWERCAP_ROOT = Path("/sys/class/powercap")
RAPL_METHOD = "rapl package counter (whole package, includes other load)"


def rapl_packages(root: str | Path = POWERCAP_ROOT) -> list[Path]:
    """The readable RAPL package domains under `root` (intel-rapl:N, not their intel-rapl:N:M subdomains).

    Since Linux 5.10 energy_uj is readable by root only, so on most machines this is empty.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for d in sorted(root.glob("intel-rapl:*")):
        if d.name.count(":") != 1:
            continue  # a subdomain (core, uncore, dram) is already counted in its package
        try:
            int((d / "energy_uj").read_text().strip())
        except (OSError, ValueError):
            continue
        found.append(d)
    return found


def _read_uj(domain: Path) -> int:
    return int((domain / "energy_uj").read_text().strip())


def _max_range_uj(domain: Path) -> int | None:
    try:
        return int((domain / "max_energy_range_uj").read_text().strip())
    except (OSError, ValueError):
        return None


def counter_delta(before: int, after: int, max_range: int | None) -> int:
    """Energy between two readings of a counter that wraps to 0 after `max_range` (one wrap at most)."""
    if after >= before:
        return after - before
    if not max_range:
        raise ValueError("energy counter went backwards and max_energy_range_uj is unknown")
    return after + max_range - before


def measure_rapl(run_fn: Callable[[], Any], n: int, domains: list[Path]) -> float:
    """Package energy per call of `run_fn` in mJ over `n` calls, summed over the RAPL `domains`."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    ranges = [_max_range_uj(d) for d in domains]
    before = [_read_uj(d) for d in domains]
    for _ in range(n):
        run_fn()
    after = [_read_uj(d) for d in domains]
    total_uj = sum(counter_delta(b, a, r) for b, a, r in zip(before, after, ranges))
    return total_uj / n / 1000.0


def estimate_mj(latency_ms: float, target: Any, threads: int | None = None) -> tuple[float, str]:
    """(mJ, label): latency x the target's stated power x the share of its cores the run used.

    W x ms = mJ. On a CPU the share is threads/cores (one busy core of eight draws about an eighth of the
    package figure); a GPU or NPU is counted whole.
    """
    if latency_ms < 0:
        raise ValueError(f"latency_ms must be >= 0, got {latency_ms}")
    power = float(target.power_w)
    cores = max(int(getattr(target, "cores", 1) or 1), 1)
    device = getattr(target, "device", "cpu")
    if device == "cpu":
        used = min(max(int(threads or getattr(target, "threads", cores) or cores), 1), cores)
        share, share_txt = used / cores, f" x {used}/{cores} cores"
    else:
        share, share_txt = 1.0, ""
    value = latency_ms * power * share
    label = f"estimate: measured latency x stated power {power:g} W{share_txt} (target {target.name})"
    return value, label


def energy_per_inference(latency_ms: float, target: Any, run_fn: Callable[[], Any] | None = None, n: int = 50, *,
                         threads: int | None = None, rapl_root: str | Path = POWERCAP_ROOT) -> dict[str, Any]:
    """Energy of one inference in mJ, as {"value": mJ, "method": how it was obtained}.

    With `run_fn` (one inference) and readable RAPL counters under `rapl_root`, the package energy over
    `n` calls is measured (it includes anything else running on the package). Otherwise the figure is
    an estimate from `latency_ms`, the target's stated `power_w` and the share of cores `threads` used
    (default: the target's thread count).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    domains = rapl_packages(rapl_root) if run_fn is not None else []
    if domains:  # the counters tick about every millisecond: a larger n gives a finer figure
        return {"value": float(measure_rapl(run_fn, n, domains)), "method": RAPL_METHOD}
    value, label = estimate_mj(latency_ms, target, threads)
    return {"value": float(value), "method": label}
