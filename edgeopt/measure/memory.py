"""Peak memory: the peak RSS of a child process that loads and runs the model (the parent's memory would lie).

The parent writes the feed to a temporary .npz and runs
`python -m edgeopt.measure.memory --kind onnx|torch --model PATH_OR_SOURCE --feed NPZ --threads N --runs R`.
The child imports its runtime, notes its RSS (`import_mb`: interpreter plus runtime, no model), loads the
model, runs it R times and prints {"peak_mb", "import_mb"} as JSON on its last stdout line. ONNX models
load from their file; torch artifacts are rebuilt from meta["source"] (a zoo: name or a Hugging Face
folder), since a live module cannot cross processes, and the rebuilt weights must hash to the artifact's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
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


class MemoryNotMeasurable(InputError):
    """The artifact cannot be loaded in a child process (a torch module without a reloadable source, or
    one whose weights changed since it was loaded). Catch it to record a warning instead of a number."""


@dataclass(frozen=True)
class PeakMemory:
    """Peak RSS of the child that loaded and ran the model, and of the same child before loading it (MB = 2**20 bytes)."""

    peak_mb: float
    import_mb: float

    @property
    def model_mb(self) -> float:
        """The memory the model itself brings: peak minus the bare interpreter and runtime."""
        return max(0.0, self.peak_mb - self.import_mb)

    def __float__(self) -> float:
        return self.peak_mb

    def to_dict(self) -> dict[str, float]:
        return {"peak_mb": self.peak_mb, "import_mb": self.import_mb, "model_mb": self.model_mb}


def _reloadable(source: Any) -> bool:
    if not isinstance(source, str) or not source:
        return False
    if source.startswith("zoo:"):
        return True
    p = Path(source)
    return p.is_dir() and (p / "config.json").exists()


def peak_rss_mb(art: Artifact, feed: dict[str, np.ndarray], threads: int = 1, runs: int = 3,
                timeout_s: float = 300) -> PeakMemory:
    """Peak RSS of a child process that loads `art` and runs it `runs` times on `feed`.

    Raises MemoryNotMeasurable when a torch artifact cannot be rebuilt in the child, and InputError
    (naming the model and the child's last stderr line) when the child fails or times out.
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
    else:
        raise InputError(f"{art.path or art.kind}: no memory measurement for {art.kind!r} models (onnx, torch, openvino)")
    with tempfile.TemporaryDirectory(prefix="edgeopt-mem-") as tmp:
        npz = Path(tmp) / "feed.npz"
        np.savez(npz, **{k: np.asarray(v) for k, v in feed.items()})
        cmd = [sys.executable, "-m", "edgeopt.measure.memory", *args, "--feed", str(npz),
               "--threads", str(int(threads)), "--runs", str(int(runs))]
        # the child must import this same edgeopt, wherever the parent found it
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise InputError(f"{what}: memory measurement timed out after {timeout_s:g} s") from None
    err_lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    last_err = err_lines[-1].strip() if err_lines else f"exit code {proc.returncode}"
    if proc.returncode == EXIT_NOT_SAME_MODEL:
        raise MemoryNotMeasurable(f"{what}: {last_err}")
    if proc.returncode != 0:
        raise InputError(f"{what}: memory measurement failed: {last_err[:300]}")
    out_lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    try:
        result = json.loads(out_lines[-1])
        return PeakMemory(peak_mb=float(result["peak_mb"]), import_mb=float(result["import_mb"]))
    except (IndexError, ValueError, KeyError, TypeError):
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


def _child(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="python -m edgeopt.measure.memory",
                                 description="Load and run one model, then print its peak RSS as JSON.")
    ap.add_argument("--kind", choices=("onnx", "torch", "openvino"), default="onnx")
    ap.add_argument("--model", required=True, help="an .onnx file, or for torch a zoo: name / HF folder")
    ap.add_argument("--feed", required=True, help=".npz with one array per input")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--session", default=None, help="JSON session settings (ONNX)")
    ap.add_argument("--sha256", default=None, help="expected weights hash of the rebuilt torch module")
    a = ap.parse_args(argv)

    if a.kind == "onnx":
        import onnxruntime  # noqa: F401  (the runtime belongs to the baseline)
    elif a.kind == "openvino":
        import openvino  # noqa: F401
    else:
        import torch  # noqa: F401
        import transformers.modeling_utils  # noqa: F401  (~120 MB of library code, not the model's)
        from transformers import AutoConfig, AutoModel  # noqa: F401
    import_mb = maxrss_mb()

    with np.load(a.feed, allow_pickle=False) as z:
        feed = {k: z[k] for k in z.files}
    if a.kind == "onnx":
        runner = runners.OrtRunner(a.model, a.threads, session=json.loads(a.session) if a.session else None)
        art = None
    elif a.kind == "openvino":
        runner = runners.OvRunner(a.model, a.threads, settings=json.loads(a.session) if a.session else None)
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
    if art is not None and a.sha256 and real_hash(art.module) != a.sha256:
        print(f"the model rebuilt from {a.model} is not this artifact (its weights changed since loading)",
              file=sys.stderr)
        return EXIT_NOT_SAME_MODEL
    print(json.dumps({"peak_mb": peak_mb, "import_mb": import_mb}))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(_child(sys.argv[1:]))
    except Exception as e:  # the parent reports our last stderr line
        msg = (str(e).strip().splitlines() or [""])[0]
        print(f"{e.__class__.__name__}: {msg}" if msg else e.__class__.__name__, file=sys.stderr)
        sys.exit(1)
