"""Background jobs: threads that report progress, and the child-process commands the page starts."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest
from report.factory import write_run

from edgeopt.dashboard.worker import Worker, main, run_command
from edgeopt.errors import InputError


def test_job_reports_progress_and_result():
    w = Worker()
    gate = threading.Event()

    def fn(job):
        job.report(0.5, "half way")
        gate.wait(5)
        return 42

    job = w.submit(fn, "test", "answer")
    for _ in range(100):
        if job.fraction == 0.5:
            break
        time.sleep(0.01)
    assert job.status == "running" and job.message == "half way" and w.active("test") == [job]
    gate.set()
    assert job.wait(5)
    assert (job.status, job.result, job.fraction) == ("done", 42, 1.0)
    assert w.active() == [] and w.latest("test") is job


def test_failed_job_keeps_a_one_line_error():
    def fn(job):
        raise InputError("model.onnx: no such file")

    def boom(job):
        raise ValueError("first line\nsecond line")

    w = Worker()
    a, b = w.submit(fn, "t", "a"), w.submit(boom, "t", "b")
    a.wait(5), b.wait(5)
    assert (a.status, a.error) == ("failed", "model.onnx: no such file")
    assert (b.status, b.error) == ("failed", "ValueError: first line")


def test_cancel_stops_a_job_at_its_next_report():
    w = Worker()

    def fn(job):
        for i in range(1000):
            job.report(i / 1000)
            time.sleep(0.005)

    job = w.submit(fn, "t", "long")
    time.sleep(0.05)
    job.cancel()
    assert job.wait(5) and job.status == "cancelled"


def test_serial_kind_runs_one_job_at_a_time():
    w = Worker(serial=("live",))
    running, peak = [0], [0]
    lock = threading.Lock()

    def fn(job):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        with lock:
            running[0] -= 1

    jobs = [w.submit(fn, "live", str(i)) for i in range(3)]
    assert all(j.wait(5) for j in jobs) and peak[0] == 1


def test_child_process_profile_job(tmp_path, tiny_mlp_onnx):
    run = write_run(tmp_path / "run", onnx_model=tiny_mlp_onnx.path)
    w = Worker()
    job = w.submit_process(["profile", "--run", str(run), "--stage", "onnx", "--threads", "1", "--runs", "2"],
                           "profile", "profile onnx")
    assert job.wait(120)
    assert job.status == "done", job.error
    assert set(job.result) == {"onnx"} and job.result["onnx"]["nodes"]
    assert any("profiling onnx" in m for m in job.log)
    bad = w.submit_process(["profile", "--run", str(run), "--stage", "nope"], "profile", "profile nope")
    assert bad.wait(120) and bad.status == "failed" and "no stage 'nope'" in bad.error


def test_worker_main_prints_json_lines(tmp_path, capsys):
    assert main(["profile", "--run", str(tmp_path / "missing"), "--stage", "x"]) == 2
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert "no such run directory" in lines[-1]["error"]
    with pytest.raises(SystemExit):
        main(["unknown"])


CHATTY = ("import sys\n"
          "for i in range(3000):\n"
          "    sys.stderr.write(f'warning {{i}}: ' + 'x' * 90 + '\\n')\n"  # ~300 KB: several pipe buffers
          "sys.stderr.write({last!r} + '\\n')\n"
          "sys.stderr.flush()\n"
          "print({out!r}, flush=True)\n"
          "sys.exit({rc})\n")


def _chatty(w, last, out, rc):
    job = w.submit(lambda j: run_command(j, [sys.executable, "-c", CHATTY.format(last=last, out=out, rc=rc)]),
                   "run", "chatty")
    try:
        finished = job.wait(60)  # a child blocked on a full stderr pipe never ends
    finally:
        if job._proc is not None and job._proc.poll() is None:
            job._proc.kill()
    assert finished, "the job hung: its child blocked writing to stderr"
    return job


def test_chatty_child_stderr_is_read_while_it_runs():
    w = Worker()
    ok = _chatty(w, "all good", '{"result": 7}', 0)
    assert (ok.status, ok.result) == ("done", 7)
    bad = _chatty(w, "RuntimeError: the real reason", "", 3)
    assert bad.status == "failed" and bad.error == "chatty failed: RuntimeError: the real reason"
    assert bad.log[-1] == "RuntimeError: the real reason"  # the tail of stderr is kept in the log
    assert len(bad.log) <= 200
