"""Background jobs for the dashboard: threads that report progress, and a child-process entry point for heavy work.

`Worker.submit(fn)` runs `fn(job)` in a daemon thread; `fn` reports with `job.report(fraction, message)`
and checks `job.cancelled`. `Worker.submit_process(args)` runs `python -m edgeopt.dashboard.worker ARGS`
in a child process (analysis, recipe runs and profiles: the page's server never carries their memory or
their threads) and turns the JSON lines the child prints into progress. The page only ever reads job
fields, so it never blocks on a job.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable

from edgeopt.analyze import analyze
from edgeopt.dashboard.live import demo_model
from edgeopt.errors import EdgeoptError, InputError
from edgeopt.pipeline import optimize
from edgeopt.recipe import load_recipe
from edgeopt.report.html import profile_stages

_ids = itertools.count(1)
STDERR_TAIL = 50  # last lines of a child's stderr kept for its error message


class Cancelled(Exception):
    """Raised inside a job function that noticed `job.cancelled`."""


@dataclass
class Job:
    """One background task: its status, progress, log lines, and result or one-line error."""

    kind: str
    label: str
    id: int = field(default_factory=lambda: next(_ids))
    status: str = "queued"  # queued | running | done | failed | cancelled
    fraction: float = 0.0
    message: str = ""
    log: list[str] = field(default_factory=list)
    result: Any = None
    error: str | None = None
    started: float | None = None
    finished: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def report(self, fraction: float | None = None, message: str | None = None) -> None:
        if fraction is not None:
            self.fraction = min(1.0, max(0.0, float(fraction)))
        if message:
            self.message = message
            self.log.append(message)
            del self.log[:-200]
        if self._cancel.is_set():
            raise Cancelled()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def done(self) -> bool:
        return self.status in ("done", "failed", "cancelled")

    @property
    def elapsed(self) -> float:
        if self.started is None:
            return 0.0
        return (self.finished or time.monotonic()) - self.started

    def cancel(self) -> None:
        self._cancel.set()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ends (for tests and scripts, never the page); True when it ended."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.done


class Worker:
    """Runs jobs in background threads; `serial` kinds run one at a time, in order (e.g. live measurements)."""

    def __init__(self, serial: tuple[str, ...] = ("live",)):
        self.jobs: list[Job] = []
        self._locks = {k: threading.Lock() for k in serial}

    def submit(self, fn: Callable[[Job], Any], kind: str, label: str) -> Job:
        job = Job(kind=kind, label=label)

        def run() -> None:
            lock = self._locks.get(kind)
            if lock is not None:
                lock.acquire()
            try:
                if job.cancelled:
                    job.status = "cancelled"
                    return
                job.status, job.started = "running", time.monotonic()
                job.result = fn(job)
                job.fraction, job.status = 1.0, "done"
            except Cancelled:
                job.status = "cancelled"
            except Exception as e:  # a job's failure is shown on the page as one line
                first = (str(e).strip().splitlines() or [e.__class__.__name__])[0][:300]
                job.error = first if isinstance(e, EdgeoptError) else f"{e.__class__.__name__}: {first}"
                if os.environ.get("EDGEOPT_DEBUG"):
                    job.log.append(traceback.format_exc())
                job.status = "failed"
            finally:
                job.finished = time.monotonic()
                if lock is not None:
                    lock.release()

        job._thread = threading.Thread(target=run, name=f"edgeopt-job-{job.id}", daemon=True)
        self.jobs.append(job)
        job._thread.start()
        return job

    def submit_process(self, args: list[str], kind: str, label: str, timeout_s: float = 3600) -> Job:
        """Run `python -m edgeopt.dashboard.worker *args` as a job (see `main` for the commands)."""
        return self.submit(lambda job: run_child(job, args, timeout_s), kind, label)

    def active(self, kind: str | None = None) -> list[Job]:
        return [j for j in self.jobs if not j.done and (kind is None or j.kind == kind)]

    def latest(self, kind: str) -> Job | None:
        return next((j for j in reversed(self.jobs) if j.kind == kind), None)

    def cancel_all(self) -> None:
        for j in self.jobs:
            j.cancel()


def run_child(job: Job, args: list[str], timeout_s: float = 3600) -> Any:
    """Run the worker command in a child process; its JSON lines become progress, its last one the result."""
    return run_command(job, [sys.executable, "-m", "edgeopt.dashboard.worker", *args], timeout_s)


def run_command(job: Job, cmd: list[str], timeout_s: float = 3600) -> Any:
    """Run `cmd`, which speaks the worker's JSON lines on stdout (see `main`), as `job`'s child process."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            errors="replace")
    job._proc = proc
    # stderr is drained while the child runs (a chatty child would otherwise block on a full pipe and never
    # finish); only its last lines are kept, for the error message and the job's log
    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    drain = threading.Thread(target=lambda: tail.extend(ln.rstrip("\n") for ln in proc.stderr),
                             name=f"edgeopt-job-{job.id}-stderr", daemon=True)
    drain.start()
    timer = threading.Timer(timeout_s, proc.kill)
    timer.daemon = True
    timer.start()
    result, error = None, None
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            line = line.strip()
            if not line.startswith("{"):
                continue
            try:
                ev = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "result" in ev:
                result = ev["result"]
            elif "error" in ev:
                error = ev["error"]
            else:
                job.fraction = float(ev.get("fraction", job.fraction))
                if ev.get("message"):
                    job.message = ev["message"]
                    job.log.append(ev["message"])
    finally:
        timer.cancel()
    proc.wait()
    drain.join(5)
    stderr = [ln for ln in tail if ln.strip()]
    if job.cancelled:
        raise Cancelled()
    if proc.returncode == -9 and result is None and error is None:
        raise InputError(f"{job.label}: took more than {timeout_s:.0f} s and was stopped")
    if error:
        raise InputError(error)
    if proc.returncode != 0 or result is None:
        job.log.extend(stderr)
        del job.log[:-200]
        last = (stderr or [f"exit code {proc.returncode}"])[-1].strip()[:300]
        raise InputError(f"{job.label} failed: {last}")
    return result


