"""The LiteRT runner: a .tflite model on the CPU through ai-edge-litert (XNNPACK), one signature, pinned threads.

Two APIs of the same runtime:
- "interpreter" (`ai_edge_litert.interpreter.Interpreter`): the classic API. The XNNPACK delegate is applied
  by default (op resolver AUTO); `num_threads` sizes its thread pool. The Python API offers no XNNPACK
  weight cache.
- "compiled" (`ai_edge_litert.compiled_model.CompiledModel`, LiteRT 2.x; the default, see `DEFAULT_API`): the
  CPU accelerator (XNNPACK) with `CpuOptions(num_threads, xnnpack_weight_cache_path)` (the weight cache is
  one file: XNNPACK's packed weights, written on the first load and memory-mapped by later ones) and
  preallocated tensor buffers.
Each `run` returns copies of the outputs in the signature's declared output order.

Written here by hand (no library does it): feeds are matched to signature inputs by name (litert-torch
names them after the torch inputs; a name that is not a Python identifier is exported sanitized, see
`signature_name`), cast to the input's dtype (litert-torch stores int64 inputs as int32), quantized when the
model takes quantized inputs (a fully int8 model from static quantization) and its outputs dequantized to
float32; a model exported with a static batch runs a feed of another batch in chunks of its batch (the last
one padded), because XNNPACK cannot reshape a graph whose shapes were fixed at conversion.

Shared with every litert-torch conversion (convert.litert, diffusion.litert): `signature_name` and
`conversion_error` (a failed conversion in one line).
"""

from __future__ import annotations

import atexit
import inspect
import keyword
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgeopt.analyze.tflite import tflite_info
from edgeopt.errors import InputError, first_line
from edgeopt.extras import require
from edgeopt.measure.runners import in_fixed_batches

Feed = dict[str, np.ndarray]
Api = Literal["interpreter", "compiled"]
# The compiled API by default: on an AVX-512 EPYC (2 threads) it ran zoo:digits-cnn's dynamic-int8 model at
# ~1.7 ms where the interpreter took 10-14 ms, and fp32 at the same speed as the interpreter. Its first load in a
# process costs ~1.5 s (the LiteRT environment, shared by later loads).
DEFAULT_API: Api = "compiled"
_ENVIRONMENT: list[Any] = []  # the LiteRT environment compiled models share (made by the first one)


@contextmanager
def quiet_native_stderr():
    """Hold back what LiteRT's C++ runtime prints to stderr (tens of INFO lines on every compile and teardown, a
    failed vendor-plugin load) while the block runs; an error raised inside gets the last line it printed.

    Written by hand: LiteRT offers no log-level setting (TF_CPP_MIN_LOG_LEVEL does not reach it), so file
    descriptor 2 is pointed at a temporary file for the block."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to redirect
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except Exception as e:
            os.dup2(saved, 2)
            tmp.seek(0)
            lines = [ln for ln in tmp.read().decode(errors="replace").splitlines()
                     if ln.strip() and not ln.startswith("INFO:")]
            if lines and not str(e).strip():
                raise type(e)(lines[-1][:300]) from None
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_USED: list[bool] = []  # set when a LiteRT runner was opened in this process


@atexit.register
def _quiet_teardown() -> None:
    """LiteRT's accelerator registry prints INFO lines from C++ static destructors, after Python has finished: when
    this process used LiteRT, stderr is pointed at /dev/null at exit (Python's own stderr is flushed first)."""
    if not _USED:
        return
    import sys

    try:
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
    except OSError:
        pass


def named_inputs(module: Any, names: list[str]) -> Any:
    """`module` behind a forward whose parameters carry the model's input names, so litert-torch names the
    signature's inputs after them (it takes them from the keyword arguments it traces with). Written by hand:
    litert-torch names positional inputs args_0, args_1, ... ."""
    import torch  # lazy: torch only when a conversion runs

    param = inspect.Parameter

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        return self.inner(*args, *(kwargs[n] for n in names[len(args):]))

    forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [param("self", param.POSITIONAL_OR_KEYWORD)] + [param(n, param.POSITIONAL_OR_KEYWORD) for n in names])
    cls = type("LiteRtInputs", (torch.nn.Module,), {"forward": forward})
    wrapper = cls()
    wrapper.inner = module
    return wrapper.eval()


def signature_name(name: str) -> str:
    """The name an input gets in a litert-torch signature: `name` itself when it is a Python identifier
    (litert-torch generates Python code with it), else with every other character replaced by `_`."""
    s = re.sub(r"\W", "_", name)
    if not s or s[0].isdigit() or keyword.iskeyword(s):
        s = f"_{s}"
    return s


