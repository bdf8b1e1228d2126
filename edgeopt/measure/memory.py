"""Peak memory: the peak RSS of a child process that loads and runs the model (the parent's memory would lie).

The parent writes the feed to a temporary .npz and runs
`python -m edgeopt.measure.memory --kind onnx|torch --model PATH_OR_SOURCE --feed NPZ --threads N --runs R`.
The child imports its runtime, notes its RSS (`import_mb`: interpreter plus runtime, no model), loads the
model, runs it R times and prints {"peak_mb", "import_mb"} as JSON on its last stdout line. ONNX models
load from their file; torch artifacts are rebuilt from meta["source"] (a zoo: name or a Hugging Face
folder), since a live module cannot cross processes, and the rebuilt weights must hash to the artifact's.

Simulated device limits (the `mobile-cpu` target, see edgeopt.measure.mobile): `cores=` pins the child to a
CPU subset and `budget_mb=` caps its memory with RLIMIT_AS. The child sets both itself (`--cores`,
`--budget-mb`) rather than through preexec_fn, which is unsafe in a parent whose runtimes hold threads.
RLIMIT_AS limits virtual address space, which runtimes reserve far beyond what they touch (measured on
x86-64, glibc, 2 cores: onnxruntime 1.32 imports at 187 MB virtual / 45 MB resident; OpenVINO 2026.4 at 260
virtual / 54 resident, its CPU plugin maps 73 MB more when first used; each glibc malloc arena a thread
opens reserves 64-128 MB). A cap of the budget on the whole address space would fail small models on a
4 GB budget for no reason, so the cap is placed after the imports and a runtime warm-up (OpenVINO's CPU
plugin loaded): cap = VM then + (budget - RSS then). The runtime is charged what it holds resident, and
everything the model brings afterwards (weights, arenas, thread stacks, activations) is charged as address
space, a conservative reading. The capped child runs with MALLOC_ARENA_MAX=1: glibc's per-thread arena
reservations are a desktop-allocator artefact a phone's (scudo, jemalloc) does not have, and they do not
change the peak RSS (measured: same VmHWM with and without). `charged_mb` = RSS then + the address space
added since, the figure the cap compares with the budget. A model also fails the budget when it fits the cap
but its peak RSS exceeds the budget (it can touch pages the runtime reserved at import). Measured with
onnxruntime, 2 threads: a 16x16 MatMul charges 73 MB (peak RSS 73), a 4096x4096 one (64 MB weight) charges
231 MB (peak RSS 200), so a 4 GB budget leaves small models far from the cap.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import edgeopt.artifact as artifact_mod
from edgeopt.artifact import Artifact
from edgeopt.errors import InputError
from edgeopt.load import load_model
from edgeopt.measure import runners

EXIT_NOT_SAME_MODEL = 3  # child exit code: the rebuilt torch module is not the artifact's
EXIT_OVER_BUDGET = 4     # child exit code: an allocation failed under the --budget-mb address-space cap
# Allocation failures as runtimes word them once RLIMIT_AS refuses a mapping: C++ std::bad_alloc (ORT,
# OpenVINO), "failed to map segment" (a shared library that no longer fits), ENOMEM, and pthread_create's
# EAGAIN when a thread stack cannot be mapped. Only consulted in a capped child.
_ALLOC_FAILURES = ("bad_alloc", "bad allocation", "cannot allocate memory", "failed to allocate", "out of memory",
                   "failed to map segment", "resource temporarily unavailable", "enomem")


class MemoryNotMeasurable(InputError):
    """The artifact cannot be loaded in a child process (a torch module without a reloadable source, or
    one whose weights changed since it was loaded). Catch it to record a warning instead of a number."""


class MemoryBudgetExceeded(InputError):
    """The model does not fit the simulated memory budget: the capped child failed to allocate.

    `needed_mb` is measured by running the child again under the same limits without the budget cap
    (`measured` True), or, when that run fails too, estimated as the runtime's resident memory plus the
    model's file size (`measured` False, message says "at least"); None when neither is known.
    `peak_mb` is the uncapped run's peak RSS when it finished.
    """

    def __init__(self, needed_mb: float | None, budget_mb: float, what: str = "", *, peak_mb: float | None = None,
                 measured: bool = True):
        self.needed_mb, self.budget_mb, self.peak_mb, self.measured = needed_mb, float(budget_mb), peak_mb, measured
        if needed_mb is None:
            need = f"needs more than {budget_mb:.0f} MB"
        else:
            need = f"needs {'' if measured else 'at least '}{needed_mb:.0f} MB"
        extra = "" if peak_mb is None else f"; peak RSS without the cap {peak_mb:.0f} MB"
        how = "" if measured or needed_mb is None else "; estimated from the file size"
        super().__init__(f"{what + ': ' if what else ''}{need}, budget {budget_mb:.0f} MB "
                         f"(simulated memory cap{extra}{how})")


@dataclass(frozen=True)
class PeakMemory:
    """Peak RSS of the child that loaded and ran the model, and of the same child before loading it (MB = 2**20 bytes)."""

    peak_mb: float
    import_mb: float
    budget_mb: float | None = None   # the simulated memory cap it ran under (None: none)
    charged_mb: float | None = None  # what the cap compared with the budget (module docstring)

    @property
    def model_mb(self) -> float:
        """The memory the model itself brings: peak minus the bare interpreter and runtime."""
        return max(0.0, self.peak_mb - self.import_mb)

    def __float__(self) -> float:
        return self.peak_mb

    def to_dict(self) -> dict[str, float]:
        d = {"peak_mb": self.peak_mb, "import_mb": self.import_mb, "model_mb": self.model_mb}
        if self.budget_mb is not None:
            d["budget_mb"] = self.budget_mb
        if self.charged_mb is not None:
            d["charged_mb"] = self.charged_mb
        return d


def _reloadable(source: Any) -> bool:
    if not isinstance(source, str) or not source:
        return False
    if source.startswith("zoo:"):
        return True
    p = Path(source)
    return p.is_dir() and (p / "config.json").exists()


def peak_rss_mb(art: Artifact, feed: dict[str, np.ndarray], threads: int = 1, runs: int = 3,
                timeout_s: float = 300, *, cores: Sequence[int] | None = None,
                budget_mb: float | None = None) -> PeakMemory:
    """Peak RSS of a child process that loads `art` and runs it `runs` times on `feed`.

    `cores` pins the child (and the thread pools its runtime creates) to those CPU ids; `budget_mb` caps
    its memory as the module docstring explains, and a model over it raises MemoryBudgetExceeded (after a
    second, uncapped child has measured what it needs). Raises MemoryNotMeasurable when a torch artifact
    cannot be rebuilt in the child, and InputError (naming the model and the child's last stderr line)
    when the child fails or times out.
    """
    if art.kind == "onnx":
        if art.path is None:
            raise InputError("onnx artifact has no file path")
        what = str(art.path)
        args = ["--kind", "onnx", "--model", str(art.path)]
        session = art.meta.get("session")
        if session:
            args += ["--session", json.dumps(session)]
    elif art.kind == "openvino":
        what = str(art.path)
        args = ["--kind", "openvino", "--model", str(art.path),
                "--session", json.dumps(art.meta.get("openvino") or {})]
    elif art.kind == "torch":
        source = art.meta.get("source")
        what = str(source or "torch module")
        if not _reloadable(source):
            raise MemoryNotMeasurable(
                f"{what}: peak memory needs a child process that reloads the model, but its source is "
                "not a zoo: name or a Hugging Face folder (export it to ONNX to measure it)")
        args = ["--kind", "torch", "--model", str(source), "--sha256", art.sha256]
    elif art.kind in ("tflite", "ncnn") and art.path is not None:
        what = str(art.path)
        args = ["--kind", art.kind, "--model", str(art.path),
                "--session", json.dumps({"inputs": art.input_spec.to_dict(), "meta": _json_safe(art.meta)})]
    else:
        raise InputError(f"{art.path or art.kind}: no memory measurement for {art.kind!r} models "
                         "(onnx, torch, openvino, tflite, ncnn)")
    args += ["--threads", str(int(threads)), "--runs", str(int(runs))]
    if cores:
        args += ["--cores", ",".join(str(int(c)) for c in sorted(set(cores)))]
    if budget_mb is None:
        return _result(what, _run_child(what, args, feed, timeout_s))
    budget = float(budget_mb)
    proc = _run_child(what, [*args, "--budget-mb", f"{budget:g}"], feed, timeout_s, capped=True)
    if proc.returncode != EXIT_OVER_BUDGET and proc.returncode >= 0:
        got = _result(what, proc, budget)
        if got.peak_mb > budget:  # it fit the address-space cap, yet its resident peak is over the budget
            raise MemoryBudgetExceeded(max(got.peak_mb, got.charged_mb or 0.0), budget, what, peak_mb=got.peak_mb)
        return got
    # over budget, or killed by a signal (std::terminate on a bad_alloc): measure the need without the cap
    free = _run_child(what, [*args, "--budget-mb", f"{budget:g}", "--no-cap"], feed, timeout_s, capped=True)
    if free.returncode == 0:
        got = _result(what, free, budget)
        needed = max(got.peak_mb, got.charged_mb or 0.0)
        if needed > budget:
            raise MemoryBudgetExceeded(needed, budget, what, peak_mb=got.peak_mb)
        raise InputError(f"{what}: failed under the simulated {budget:.0f} MB memory cap although it needs "
                         f"{needed:.0f} MB without it: {_last_err(proc)[:200]}")
    if proc.returncode < 0 and free.returncode != EXIT_OVER_BUDGET:
        # the capped child crashed and the uncapped one failed too: the failure is the model's, not the cap's
        if free.returncode < 0:
            raise InputError(f"{what}: memory measurement failed: {_last_err(proc)[:300]}")
        _result(what, free, budget)  # raises the uncapped child's own error
    base = _json_lines(free).get("base_rss_mb") or _json_lines(proc).get("base_rss_mb")
    file_mb = _file_mb(art.path)
    needed_est = None if base is None or file_mb is None else float(base) + file_mb
    if needed_est is not None and needed_est <= budget:
        needed_est = None  # a lower bound under the budget says nothing: "needs more than the budget"
    raise MemoryBudgetExceeded(needed_est, budget, what, measured=False)


def _file_mb(path: Path | None) -> float | None:
    """Size of a model file, or of all files in a model folder, in MB (None when there is none)."""
    if path is None or not Path(path).exists():
        return None
    p = Path(path)
    files = [p] if p.is_file() else [f for f in p.rglob("*") if f.is_file()]
    if p.suffix == ".xml" and p.with_suffix(".bin").exists():
        files.append(p.with_suffix(".bin"))
    return sum(f.stat().st_size for f in files) / 2**20


def _run_child(what: str, args: list[str], feed: dict[str, np.ndarray], timeout_s: float,
               capped: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m edgeopt.measure.memory ARGS --feed NPZ` with `feed` saved to a temporary .npz.

    With `--cores` in ARGS the interpreter pins itself before importing anything, so every thread of the
    child (numpy's BLAS pool at import included) inherits the mask; the child's own --cores handling then
    finds it already set.
    """
    with tempfile.TemporaryDirectory(prefix="edgeopt-mem-") as tmp:
        npz = Path(tmp) / "feed.npz"
        np.savez(npz, **{k: np.asarray(v) for k, v in feed.items()})
        cmd = [sys.executable, "-m", "edgeopt.measure.memory", *args, "--feed", str(npz)]
        if "--cores" in args and hasattr(os, "sched_setaffinity"):
            cores = args[args.index("--cores") + 1]
            cmd[1:3] = ["-c", f"import os, runpy; os.sched_setaffinity(0, {{{cores}}}); "
                              "runpy.run_module('edgeopt.measure.memory', run_name='__main__', alter_sys=True)"]
        # the child must import this same edgeopt, wherever the parent found it
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        if capped:
            env["MALLOC_ARENA_MAX"] = "1"  # glibc-only reservations the cap would charge (module docstring)
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise InputError(f"{what}: memory measurement timed out after {timeout_s:g} s") from None


def _last_err(proc: subprocess.CompletedProcess) -> str:
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    if err_lines:
        return err_lines[-1].strip()
    if proc.returncode < 0:
        return f"killed by signal {-proc.returncode}"
    return f"exit code {proc.returncode}"


def _json_lines(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    """Every JSON object the child printed on stdout, merged (later lines win)."""
    out: dict[str, Any] = {}
    for ln in proc.stdout.splitlines():
        if ln.startswith("{"):
            try:
                out.update(json.loads(ln))
            except ValueError:
                pass
    return out


def _result(what: str, proc: subprocess.CompletedProcess, budget_mb: float | None = None) -> PeakMemory:
    """The child's PeakMemory, or the error its exit code and last stderr line say."""
    last_err = _last_err(proc)
    if proc.returncode == EXIT_NOT_SAME_MODEL:
        raise MemoryNotMeasurable(f"{what}: {last_err}")
    if proc.returncode != 0:
        raise InputError(f"{what}: memory measurement failed: {last_err[:300]}")
    result = _json_lines(proc)
    try:
        charged = result.get("charged_mb")
        return PeakMemory(peak_mb=float(result["peak_mb"]), import_mb=float(result["import_mb"]),
                          budget_mb=budget_mb, charged_mb=None if charged is None else float(charged))
    except (ValueError, KeyError, TypeError):
        raise InputError(f"{what}: memory measurement printed no result ({last_err[:200]})") from None


# ----------------------------------------------------------------------------------------------- child


def maxrss_mb() -> float:
    """Peak RSS of this process so far, in MB.

    On Linux this is VmHWM from /proc/self/status: ru_maxrss cannot be used there, because execve folds
    the high-water mark of the address space it replaces into it, so a child started from a big parent
    (subprocess spawns with vfork) would report the parent's peak.
    """
    import resource

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kib / (1 << 20) if sys.platform == "darwin" else kib / 1024  # bytes on macOS, KiB on Linux


def _vm_mb() -> dict[str, float]:
    """This process's VmSize, VmPeak and VmRSS from /proc/self/status, in MB (Linux)."""
    out: dict[str, float] = {}
    with open("/proc/self/status") as f:
        for line in f:
            key = line.split(":", 1)[0]
            if key in ("VmSize", "VmPeak", "VmRSS"):
                out[key] = int(line.split()[1]) / 1024  # kB
    return out


def _warm_runtime(kind: str) -> Any:
    """Load what a runtime maps on first use but before any model (OpenVINO's CPU plugin), so the budget cap
    is placed after it; the returned object keeps it loaded."""
    if kind == "openvino":
        import openvino

        core = openvino.Core()
        core.get_property("CPU", "FULL_DEVICE_NAME")  # loads libopenvino_intel_cpu_plugin
        return core
    return None


def _process_cpus() -> set[int]:
    """The CPUs any thread of this process may run on (the union of the threads' masks; Linux)."""
    cpus: set[int] = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            cpus |= os.sched_getaffinity(int(tid))
        except OSError:  # the thread ended meanwhile
            continue
    return cpus


def _is_alloc_failure(e: BaseException) -> bool:
    text = f"{e.__class__.__name__} {e}".lower()
    return isinstance(e, MemoryError) or any(p in text for p in _ALLOC_FAILURES)


def _json_safe(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serializable part of an artifact's meta (what a runner reads: signature, blob names, fp16)."""
    out = {}
    for k, v in meta.items():
        try:
            json.dumps(v)
        except (TypeError, ValueError):
            continue
        out[k] = v
    return out


def _child(argv: list[str]) -> int:
    import argparse
    import resource

    ap = argparse.ArgumentParser(prog="python -m edgeopt.measure.memory",
                                 description="Load and run one model, then print its peak RSS as JSON.")
    ap.add_argument("--kind", choices=("onnx", "torch", "openvino", "tflite", "ncnn"), default="onnx")
    ap.add_argument("--model", required=True, help="an .onnx file, or for torch a zoo: name / HF folder")
    ap.add_argument("--feed", required=True, help=".npz with one array per input")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--session", default=None, help="JSON session settings (ONNX)")
    ap.add_argument("--sha256", default=None, help="expected weights hash of the rebuilt torch module")
    ap.add_argument("--cores", default=None, help="comma-separated CPU ids to run on (before any thread pool)")
    ap.add_argument("--budget-mb", type=float, default=None,
                    help="memory budget: cap the address space at VM + (budget - RSS) after imports")
    ap.add_argument("--no-cap", action="store_true",
                    help="with --budget-mb: measure charged_mb without enforcing the budget")
    a = ap.parse_args(argv)

    if a.cores:
        # this thread's mask; the runtimes' thread pools, created later from it, inherit it
        os.sched_setaffinity(0, {int(c) for c in a.cores.split(",")})
    if a.kind == "onnx":
        import onnxruntime  # noqa: F401  (the runtime belongs to the baseline)
    elif a.kind == "openvino":
        import openvino  # noqa: F401
    elif a.kind == "tflite":
        import ai_edge_litert.interpreter  # noqa: F401
    elif a.kind == "ncnn":
        import ncnn  # noqa: F401
    else:
        import torch  # noqa: F401
        import transformers.modeling_utils  # noqa: F401  (~120 MB of library code, not the model's)
        from transformers import AutoConfig, AutoModel  # noqa: F401
    import_mb = maxrss_mb()

    base: dict[str, float] = {}
    if a.budget_mb is not None:
        warm = _warm_runtime(a.kind)  # noqa: F841  (kept alive: the plugin stays mapped)
        base = _vm_mb()
        room = a.budget_mb - base["VmRSS"]
        print(json.dumps({"base_rss_mb": base["VmRSS"], "base_vm_mb": base["VmSize"]}), flush=True)
        if a.no_cap:  # still never more than this machine's memory: an uncapped run could take the host down
            room = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
        elif room <= 0:
            print(f"the runtime alone holds {base['VmRSS']:.0f} MB before loading the model", file=sys.stderr)
            return EXIT_OVER_BUDGET
        hard = resource.getrlimit(resource.RLIMIT_AS)[1]
        cap = int((base["VmSize"] + room) * 2**20)
        resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))

    try:
        with np.load(a.feed, allow_pickle=False) as z:
            feed = {k: z[k] for k in z.files}
        if a.kind == "onnx":
            runner = runners.OrtRunner(a.model, a.threads, session=json.loads(a.session) if a.session else None)
            art = None
        elif a.kind == "openvino":
            runner = runners.OvRunner(a.model, a.threads, settings=json.loads(a.session) if a.session else None)
            art = None
        elif a.kind in ("tflite", "ncnn"):
            desc = json.loads(a.session or "{}")
            spec = artifact_mod.InputSpec.from_dict(desc["inputs"]) if desc.get("inputs") else None
            runner = runners.make_runner(Artifact.from_file(a.kind, a.model, input_spec=spec, meta=desc.get("meta")),
                                         a.threads)
            art = None
        else:
            # Hashing a module copies each tensor's bytes (the largest one would inflate the peak), so the
            # load skips it and the hash is checked after the peak has been read.
            real_hash = artifact_mod.sha256_module
            artifact_mod.sha256_module = lambda module: ""
            try:
                art = load_model(a.model)
            finally:
                artifact_mod.sha256_module = real_hash
            runner = runners.make_runner(art, a.threads)
        for _ in range(max(1, a.runs)):
            runner.run(feed)
        peak_mb = maxrss_mb()  # read before anything else allocates
        end = _vm_mb() if base else {}
        if art is not None and a.sha256 and real_hash(art.module) != a.sha256:
            print(f"the model rebuilt from {a.model} is not this artifact (its weights changed since loading)",
                  file=sys.stderr)
            return EXIT_NOT_SAME_MODEL
    except Exception as e:
        if a.budget_mb is None or not _is_alloc_failure(e):
            raise
        msg = (str(e).strip().splitlines() or [""])[-1]
        print(f"allocation failed under the {a.budget_mb:.0f} MB budget: {e.__class__.__name__}: {msg}"[:400],
              file=sys.stderr)
        return EXIT_OVER_BUDGET
    result: dict[str, Any] = {"peak_mb": peak_mb, "import_mb": import_mb}
    if a.cores:
        result["cpus"] = sorted(_process_cpus())
    if base:
        # VmPeak only says when the highest mapping came after the cap was placed; otherwise the end is a floor
        high = end["VmPeak"] if end["VmPeak"] > base["VmPeak"] else max(end["VmSize"], base["VmSize"])
        result["charged_mb"] = base["VmRSS"] + max(0.0, high - base["VmSize"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child(sys.argv[1:]))
    except Exception as e:  # the parent reports our last stderr line
        msg = (str(e).strip().splitlines() or [""])[0]
        print(f"{e.__class__.__name__}: {msg}" if msg else e.__class__.__name__, file=sys.stderr)
        sys.exit(1)
