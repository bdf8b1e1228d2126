"""Interleaved timing: call order, warm-up, percentiles on a fake clock, progress, real runners, paired speedups."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edgeopt.ledger import Latency
from edgeopt.measure import latency
from edgeopt.measure.latency import LatencyStats, measure_interleaved, measure_one, paired_speedup, round_order


class FakeClock:
    def __init__(self):
        self.ns = 0

    def __call__(self) -> int:
        return self.ns


class FakeRunner:
    """Advances the fake clock by its next duration (ms) on each call and records the call in `log`."""

    def __init__(self, name, clock, durations_ms, log):
        self.name, self.threads = name, 1
        self.clock, self.durations, self.log, self.calls = clock, durations_ms, log, 0

    def run(self, feed):
        self.clock.ns += int(round(self.durations[self.calls % len(self.durations)] * 1e6))
        self.calls += 1
        self.log.append(self.name)
        return [np.zeros(1)]

    def close(self):
        pass


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setattr(latency, "_now", c)
    return c


def test_round_robin_order_rotates_every_round(clock):
    log: list[str] = []
    runners = {n: FakeRunner(n, clock, [1.0], log) for n in "ABC"}
    stats = measure_interleaved(runners, {}, warmup=2, runs=4)
    rounds = [log[i:i + 3] for i in range(0, len(log), 3)]
    # two warm-up rounds, then four timed ones; the rotation runs on across both
    assert rounds == [list("ABC"), list("BCA"), list("CAB"), list("ABC"), list("BCA"), list("CAB")]
    assert {r[0] for r in rounds} == set("ABC")  # no runner always goes first
    assert all(s.n == 4 for s in stats.values())
    assert round_order(["A", "B", "C"], 5) == ["C", "A", "B"]


def test_warmup_calls_are_not_timed(clock):
    log: list[str] = []
    # the first 3 calls (warm-up) take 100 ms, the timed ones 2 ms
    r = FakeRunner("A", clock, [100.0, 100.0, 100.0] + [2.0] * 10, log)
    stats = measure_one(r, {}, warmup=3, runs=10)
    assert stats.n == 10 and stats.p50 == pytest.approx(2.0) and stats.samples == (2.0,) * 10


def test_percentiles_mean_std_from_known_durations(clock):
    durations = [float(x) for x in range(1, 101)]  # 1..100 ms
    rng = np.random.default_rng(0)
    shuffled = list(rng.permutation(durations))
    stats = measure_one(FakeRunner("A", clock, shuffled, []), {}, warmup=0, runs=100)
    assert stats.n == 100
    assert stats.p50 == pytest.approx(50.5)
    assert stats.p90 == pytest.approx(np.percentile(durations, 90))
    assert stats.p99 == pytest.approx(99.01)
    assert stats.mean == pytest.approx(50.5)
    assert stats.std == pytest.approx(np.std(durations, ddof=1))
    assert stats.samples == pytest.approx(shuffled)  # kept in round order


def test_each_runner_gets_its_own_samples(clock):
    log: list[str] = []
    runners = {"fast": FakeRunner("fast", clock, [1.0, 3.0], log), "slow": FakeRunner("slow", clock, [10.0], log)}
    stats = measure_interleaved(runners, {}, warmup=0, runs=6)
    assert stats["fast"].samples == (1.0, 3.0) * 3
    assert stats["slow"].samples == (10.0,) * 6
    assert stats["fast"].p50 == pytest.approx(2.0)


def test_min_time_keeps_timing_past_runs(clock, monkeypatch):
    t = {"s": 0.0}

    def wall():
        t["s"] += 1.0
        return t["s"]

    monkeypatch.setattr(latency, "_wall", wall)
    runners = {n: FakeRunner(n, clock, [1.0], []) for n in "AB"}
    stats = measure_interleaved(runners, {}, warmup=0, runs=2, min_time_s=5.0)
    assert stats["A"].n == stats["B"].n > 2
    no_min = measure_interleaved(runners, {}, warmup=0, runs=2)
    assert no_min["A"].n == 2


def test_progress_counts_every_call(clock):
    from rich.console import Console
    from rich.progress import Progress

    runners = {n: FakeRunner(n, clock, [1.0], []) for n in "AB"}
    with Progress(console=Console(file=io.StringIO())) as progress:
        measure_interleaved(runners, {}, warmup=3, runs=5, progress=progress)
        task = progress.tasks[0]
        assert task.total == 2 * (3 + 5) and task.completed == task.total


def test_bad_arguments_raise_value_error(clock):
    r = FakeRunner("A", clock, [1.0], [])
    with pytest.raises(ValueError, match="runs"):
        measure_one(r, {}, runs=0)
    with pytest.raises(ValueError, match="warmup"):
        measure_one(r, {}, warmup=-1)
    with pytest.raises(ValueError, match="nothing to time"):
        measure_interleaved({}, {})


def test_stats_fit_the_ledger_latency_record():
    s = LatencyStats.from_samples([2.0, 4.0, 6.0])
    assert (s.p50, s.mean, s.std, s.n) == (4.0, 4.0, 2.0, 3)
    rec = Latency(**s.to_dict(), runtime="onnxruntime", threads=2)
    assert rec.p50 == 4.0 and rec.n == 3
    assert LatencyStats.from_samples([5.0]).std == 0.0
    with pytest.raises(ValueError):
        LatencyStats.from_samples([])


def test_real_runners_interleaved(tiny_mlp_onnx, tiny_mlp_torch, tiny_mlp_feeds):
    from edgeopt.measure.runners import make_runner

    runners = {"onnx": make_runner(tiny_mlp_onnx, 1), "torch": make_runner(tiny_mlp_torch, 1)}
    stats = measure_interleaved(runners, tiny_mlp_feeds[0], warmup=2, runs=7)
    for s in stats.values():
        assert s.n == 7 and len(s.samples) == 7 and min(s.samples) > 0
        assert min(s.samples) <= s.p50 <= s.p90 <= s.p99 <= max(s.samples)


def test_blocks_time_consecutive_calls_after_settling():
    from edgeopt.measure.latency import measure_interleaved

    calls: list[str] = []

    class Fake:
        def __init__(self, name):
            self.name = name

        def run(self, feed):
            calls.append(self.name)
            return []

    stats = measure_interleaved({"a": Fake("a"), "b": Fake("b")}, {}, warmup=0, runs=4, block=3, settle=1)
    assert stats["a"].n == 4 and stats["b"].n == 4  # 2 rounds x 2 timed calls each
    assert calls == ["a"] * 3 + ["b"] * 3 + ["b"] * 3 + ["a"] * 3  # rotated each round, settle call included
    import pytest

    with pytest.raises(ValueError, match="settle"):
        measure_interleaved({"a": Fake("a")}, {}, runs=2, block=2, settle=2)


def test_pause_before_each_turn_is_untimed(monkeypatch):
    from edgeopt.measure import latency

    slept: list[float] = []
    monkeypatch.setattr(latency, "_sleep", slept.append)

    class Fake:
        name = "f"

        def run(self, feed):
            return []

    stats = latency.measure_interleaved({"a": Fake(), "b": Fake()}, {}, warmup=0, runs=2, block=2, settle=1,
                                        pause_s=0.05)
    assert slept == [0.05] * 4  # one pause per turn: 2 rounds x 2 runners
    assert stats["a"].n == 2


def test_paired_speedup_resamples_whole_rounds():
    base = (10.0, 10.0, 20.0, 20.0, 40.0, 40.0)  # a noisy machine: whole rounds get slower
    other = (5.0, 5.0, 10.0, 10.0, 20.0, 20.0)
    assert paired_speedup(base, other, per_turn=2) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="per_turn"):
        paired_speedup(base, other, per_turn=4)


def test_interval_is_paired_over_rounds():
    """Noise shared by a round (every model slowed alike) cancels: the paired interval stays tight."""
    rng = np.random.default_rng(0)
    load = rng.choice([1.0, 3.0], size=40)  # half the rounds run three times slower, for both models
    base, fast = 10.0 * load, 5.0 * load
    assert paired_speedup(base, fast) == (2.0, 2.0, 2.0)
    # unpaired (rounds shuffled against each other) the same samples give a wide interval
    _, lo, hi = paired_speedup(base, rng.permutation(fast))
    assert hi - lo > 0.5


def test_interval_brackets_the_point_and_is_reproducible():
    rng = np.random.default_rng(1)
    base = 10 + rng.standard_normal(50)
    other = 4 + rng.standard_normal(50) * 0.5
    sp, lo, hi = paired_speedup(base, other)
    assert lo < sp < hi
    assert sp == pytest.approx(np.median(base) / np.median(other))
    assert paired_speedup(base, other) == (sp, lo, hi)
    with pytest.raises(ValueError, match="paired"):
        paired_speedup(base, other[:-1])