# ---------------------------------------------------------------------------------------- the child

def _emit(**ev: Any) -> None:
    sys.stdout.write(json.dumps(ev, default=str) + "\n")
    sys.stdout.flush()


class _StageConsole:
    """A stand-in for the pipeline's console: each "stage NAME: ..." line it prints becomes a progress event."""

    def __init__(self, total: int):
        self.total = max(1, total)
        self.seen = 0

    def print(self, msg: Any = "", *args: Any, **kwargs: Any) -> None:
        from rich.text import Text

        text = Text.from_markup(str(msg)).plain if isinstance(msg, str) else str(msg)
        if text.startswith("stage "):
            self.seen += 1
            last = " (then every stage is measured)" if self.seen == self.total - 1 else ""
            _emit(fraction=min(self.seen - 1, self.total - 1) / self.total, message=text + last)
        else:
            _emit(message=text)


def _model(source: str) -> Any:
    """A demo: name becomes its artifact (the library knows zoo: names and paths itself)."""
    if source.startswith("demo:"):
        return demo_model(source)
    return source or None


def _cmd_analyze(ns: argparse.Namespace) -> Any:
    _emit(fraction=0.05, message=f"analyzing {ns.model}")
    rep = analyze(_model(ns.model), target=ns.target, seq_len=ns.seq_len, batch=ns.batch)
    _emit(fraction=1.0, message="analysis done")
    return rep


def _cmd_optimize(ns: argparse.Namespace) -> Any:
    recipe = load_recipe(ns.recipe)
    console = _StageConsole(len(recipe.passes) + 1)
    _emit(fraction=0.0, message=f"recipe {ns.recipe}: {len(recipe.passes)} passes into {ns.out}")
    res = optimize(_model(ns.model), recipe=recipe, target=ns.target, out=ns.out, console=console, progress=False)
    _emit(fraction=1.0, message=f"done; best stage: {res.ledger.best or 'none passed its gate'}")
    return {"run_dir": str(res.out_dir), "best": res.ledger.best}


def _cmd_profile(ns: argparse.Namespace) -> Any:
    out = {}
    for i, stage in enumerate(ns.stage):
        _emit(fraction=i / len(ns.stage), message=f"profiling {stage} ({ns.runs} runs, {ns.threads} threads)")
        out.update(profile_stages(ns.run, [stage], threads=ns.threads, runs=ns.runs))
    _emit(fraction=1.0, message="profiles done")
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m edgeopt.dashboard.worker analyze|optimize|profile ...`: JSON lines on stdout, the last
    one {"result": ...} or {"error": "one line"}."""
    ap = argparse.ArgumentParser(prog="python -m edgeopt.dashboard.worker")
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("analyze")
    a.add_argument("--model", required=True)
    a.add_argument("--target", default="auto")
    a.add_argument("--seq-len", type=int, default=128)
    a.add_argument("--batch", type=int, default=1)
    o = sub.add_parser("optimize")
    o.add_argument("--model", default="")
    o.add_argument("--recipe", default="cpu-int8")
    o.add_argument("--target", default=None)
    o.add_argument("--out", required=True)
    p = sub.add_parser("profile")
    p.add_argument("--run", required=True)
    p.add_argument("--stage", action="append", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--runs", type=int, default=10)
    ns = ap.parse_args(argv)
    try:
        result = {"analyze": _cmd_analyze, "optimize": _cmd_optimize, "profile": _cmd_profile}[ns.cmd](ns)
    except EdgeoptError as e:
        _emit(error=str(e))
        return e.exit_code
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0][:300]
        _emit(error=f"{e.__class__.__name__}: {first}")
        return 1
    _emit(result=result)
    return 0


if __name__ == "__main__":  # pragma: no cover - the child process
    sys.exit(main())
