"""Loader of the native CPU kernels in `edgeopt/kernels/csrc/`: compiled once, cached, with a one-line reason when not.

Written by hand: the kernels (GroupNorm/LayerNorm + activation in one pass, partially fused softmax and
FlashAttention-style attention, Winograd F(2×2 / 4×4, 3×3) convolution; fp32, forward only) are a small
C++ extension that `torch.utils.cpp_extension` compiles with the system C++ compiler and ninja. They are
registered as the operators `torch.ops.edgeopt_native.*` and choose AVX2+FMA or plain C++ at run time,
per call.

The build lives in the edgeopt cache (`$EDGEOPT_CACHE`, else ~/.cache/edgeopt) under `native/<key>/`, where
the key hashes the sources, the compile flags, the torch version and the machine type, so a changed source
or a new torch builds anew and an unchanged one is loaded without compiling. A file lock keeps two processes
from compiling at once (the second waits, then loads what the first built). Environment: EDGEOPT_NATIVE=0
turns the kernels off; EDGEOPT_NATIVE_SCALAR=1 forces the scalar code path (tests compare the two).
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from edgeopt.errors import EdgeoptError, first_line

CSRC = Path(__file__).with_name("csrc")
SOURCES: tuple[str, ...] = ("norm.cpp", "attention.cpp", "winograd.cpp", "ops.cpp")
HEADERS: tuple[str, ...] = ("vec.h", "kernels.h")
CFLAGS: tuple[str, ...] = ("-O3", "-fopenmp")  # -fopenmp: at::parallel_for runs on torch's OpenMP threads
NAMESPACE = "edgeopt_native"
LOCK_TIMEOUT_S = 1800.0
# attention implementation names (edgeopt.kernels.attention, kernels.attention pass) -> the operator computing it
ATTENTION_IMPLS: dict[str, str] = {"partial_softmax_native": "partial_softmax_attention",
                                   "flash_native": "flash_attention"}
WINOGRAD_TILES: tuple[int, ...] = (2, 4)  # the output tiles m the native Winograd kernel computes
WINOGRAD_FEW_TILES = 16  # winograd.cpp kFewTiles: below this many tiles its GEMM runs transposed
_LIB_VERSION = 1  # bump when the way the library is built or loaded changes

_state: dict[str, Any] = {"ops": None, "error": None, "info": None, "warned": False}


class NativeUnavailable(EdgeoptError):
    """The native kernels cannot be used here; the message is the one-line reason."""


def build_key() -> str:
    """Hash of what decides the compiled library: sources, headers, flags, torch version, machine type."""
    import torch  # lazy: imports torch

    h = hashlib.sha256()
    for name in SOURCES + HEADERS:
        h.update(name.encode() + b"\0" + (CSRC / name).read_bytes() + b"\0")
    h.update(repr((CFLAGS, torch.__version__, platform.machine(), sys.platform, _LIB_VERSION)).encode())
    return h.hexdigest()[:16]


def build_dir() -> Path:
    """The folder this build compiles into: <edgeopt cache>/native/<key>."""
    # lazy: edgeopt.zoo pulls numpy and the training code, and the pass registry imports this module
    from edgeopt.zoo.digits import cache_dir

    return cache_dir() / "native" / build_key()


def _compiler() -> str:
    return os.environ.get("CXX", "c++")


def _ninja() -> str | None:
    """The ninja executable: on PATH, else next to this Python (a venv that is not activated)."""
    found = shutil.which("ninja")
    if found:
        return found
    beside = Path(sys.executable).with_name("ninja")
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


def unavailable_reason() -> str | None:
    """Why the native kernels cannot be used here, in one line, or None. Compiles nothing.

    Checks the switch (EDGEOPT_NATIVE=0), whether loading already failed in this process (a compile
    error), then the C++ compiler ($CXX, else c++) and ninja; without them a library already built into
    the cache for this torch still counts as available.
    """
    if os.environ.get("EDGEOPT_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return "native kernels turned off by EDGEOPT_NATIVE=0"
    if _state["ops"] is not None:
        return None
    if _state["error"] is not None:
        return _state["error"]
    if shutil.which(_compiler()) is None:
        missing = f"no C++ compiler: {_compiler()!r} not found on PATH (install g++ or set CXX)"
    elif _ninja() is None:
        missing = "ninja not found (pip install ninja), needed to compile the native kernels"
    else:
        return None
    folder = build_dir()
    return None if (folder / "built.txt").is_file() and _library_path(folder).is_file() else missing


def load() -> Any:
    """The operator namespace `torch.ops.edgeopt_native`, compiling the library first if this build has none yet.

    Raises NativeUnavailable with a one-line reason when it cannot (no compiler, no ninja, a compile error,
    turned off); the reason is also what `unavailable_reason()` returns from then on.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise NativeUnavailable(reason)
    if _state["ops"] is not None:
        return _state["ops"]
    import torch  # lazy: imports torch

    try:
        info = ensure_built()
    except OSError as e:  # the cache folder cannot be written
        _state["error"] = f"cannot build the native kernels in the edgeopt cache: {first_line(e)}"
        raise NativeUnavailable(_state["error"]) from None
    except NativeUnavailable as e:
        _state["error"] = str(e)
        raise
    try:
        torch.ops.load_library(info["path"])
    except OSError as e:
        _state["error"] = f"the compiled native kernels at {info['path']} do not load: {first_line(e)}"
        raise NativeUnavailable(_state["error"]) from None
    _state["info"], _state["ops"] = info, getattr(torch.ops, NAMESPACE)
    return _state["ops"]


