"""benchmarks/isa/as_avx2.sh: a command run through it finds an AVX2-only CPU in CPUID (what every library
dispatches on) and in /proc/cpuinfo, keeps AVX2 itself, and its own SIGSEGV handler still gets real faults."""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "isa" / "as_avx2.sh"


def _host_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))


def _can_mask() -> str | None:
    """Why this machine cannot run the script, or None."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return "not x86-64"
    if "cpuid_fault" not in _host_flags():
        return "no CPUID faulting on this CPU / kernel"
    if shutil.which(os.environ.get("CC", "cc")) is None:
        return "no C compiler"
    ns = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-r", "-m"]
    if shutil.which("unshare") is None or subprocess.run([*ns, "true"], capture_output=True).returncode != 0:
        return "no private mount namespace"
    return None


pytestmark = pytest.mark.skipif(_can_mask() is not None, reason=f"ISA masking unavailable: {_can_mask()}")

PROBE = """
import json, torch
from numpy._core._multiarray_umath import __cpu_features__ as f
from edgeopt.target import detect_target
t = detect_target()
print(json.dumps({"torch": torch.backends.cpu.get_cpu_capability(), "numpy": {k: bool(v) for k, v in f.items()},
                  "isa": list(t.isa), "model": t.cpu_model}))
"""


def _masked(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def test_a_command_sees_avx2_but_no_avx512_vnni_or_amx():
    got = _masked(sys.executable, "-c", PROBE)
    assert got.returncode == 0, got.stderr
    seen = json.loads(got.stdout.strip().splitlines()[-1])
    host_avx2 = "avx2" in _host_flags()
    # CPUID, as PyTorch's and NumPy's own dispatch read it
    assert seen["torch"] == ("AVX2" if host_avx2 else "DEFAULT")
    assert seen["numpy"]["AVX2"] is host_avx2
    assert not any(v for k, v in seen["numpy"].items() if k.startswith("AVX512"))
    # /proc/cpuinfo, as edgeopt's target detection reads it: the flags and a model name that says so
    assert ("avx2" in seen["isa"]) is host_avx2
    assert not [f for f in seen["isa"] if f.startswith(("avx512", "amx", "avx_vnni"))]
    assert seen["model"].endswith("(ISA masked to AVX2)")


def test_the_programs_own_segfault_handler_still_gets_real_faults():
    got = _masked(sys.executable, "-X", "faulthandler", "-c", "import ctypes; ctypes.string_at(0)")
    assert got.returncode != 0
    assert "Segmentation fault" in got.stderr  # faulthandler's report: its handler ran, after the mask's


def test_without_a_command_it_prints_its_usage():
    got = _masked()
    assert got.returncode == 2 and got.stderr.startswith("usage:")