def _where(text: str, module: Any, marker: str) -> str | None:
    """Where the traceback block after `marker` ends (its innermost `File "...", line N, in f` entry): the
    submodule whose forward holds that line, the file:line and the source line."""
    i = text.find(marker)
    if i < 0:
        return None
    block = text[i + len(marker):].lstrip("\n").split("\n\n")[0]
    found = re.findall(r'File "([^"]+)", line (\d+), in (\w+)\n\s*(.*)', block)
    if not found:
        return None
    path, line_s, func, code = found[-1]
    line = int(line_s)
    part = None
    spans: dict[type, tuple[str, int, int] | None] = {}  # class -> its forward's (file, first line, end)
    for name, sub in module.named_modules():
        cls = type(sub)
        if not name:
            continue
        if cls not in spans:
            try:
                lines, start = inspect.getsourcelines(cls.forward)
                spans[cls] = (os.path.realpath(inspect.getsourcefile(cls.forward) or ""), start, start + len(lines))
            except (OSError, TypeError):
                spans[cls] = None
        span = spans[cls]
        if span and span[0] == os.path.realpath(path) and span[1] <= line < span[2]:
            part = f"{name} ({cls.__name__}.{func})"
            break
    if part is None:
        part = f"{type(module).__name__}.{func}"
    return f"{part} at {Path(path).name}:{line} `{code.strip()[:80]}`"


