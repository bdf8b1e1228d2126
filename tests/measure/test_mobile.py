"""Simulated mobile: limits only for mobile-cpu, pinning that restores and reaches new threads, a memory
budget that fails an over-budget model with "needs N MB, budget M MB" and passes a small one."""

from __future__ import annotations

import os
import re
import threading

import numpy as np
import pytest
from helpers import square_matmul

from edgeopt.errors import InputError
from edgeopt.measure.memory import _json_lines, _run_child
from edgeopt.measure.mobile import (MemoryBudgetExceeded, MobileLimits, allowed_cpus, limits_for, peak_memory,
                                    pinned, stray_threads)
from edgeopt.target import MOBILE_MAX_CORES, get_target

needs_affinity = pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity API on this OS")


def test_limits_only_for_mobile_cpu():
    for name in ("cpu", "cpu-avx2", "arm64", "cuda"):
        assert limits_for(get_target(name)) is None
    assert limits_for(None) is None
    lim = limits_for(get_target("mobile-cpu"))
    assert isinstance(lim, MobileLimits)
    here = allowed_cpus()
    if here:
        assert lim.cores == here[:MOBILE_MAX_CORES] and 1 <= len(lim.cores) <= MOBILE_MAX_CORES
    assert 1 <= lim.threads <= max(len(lim.cores), 1) and lim.threads <= MOBILE_MAX_CORES
    assert lim.memory_mb == round(get_target("mobile-cpu").memory_gb * 1024) and lim.memory_mb <= 4096
    assert "simulated" in lim.note and "not a phone" in lim.note
    d = lim.to_dict()
    assert set(d) == {"label", "cores", "threads", "memory_mb", "note"} and d["label"] == "mobile-cpu"
    assert d["cores"] == list(lim.cores)


def test_limits_overrides_and_bad_values():
    mobile = get_target("mobile-cpu")
    lim = limits_for(mobile, threads=64, memory_mb=512)
    assert lim.memory_mb == 512 and lim.threads == max(1, min(len(lim.cores) or 1, MOBILE_MAX_CORES))
    with pytest.raises(InputError, match="at least 1"):
        limits_for(mobile, threads=0)
    with pytest.raises(InputError, match="positive"):
        limits_for(mobile, memory_mb=0)
    if allowed_cpus():
        with pytest.raises(InputError, match="not a subset"):
            limits_for(mobile, cores=[max(allowed_cpus()) + 1000])
        one = limits_for(mobile, cores=[allowed_cpus()[-1]])
        assert one.cores == (allowed_cpus()[-1],) and one.threads == 1


@needs_affinity
def test_pinning_restores_and_reaches_threads_created_inside():
    before = os.sched_getaffinity(0)
    subset = {min(before)}  # on a 1-CPU machine this is every CPU: still pinned, restored, inherited
    seen: dict[str, set[int]] = {}

    def record(key: str) -> None:
        seen[key] = os.sched_getaffinity(0)

    early = threading.Event()
    old = threading.Thread(target=lambda: (early.wait(5), record("old")))
    old.start()
    with pinned(subset) as got:
        assert got == frozenset(subset) and os.sched_getaffinity(0) == subset
        inner = threading.Thread(target=record, args=("inner",))
        inner.start()
        inner.join()
        if len(before) > 1:
            assert old.native_id in stray_threads(subset)  # created before: not moved
            assert threading.get_native_id() not in stray_threads(subset)
    early.set()
    old.join()
    assert os.sched_getaffinity(0) == before
    assert seen["inner"] == subset
    assert seen["old"] == before
    with pinned(None) as got:
        assert got is None and os.sched_getaffinity(0) == before


@needs_affinity
def test_onnxruntime_pool_created_inside_is_pinned(tmp_path):
    import onnxruntime as ort

    here = os.sched_getaffinity(0)
    if len(here) < 2:
        pytest.skip("one CPU: a subset cannot differ from the full mask")
    art = square_matmul(tmp_path / "m.onnx", 32)
    subset = {max(here)}
    tids_before = set(os.listdir("/proc/self/task"))
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    with pinned(subset):
        sess = ort.InferenceSession(str(art.path), so, providers=["CPUExecutionProvider"])
    sess.run(None, {"x": np.ones((1, 32), np.float32)})
    new = set(os.listdir("/proc/self/task")) - tids_before
    assert new, "ONNX Runtime created no intra-op thread"
    assert all(os.sched_getaffinity(int(t)) == subset for t in new)


