"""Energy per inference: the labelled estimate, and RAPL counters read from a fake sysfs folder."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edgeopt.measure.energy import RAPL_METHOD, counter_delta, energy_per_inference, rapl_packages
from edgeopt.target import get_target


def _cpu(cores: int, threads: int, power_w: float):
    return dataclasses.replace(get_target("cpu"), cores=cores, threads=threads, power_w=power_w)


def _fake_rapl(root: Path, name: str, values: list[int], max_range: int | None) -> Path:
    """A RAPL domain whose energy_uj reads `values` one after another (advanced by the run_fn below)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "energy_uj").write_text(f"{values[0]}\n")
    if max_range is not None:
        (d / "max_energy_range_uj").write_text(f"{max_range}\n")
    return d


def test_estimate_arithmetic_and_label():
    t = _cpu(cores=4, threads=2, power_w=40.0)
    r = energy_per_inference(10.0, t, threads=1)
    assert r["value"] == pytest.approx(10.0 * 40.0 * 1 / 4)  # ms x W x share = mJ
    assert r["method"].startswith("estimate: measured latency x stated power 40 W")
    assert "1/4 cores" in r["method"] and "(target cpu)" in r["method"]
    # without threads, the target's default thread count sets the share
    assert energy_per_inference(10.0, t)["value"] == pytest.approx(10.0 * 40.0 * 2 / 4)
    # more threads than cores count as all cores
    assert energy_per_inference(10.0, t, threads=16)["value"] == pytest.approx(400.0)


def test_estimate_for_accelerator_counts_device_whole():
    cuda = get_target("cuda")
    r = energy_per_inference(2.0, cuda, threads=1)
    assert r["value"] == pytest.approx(2.0 * cuda.power_w)
    assert "cores" not in r["method"] and "(target cuda)" in r["method"]


def test_no_rapl_falls_back_to_estimate(tmp_path):
    calls = []
    r = energy_per_inference(5.0, _cpu(2, 2, 20.0), run_fn=lambda: calls.append(1), n=3, rapl_root=tmp_path / "none")
    assert r["method"].startswith("estimate:") and r["value"] == pytest.approx(100.0)
    assert calls == []  # nothing to measure, so the model is not run


def test_unreadable_counter_is_ignored(tmp_path):
    d = tmp_path / "intel-rapl:0"
    d.mkdir()
    (d / "energy_uj").write_text("not a number")
    assert rapl_packages(tmp_path) == []


def test_rapl_measures_package_energy(tmp_path):
    pkg = _fake_rapl(tmp_path, "intel-rapl:0", [1_000_000], max_range=262_143_328_850)
    sub = _fake_rapl(tmp_path, "intel-rapl:0:0", [5], max_range=262_143_328_850)  # core subdomain: not summed
    reading = {"v": 1_000_000}

    def run():  # each inference costs 2000 uJ = 2 mJ on the package, 999 uJ on the subdomain
        reading["v"] += 2000
        (pkg / "energy_uj").write_text(str(reading["v"]))
        (sub / "energy_uj").write_text(str(999))

    assert rapl_packages(tmp_path) == [pkg]
    r = energy_per_inference(1.0, _cpu(2, 2, 20.0), run_fn=run, n=10, rapl_root=tmp_path)
    assert r == {"value": pytest.approx(2.0), "method": RAPL_METHOD}


def test_rapl_counter_wraparound_and_two_packages(tmp_path):
    max_range = 1_000_000
    p0 = _fake_rapl(tmp_path, "intel-rapl:0", [999_000], max_range=max_range)
    p1 = _fake_rapl(tmp_path, "intel-rapl:1", [10], max_range=max_range)
    state = {"calls": 0}

    def run():
        state["calls"] += 1
        if state["calls"] == 4:  # package 0 wraps past its range: 999000 -> 3000 is 4000 uJ
            (p0 / "energy_uj").write_text("3000")
            (p1 / "energy_uj").write_text("4010")  # package 1: 4000 uJ

    r = energy_per_inference(1.0, _cpu(2, 2, 20.0), run_fn=run, n=4, rapl_root=tmp_path)
    assert r["method"] == RAPL_METHOD
    assert r["value"] == pytest.approx((4000 + 4000) / 4 / 1000)  # mJ per inference


def test_counter_delta():
    assert counter_delta(10, 30, 100) == 20
    assert counter_delta(90, 5, 100) == 15
    with pytest.raises(ValueError, match="max_energy_range_uj"):
        counter_delta(90, 5, None)


def test_bad_values():
    t = _cpu(2, 2, 20.0)
    with pytest.raises(ValueError, match="latency_ms"):
        energy_per_inference(-1.0, t)
    with pytest.raises(ValueError, match="n must be"):
        energy_per_inference(1.0, t, n=0)


def test_default_root_on_this_machine_gives_a_labelled_figure():
    t = get_target("cpu")
    r = energy_per_inference(3.0, t, run_fn=lambda: None, n=2)
    assert set(r) == {"value", "method"} and r["value"] > 0
    assert r["method"] == RAPL_METHOD or r["method"].startswith("estimate:")