def _from_torch_export(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None:
        f = tb.tb_frame.f_code.co_filename.replace("\\", "/")
        if "/torch/export/" in f or "/torch/_export/" in f:
            return True
        tb = tb.tb_next
    return False


def conversion_error(e: BaseException, module: Any, what: str) -> str:
    """One line, starting with `what` (who converted), saying why litert-torch could not convert `module`: the op
    it cannot lower, or the part of the model torch.export cannot trace (with the source line), else the converter's
    own first line. Written by hand: the converter's errors carry the failing op deep inside a long message."""
    text = str(e)
    m = re.search(r"Lowering not found: (\S+)", text)
    if m:
        where = _where(text, module, "Original traceback:")
        return f"{what}: litert-torch cannot lower op {m.group(1)}" + (f" (in {where})" if where else "")
    if _from_torch_export(e) or "torch.export" in text:
        where = _where(text, module, "The following call raised this error:")
        reason = first_line(e, 200)
        if "data-dependent" in text:
            reason = f"data-dependent control flow ({reason})"
        return f"{what}: torch.export cannot trace the model" + (f" in {where}" if where else "") + \
            f": {reason}"
    return f"{what}: litert-torch cannot convert the model: {type(e).__name__}: {first_line(e, 200)}"


def _quantize(x: np.ndarray, dtype: np.dtype, q: dict[str, Any]) -> np.ndarray:
    scale, zp = float(q["scale"][0]), int(q["zero_point"][0] if q["zero_point"] else 0)
    info = np.iinfo(dtype)
    return np.clip(np.round(np.asarray(x, np.float32) / scale) + zp, info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, q: dict[str, Any]) -> np.ndarray:
    scale, zp = float(q["scale"][0]), int(q["zero_point"][0] if q["zero_point"] else 0)
    return ((y.astype(np.float32) - zp) * scale).astype(np.float32)


def open_compiled_model(path: str | Path, threads: int, weight_cache: str | Path | None = None) -> Any:
    """A LiteRT CompiledModel of `path` on the CPU accelerator (XNNPACK) with `threads` threads, in the LiteRT
    environment every compiled model of this process shares; `weight_cache`: XNNPACK's packed-weight file.
    Marks LiteRT as used (its teardown output is then silenced at exit). Call inside `quiet_native_stderr`."""
    cm_mod = require("ai_edge_litert.compiled_model", "the LiteRT runner (compiled API)")
    from ai_edge_litert.hardware_accelerator import HardwareAccelerator  # lazy: part of the optional runtime
    from ai_edge_litert.options import CpuOptions, Options

    if not _USED:
        _USED.append(True)
    cpu = CpuOptions(num_threads=int(threads))
    if weight_cache is not None:
        Path(weight_cache).parent.mkdir(parents=True, exist_ok=True)
        cpu.xnnpack_weight_cache_path = str(weight_cache)
    cm = cm_mod.CompiledModel.from_file(
        str(path), environment=_ENVIRONMENT[0] if _ENVIRONMENT else None,
        options=Options(hardware_accelerators=HardwareAccelerator.CPU, cpu_options=cpu))
    if not _ENVIRONMENT:
        _ENVIRONMENT.append(cm.environment)
    return cm


class LiteRtRunner:
    """A LiteRT model (.tflite) on the CPU with `threads` XNNPACK threads, running one signature.

    `signature`: the signature key to run (default: the file's first; a model without signatures runs its
    main graph with the interpreter API). `api`: "interpreter" or "compiled" (see the module docstring;
    default `DEFAULT_API`). `weight_cache`: a file for XNNPACK's packed weights (compiled API only; written on
    the first load, memory-mapped by later ones).
    Raises InputError with one line for a missing, truncated or corrupt file, an unknown signature or a
    feed that does not fit.
    """

    name = "litert"

    def __init__(self, path: str | Path, threads: int, signature: str | None = None, api: Api | None = None,
                 weight_cache: str | Path | None = None):
        self.path = Path(path)
        if int(threads) < 1:
            raise InputError(f"{self.path}: threads must be >= 1, got {threads}")
        self.threads = int(threads)
        self.api: Api = api or DEFAULT_API
        if self.api not in ("interpreter", "compiled"):
            raise InputError(f"{self.path}: unknown LiteRT api {self.api!r} (known: interpreter, compiled)")
        if weight_cache is not None and self.api != "compiled":
            raise InputError(f"{self.path}: the XNNPACK weight cache needs api='compiled' (the interpreter's "
                             "Python API does not offer it)")
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such .tflite file")
        info = tflite_info(self.path)  # InputError "not a valid .tflite file (...)" for a truncated/corrupt one
        sigs = info["signatures"]
        if signature is not None and signature not in sigs:
            raise InputError(f"{self.path}: no signature {signature!r} (signatures: {', '.join(sigs) or 'none'})")
        if not sigs and self.api == "compiled":
            raise InputError(f"{self.path}: the model has no signature; run it with api='interpreter'")
        self.signature = signature or (next(iter(sigs)) if sigs else None)
        io = sigs[self.signature] if self.signature else {"inputs": info["inputs"], "outputs": info["outputs"]}
        self._inputs = io["inputs"]
        self._outputs = io["outputs"]
        self.input_names = [t["name"] for t in self._inputs]
        self.output_names = [t["name"] for t in self._outputs]
        self.label = f"LiteRT {self.api} · XNNPACK · {self.threads} thread{'s' if self.threads > 1 else ''}" + \
            (f" · {self.signature}" if self.signature and len(sigs) > 1 else "")
        self._static = all(d >= 0 for t in self._inputs for d in t["shape"])
        try:
            if not _USED:
                _USED.append(True)
            with quiet_native_stderr():
                if self.api == "interpreter":
                    self._open_interpreter()
                else:
                    self._open_compiled(weight_cache)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{self.path}: not a valid .tflite file ({first_line(e, 200)})") from None

    # --- opening -------------------------------------------------------------------------------------------
    def _open_interpreter(self) -> None:
        mod = require("ai_edge_litert.interpreter", "the LiteRT runner")
        self._interp = mod.Interpreter(model_path=str(self.path), num_threads=self.threads)
        if self.signature is not None:
            self._sig = self._interp.get_signature_runner(self.signature)
        else:
            self._sig = None
            self._interp.allocate_tensors()
            self._in_index = [d["index"] for d in self._interp.get_input_details()]
            self._out_index = [d["index"] for d in self._interp.get_output_details()]
        self._dtypes = [np.dtype(t["dtype"]) for t in self._inputs]

    def _open_compiled(self, weight_cache: str | Path | None) -> None:
        self._cm = open_compiled_model(self.path, self.threads, weight_cache)
        self._sig_index = self._cm.get_signature_index(self.signature)
        self._in_bufs = self._cm.create_input_buffers(self._sig_index)
        self._out_bufs = self._cm.create_output_buffers(self._sig_index)
        # the buffers follow the compiled model's own signature order: map them to the file's order
        listed = self._cm.get_signature_list()[self.signature]
        self._in_pos = [listed["inputs"].index(n) for n in self.input_names]
        self._out_pos = [listed["outputs"].index(n) for n in self.output_names]
        self._dtypes = [np.dtype(t["dtype"]) for t in self._inputs]

    # --- running ---------------------------------------------------------------------------------------------
    def _arrays(self, feed: Feed) -> list[np.ndarray]:
        """The feed's arrays in signature input order, as the dtypes the model takes."""
        by_sig = {signature_name(k): k for k in feed}
        out = []
        for t, dt in zip(self._inputs, self._dtypes):
            key = t["name"] if t["name"] in feed else by_sig.get(t["name"])
            if key is None:
                raise InputError(f"{self.path}: feed has no input {t['name']!r} (has: {', '.join(feed) or 'none'})")
            x = np.asarray(feed[key])
            if x.dtype != dt:
                if "quantization" in t and np.issubdtype(dt, np.integer) and np.issubdtype(x.dtype, np.floating):
                    x = _quantize(x, dt, t["quantization"])
                else:
                    x = x.astype(dt)
            out.append(np.ascontiguousarray(x))
        return out

    def _invoke(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        if self.api == "compiled":
            for pos, x in zip(self._in_pos, arrays):
                self._in_bufs[pos].write(x)
            self._cm.run_by_index(self._sig_index, self._in_bufs, self._out_bufs)
            return [self._out_bufs[pos].read(int(np.prod(t["shape"])), np.dtype(t["dtype"])).reshape(t["shape"])
                    for pos, t in zip(self._out_pos, self._outputs)]
        if self._sig is not None:
            res = self._sig(**dict(zip(self.input_names, arrays)))
            return [res[n] for n in self.output_names]
        for i, x in zip(self._in_index, arrays):
            self._interp.set_tensor(i, x)
        self._interp.invoke()
        return [self._interp.get_tensor(i) for i in self._out_index]

    def _fits(self, arrays: list[np.ndarray]) -> bool:
        return all(tuple(x.shape) == tuple(t["shape"]) for x, t in zip(arrays, self._inputs))

    def _run_in_chunks(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """A static-shape model on a feed whose batch (dim 0) differs: chunks of the model's batch, the last
        padded by repeating its final row, outputs concatenated and cut back to the feed's batch."""
        model_b = [int(t["shape"][0]) if t["shape"] else 0 for t in self._inputs]
        n = {int(x.shape[0]) if x.ndim else -1 for x in arrays}
        ok = (len(set(model_b)) == 1 and len(n) == 1 and model_b[0] > 0 and next(iter(n)) > 0
              and all(tuple(x.shape[1:]) == tuple(t["shape"][1:]) for x, t in zip(arrays, self._inputs))
              and all(t["shape"] and int(t["shape"][0]) == model_b[0] for t in self._outputs))
        if not ok:
            want = ", ".join(f"{t['name']}{list(t['shape'])}" for t in self._inputs)
            got = ", ".join(f"{t['name']}{list(x.shape)}" for x, t in zip(arrays, self._inputs))
            raise InputError(f"{self.path}: the model was converted for fixed shapes ({want}), the feed has {got}")
        return in_fixed_batches(self._invoke, arrays, model_b[0])

    def run(self, feed: Feed) -> list[np.ndarray]:
        if self._closed:
            raise InputError(f"{self.path}: runner is closed")
        arrays = self._arrays(feed)
        try:
            if self._static and not self._fits(arrays):
                outs = self._run_in_chunks(arrays)
            elif self.api == "compiled" and not self._fits(arrays):
                raise InputError(f"{self.path}: the compiled API runs dynamic-shape models only at their "
                                 "declared shapes; use api='interpreter'")
            elif not getattr(self, "_warm", False):  # the first call registers accelerators, loudly
                with quiet_native_stderr():
                    outs = self._invoke(arrays)
                self._warm = True
            else:
                outs = self._invoke(arrays)
        except InputError:
            raise
        except Exception as e:  # wrong dtype/shape: LiteRT says which; keep one line
            raise InputError(f"{self.path}: run failed: {first_line(e)}") from None
        result = []
        for y, t in zip(outs, self._outputs):
            if "quantization" in t and np.issubdtype(y.dtype, np.integer):
                y = _dequantize(y, t["quantization"])
            result.append(y if y.flags.owndata and y.flags.writeable else np.array(y, copy=True))
        return result

    @property
    def _closed(self) -> bool:
        return getattr(self, "_interp", None) is None and getattr(self, "_cm", None) is None

    def close(self) -> None:
        self._sig = None
        self._interp = None
        self._in_bufs = self._out_bufs = []
        cm = getattr(self, "_cm", None)
        self._cm = None
        if cm is not None:
            with quiet_native_stderr():
                cm.close()

    def __enter__(self) -> LiteRtRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