def test_small_model_passes_a_big_budget_pinned(tmp_path):
    art = square_matmul(tmp_path / "small.onnx", 16)
    lim = limits_for(get_target("mobile-cpu"), memory_mb=4096)
    m = peak_memory(art, {"x": np.ones((1, 16), np.float32)}, lim)
    assert 0 < m.import_mb <= m.peak_mb < 4096
    assert m.budget_mb == 4096 and m.charged_mb is not None and 0 < m.charged_mb < 4096
    assert m.to_dict()["budget_mb"] == 4096 and "charged_mb" in m.to_dict()


@needs_affinity
def test_memory_child_runs_every_thread_on_the_cores(tmp_path):
    art = square_matmul(tmp_path / "m.onnx", 16)
    core = max(os.sched_getaffinity(0))
    args = ["--kind", "onnx", "--model", str(art.path), "--threads", "2", "--runs", "1", "--cores", str(core)]
    proc = _run_child(str(art.path), args, {"x": np.ones((1, 16), np.float32)}, 120)
    assert proc.returncode == 0, proc.stderr[-300:]
    assert _json_lines(proc)["cpus"] == [core]  # numpy's BLAS pool and ORT's pool included


def test_over_budget_model_fails_with_needs_and_budget(tmp_path):
    feed_small = {"x": np.ones((1, 16), np.float32)}
    small = peak_memory(square_matmul(tmp_path / "small.onnx", 16), feed_small,
                        MobileLimits(cores=(), threads=1, memory_mb=4096))
    budget = int(small.charged_mb) + 30  # 30 MB over what the runtime and a trivial model hold
    big = square_matmul(tmp_path / "big.onnx", 3072)  # a 36 MiB weight
    lim = MobileLimits(cores=allowed_cpus()[:1], threads=1, memory_mb=budget)
    with pytest.raises(MemoryBudgetExceeded) as e:
        peak_memory(big, {"x": np.ones((1, 3072), np.float32)}, lim)
    err = e.value
    assert isinstance(err, InputError)
    msg = str(err)
    m = re.search(r"needs (\d+) MB, budget (\d+) MB", msg)
    assert m and int(m.group(2)) == budget and int(m.group(1)) > budget
    assert msg.startswith(str(big.path)) and "\n" not in msg
    assert err.measured and err.budget_mb == budget and err.needed_mb > budget
    assert err.peak_mb is not None and err.peak_mb > small.peak_mb + 36  # at least the weight on top
    # the same model fits a budget that holds it
    ok = peak_memory(big, {"x": np.ones((1, 3072), np.float32)},
                     MobileLimits(cores=lim.cores, threads=1, memory_mb=int(err.needed_mb) + 64))
    assert ok.peak_mb <= err.needed_mb + 1


def test_budget_error_message_forms():
    assert str(MemoryBudgetExceeded(5200.4, 4096, "m.onnx")) == \
        "m.onnx: needs 5200 MB, budget 4096 MB (simulated memory cap)"
    est = MemoryBudgetExceeded(5000, 4096, "m.onnx", measured=False)
    assert "needs at least 5000 MB, budget 4096 MB" in str(est) and "estimated" in str(est)
    assert "needs more than 4096 MB, budget 4096 MB" in str(MemoryBudgetExceeded(None, 4096))


def test_non_memory_failure_under_a_budget_stays_a_plain_error(tmp_path):
    art = square_matmul(tmp_path / "m.onnx", 8)
    lim = MobileLimits(cores=(), threads=1, memory_mb=4096)
    with pytest.raises(InputError) as e:
        peak_memory(art, {"other": np.ones((1, 8), np.float32)}, lim)
    assert not isinstance(e.value, MemoryBudgetExceeded) and "feed has no input 'x'" in str(e.value)