def available() -> bool:
    """Whether the native kernels load (compiling them if needed); `unavailable_reason()` says why not."""
    try:
        load()
    except NativeUnavailable:
        return False
    return True


def ops_or_warn() -> Any | None:
    """The operators, or None after warning (once per process) with the reason, for callers that fall back."""
    try:
        return load()
    except NativeUnavailable as e:
        if not _state["warned"]:
            _state["warned"] = True
            warnings.warn(f"edgeopt: native kernels unavailable, using the PyTorch path: {e}", RuntimeWarning,
                          stacklevel=3)
        return None


def build_info() -> dict[str, Any] | None:
    """How this process got the library: {"path", "key", "compiled" (built now, not found cached), "seconds"
    (of the build now, or of the one that made the cached library), "isa"}; None before a successful `load`."""
    if _state["info"] is None:
        return None
    return {**_state["info"], "isa": str(_state["ops"].cpu_isa())}


def _library_path(folder: Path) -> Path:
    return folder / f"edgeopt_native_{folder.name}.so"


def ensure_built() -> dict[str, Any]:
    """This build's library in the cache, compiled first if missing (one process at a time, under a file lock).

    Returns {"path", "key", "compiled" (whether this call compiled it), "seconds" (of that compile, or of the
    one that made the cached library)}; a failed compile is NativeUnavailable naming the first error.
    """
    from filelock import FileLock, Timeout  # comes with torch

    folder = build_dir()
    lib, done = _library_path(folder), folder / "built.txt"
    info: dict[str, Any] = {"path": str(lib), "key": folder.name, "compiled": False}

    def built() -> bool:
        return done.is_file() and lib.is_file()

    if not built():
        folder.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(str(folder) + ".lock", timeout=LOCK_TIMEOUT_S):
                if not built():  # nobody built it while this process waited
                    info["seconds"] = _build(folder, lib)
                    info["compiled"] = True
                    _write_text_atomic(done, f"{info['seconds']:.1f}\n")
        except Timeout:
            raise NativeUnavailable(f"another process has held the native-kernel build lock {folder}.lock for "
                                    f"over {LOCK_TIMEOUT_S:.0f} s") from None
    if not info["compiled"]:
        info["seconds"] = float(done.read_text().strip() or 0)
    return info


def _build(folder: Path, lib: Path) -> float:
    """Compile the sources into `lib` (seconds taken); a failure is NativeUnavailable naming the first error."""
    from torch.utils import cpp_extension  # lazy: imports torch

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lock").unlink(missing_ok=True)  # torch's own build baton, left behind by a killed build
    env_path = os.environ.get("PATH", "")
    ninja = _ninja()
    print(f"edgeopt: compiling the native CPU kernels into {folder} (once per source and torch version, about "
          f"a minute)", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        if ninja and shutil.which("ninja") is None:  # ninja beside this Python: put it on PATH for the build
            os.environ["PATH"] = os.pathsep.join([str(Path(ninja).parent), env_path])
        cpp_extension.load(name=lib.stem, sources=[str(CSRC / s) for s in SOURCES], extra_cflags=list(CFLAGS),
                           extra_include_paths=[str(CSRC)], build_directory=str(folder), is_python_module=False,
                           verbose=False)
    except Exception as e:  # the compiler's output arrives as one long RuntimeError
        raise NativeUnavailable(f"native kernels failed to compile ({_first_error(str(e))}); "
                                f"build folder {folder}") from None
    finally:
        os.environ["PATH"] = env_path
    return time.perf_counter() - start


def _first_error(log: str) -> str:
    """The first compiler error line of a build log, else its first line."""
    for line in log.splitlines():
        if "error:" in line:
            return line.strip()[:300]
    return first_line(RuntimeError(log))


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def use_scalar(scalar: bool | None = None) -> bool:
    """The scalar code path: `scalar` when given, else EDGEOPT_NATIVE_SCALAR=1 in the environment."""
    if scalar is not None:
        return bool(scalar)
    return os.environ.get("EDGEOPT_NATIVE_SCALAR", "").strip().lower() in ("1", "true", "yes", "on")


# ------------------------------------------------------------------ the kernels (fp32, contiguous, CPU)
def group_norm_act(x: Any, num_groups: int, weight: Any, bias: Any, eps: float = 1e-5, act: str = "silu",
                   scalar: bool | None = None) -> Any:
    """act(group_norm(x)) for x (N, C, *), act in silu, gelu, gelu_tanh, none; ValueError on other input."""
    return load().group_norm_act(x, num_groups, weight, bias, float(eps), act, use_scalar(scalar))


def layer_norm_act(x: Any, normalized_shape: tuple[int, ...], weight: Any, bias: Any, eps: float = 1e-5,
                   act: str = "gelu", scalar: bool | None = None) -> Any:
    """act(layer_norm(x)) over the trailing `normalized_shape` dims; ValueError on other input."""
    return load().layer_norm_act(x, list(normalized_shape), weight, bias, float(eps), act, use_scalar(scalar))


def partial_softmax_attention(q: Any, k: Any, v: Any, scale: float, mask: Any = None, q_block: int = 256,
                              k_block: int = 512, scalar: bool | None = None) -> Any:
    """softmax(q k^T · scale + mask) v by the partially fused softmax; q (B, nh, Tq, hs), k (B, nh, Tk, hs),
    v (B, nh, Tk, hv), mask an additive float32 (B, nh, Tq, Tk) tensor of any strides, or None."""
    return load().partial_softmax_attention(q, k, v, float(scale), mask, q_block, k_block, use_scalar(scalar))


def flash_attention(q: Any, k: Any, v: Any, scale: float, mask: Any = None, q_block: int = 256, k_block: int = 512,
                    scalar: bool | None = None) -> Any:
    """softmax(q k^T · scale + mask) v, tiled with an online softmax; arguments as `partial_softmax_attention`."""
    return load().flash_attention(q, k, v, float(scale), mask, q_block, k_block, use_scalar(scalar))


def attention_workspace_bytes(B: int, nh: int, Tq: int, Tk: int, q_block: int, k_block: int,
                              threads: int) -> int:
    """Scratch bytes the native attention kernels allocate for these shapes on `threads` threads, as the C++
    code sizes them: per thread in use, one (q_block × k_block) score block (rows padded to 8 floats) and two
    row vectors; the query block shrinks when batch × heads alone would leave threads idle."""
    qb = max(1, min(q_block, Tq))
    bh = B * nh
    if bh > 0 and bh * -(-Tq // qb) < threads:
        qb = max(1, -(-Tq // -(-threads // bh)))
    items = bh * -(-Tq // qb)
    if items == 0:
        return 0
    chunks = 1 if items <= 1 or threads <= 1 else -(-items // -(-items // threads))
    kb = min(k_block, Tk)
    return chunks * 4 * (qb * (-(-kb // 8) * 8) + 2 * qb)


def winograd_conv2d(x: Any, U: Any, bias: Any, padding: tuple[int, int, int, int], m: int,
                    scalar: bool | None = None) -> Any:
    """3×3 convolution of x (N, C_in, H, W) as Winograd F(m×m, 3×3), m in WINOGRAD_TILES, stride 1, groups 1.

    U (α², C_out, C_in) holds the transformed weights G g G^T (`WinogradConv2d.weight_transformed`), bias
    (C_out) or None, `padding` the zero padding (left, right, top, bottom). Returns (N, C_out, Ho, Wo).
    """
    return load().winograd_conv2d(x, U, bias, [int(p) for p in padding], int(m), use_scalar(scalar))


def winograd_matrices(m: int) -> tuple[Any, Any]:
    """The float32 (A^T, B^T) of F(m×m, 3×3) compiled into the native kernel, shapes (m, α) and (α, α)."""
    return tuple(load().winograd_matrices(int(m)))


def winograd_workspace_bytes(input_shape: tuple[int, ...], c_out: int, m: int,
                             padding: tuple[int, int, int, int], threads: int) -> int:
    """Scratch bytes `winograd_conv2d` allocates at its peak, as the C++ code sizes them: the transformed tiles
    V (α², C_in, P) and, during the GEMM, the products M (α², C_out, P) (P = N·th·tw tiles); before the GEMM
    each parallel chunk (one per thread in use, over the N·C_in planes) holds one padded plane instead of M.
    Below WINOGRAD_FEW_TILES tiles the GEMM computes M^T, copied into M's layout: both exist at once."""
    N, C, H, W = (int(s) for s in input_shape)
    left, right, top, bottom = padding
    th, tw = -(-(H + top + bottom - 2) // m), -(-(W + left + right - 2) // m)
    a2, P, items = (m + 2) ** 2, N * th * tw, N * C
    if N == 0 or c_out == 0:
        return 0
    chunks = 0 if items == 0 else 1 if items == 1 or threads <= 1 else -(-items // -(-items // threads))
    plane = (th * m + 2) * m * ((-(-tw // 8)) * 8 + 1)
    products = a2 * c_out * P * (2 if P < WINOGRAD_FEW_TILES else 1)  # few tiles: M^T and its transposed copy
    return 4 * (a2 * C * P + max(chunks * plane, products))


def workspace_bytes() -> int:
    """Scratch bytes (all threads' buffers together) the last native kernel call in this process allocated."""
    return int(load().workspace_bytes())


__all__ = ["NativeUnavailable", "ATTENTION_IMPLS", "SOURCES", "HEADERS", "CFLAGS", "build_key", "build_dir", "unavailable_reason",
           "load", "available", "ensure_built", "ops_or_warn", "build_info", "attention_workspace_bytes", "use_scalar", "group_norm_act", "layer_norm_act",
           "partial_softmax_attention", "flash_attention", "WINOGRAD_TILES", "WINOGRAD_FEW_TILES", "winograd_conv2d",
           "winograd_matrices", "winograd_workspace_bytes", "workspace_bytes"]
