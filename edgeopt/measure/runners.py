"""Runners: one object per model that runs a feed and returns numpy outputs (ONNX Runtime or PyTorch).

Every measurement (latency, memory, fidelity, bench) goes through a runner, so all of them see the same
session settings: pinned intra-op threads, one inter-op thread, sequential execution, and by default no
spin-waiting threads (when sessions are timed interleaved in one process, the spinning threads of one
session steal CPU from the next one; measured here: fp32 MiniLM looked 42 ms instead of 16 ms).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from edgeopt.artifact import Artifact
from edgeopt.data import to_torch_args
from edgeopt.errors import InputError, first_line
from edgeopt.extras import require

Feed = dict[str, np.ndarray]

# session dict keys a tuning pass may set (meta["session"]), and graph optimization level names
SESSION_KEYS = ("threads", "graph_optimization_level", "provider", "spinning")
OPT_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "layout": "ORT_ENABLE_LAYOUT",
    "all": "ORT_ENABLE_ALL",
}
_PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                     "openvino": "OpenVINOExecutionProvider", "xnnpack": "XnnpackExecutionProvider"}


@runtime_checkable
class Runner(Protocol):
    """What every runner offers: its runtime name, `run(feed) -> outputs` and `close()`."""

    name: str
    threads: int

    def run(self, feed: Feed) -> list[np.ndarray]: ...

    def close(self) -> None: ...


def _first_line(e: BaseException) -> str:
    return first_line(e)


def in_fixed_batches(invoke: Callable[[list[np.ndarray]], Sequence[np.ndarray]], arrays: list[np.ndarray],
                     batch: int) -> list[np.ndarray]:
    """`invoke` (a model fixed to `batch` rows) on `arrays` of another leading size: chunks of `batch` rows, the
    last padded by repeating its final row; outputs whose leading dim is `batch` are concatenated over the chunks
    and cut back to the arrays' size, any other output is the last chunk's."""
    total = int(arrays[0].shape[0])
    parts = []
    for start in range(0, total, batch):
        chunk = [x[start:start + batch] for x in arrays]
        short = batch - chunk[0].shape[0]
        if short:
            chunk = [np.concatenate([c, np.repeat(c[-1:], short, axis=0)]) for c in chunk]
        parts.append(list(invoke(chunk)))
    return [np.concatenate([p[i] for p in parts])[:total] if np.ndim(y) and np.shape(y)[0] == batch else y
            for i, y in enumerate(parts[-1])]


class OrtRunner:
    """An ONNX Runtime session on one model file with pinned threads (see the module docstring)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int, session: dict[str, Any] | None = None,
                 spinning: bool = False):
        import onnxruntime as ort

        self.path = Path(path)
        session = dict(session or {})
        unknown = sorted(set(session) - set(SESSION_KEYS))
        if unknown:
            raise InputError(f"{self.path}: unknown session setting {unknown[0]!r} (known: {', '.join(SESSION_KEYS)})")
        self.threads = int(session.get("threads") or threads)
        if self.threads < 1:
            raise InputError(f"{self.path}: threads must be >= 1, got {self.threads}")
        so = ort.SessionOptions()
        so.intra_op_num_threads = self.threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.log_severity_level = 3
        if session.get("spinning") is not None:  # the model's own setting (session.spinning) wins
            spinning = bool(session["spinning"])
        self.spinning = bool(spinning)
        flag = "1" if spinning else "0"
        so.add_session_config_entry("session.intra_op.allow_spinning", flag)
        so.add_session_config_entry("session.inter_op.allow_spinning", flag)
        level = session.get("graph_optimization_level")
        if level is not None:
            member = OPT_LEVELS.get(str(level).lower())
            if member is None or not hasattr(ort.GraphOptimizationLevel, member):
                raise InputError(f"{self.path}: unknown graph_optimization_level {level!r} "
                                 f"(known: {', '.join(OPT_LEVELS)})")
            so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, member)
        self.graph_optimization_level = str(level).lower() if level is not None else "all"
        provider = session.get("provider") or "CPUExecutionProvider"
        provider = _PROVIDER_ALIASES.get(str(provider).lower(), str(provider))
        available = ort.get_available_providers()
        if provider not in available:
            raise InputError(f"{self.path}: execution provider {provider!r} is not available "
                             f"(available: {', '.join(available)})")
        self.provider = provider
        providers = [provider] if provider == "CPUExecutionProvider" else [provider, "CPUExecutionProvider"]
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such model file")
        try:
            self._sess = ort.InferenceSession(str(self.path), so, providers=providers)
        except Exception as e:  # InvalidProtobuf, Fail, NotImplemented, ... : one line naming the file
            raise InputError(f"{self.path}: ONNX Runtime cannot load it: {_first_line(e)}") from None
        self.input_names = [i.name for i in self._sess.get_inputs()]
        self.output_names = [o.name for o in self._sess.get_outputs()]
        lead = {i.shape[0] if i.shape else None for i in self._sess.get_inputs()}
        # a model whose inputs all have one fixed batch (graph.static_shapes): a smaller last batch is padded
        self.fixed_batch = lead.pop() if len(lead) == 1 and isinstance(next(iter(lead)), int) else None

    def run(self, feed: Feed) -> list[np.ndarray]:
        if self._sess is None:
            raise InputError(f"{self.path}: runner is closed")
        try:
            inputs = {n: feed[n] for n in self.input_names}
        except KeyError as e:
            raise InputError(f"{self.path}: feed has no input {e.args[0]!r} (has: {', '.join(feed) or 'none'})") from None
        try:
            if self._short_batch(inputs):  # a data set's smaller last batch: padded, the padding's outputs dropped
                names = list(inputs)
                return in_fixed_batches(lambda chunk: self._sess.run(None, dict(zip(names, chunk))),
                                        list(inputs.values()), self.fixed_batch)
            return self._sess.run(None, inputs)
        except Exception as e:  # wrong dtype/shape: ORT says which; keep one line
            raise InputError(f"{self.path}: run failed: {_first_line(e)}") from None

    def _short_batch(self, inputs: Feed) -> int:
        """The feed's batch when it is a ragged last batch (every input the same size, smaller than the model's
        fixed batch, at least 1), else 0. Returns at once for dynamic and batch-1 models (every timed call passes
        here: the latency table's one-op parts take ~10 µs)."""
        if not self.fixed_batch or self.fixed_batch < 2 or not inputs:
            return 0
        sizes = {np.shape(x)[0] if np.ndim(x) else None for x in inputs.values()}
        b = sizes.pop() if len(sizes) == 1 else None
        return b if isinstance(b, int) and 0 < b < self.fixed_batch else 0

    def close(self) -> None:
        self._sess = None

    def __enter__(self) -> OrtRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _to_numpy_list(out: Any) -> list[np.ndarray]:
    """Flatten a module's output (tensor, tuple/list, dict or ModelOutput) into a list of numpy arrays."""
    import torch

    if isinstance(out, torch.Tensor):
        t = out.detach().cpu()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return [t.numpy()]
    if isinstance(out, dict):  # also transformers' ModelOutput (an OrderedDict without the None fields)
        return [a for v in out.values() if v is not None for a in _to_numpy_list(v)]
    if isinstance(out, (tuple, list)):
        return [a for v in out if v is not None for a in _to_numpy_list(v)]
    return [np.asarray(out)]


class TorchRunner:
    """A live torch module run under inference_mode with `threads` intra-op threads."""

    name = "torch"

    def __init__(self, module: Any, input_names: list[str], threads: int, label: str = "torch module"):
        import torch

        if module is None:
            raise InputError(f"{label}: torch artifact has no live module to run")
        if int(threads) < 1:
            raise InputError(f"{label}: threads must be >= 1, got {threads}")
        self.module = module
        self.input_names = list(input_names)
        self.threads = int(threads)
        self.label = label
        self._threads_before = torch.get_num_threads()

    def run(self, feed: Feed) -> list[np.ndarray]:
        import torch

        if self.module is None:
            raise InputError(f"{self.label}: runner is closed")
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)
        try:
            args = to_torch_args(feed, self.input_names)
        except KeyError as e:
            raise InputError(f"{self.label}: feed has no input {e.args[0]!r} (has: {', '.join(feed) or 'none'})") from None
        with torch.inference_mode():
            out = self.module(*args)
        return _to_numpy_list(out)

    def close(self) -> None:
        import torch

        if self.module is not None:
            self.module = None
            torch.set_num_threads(self._threads_before)

    def __enter__(self) -> TorchRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class OvRunner:
    """An OpenVINO compiled model on the CPU (latency hint, one stream, `threads` inference threads).

    The artifact's meta["openvino"] carries what its passes chose: the inference precision hint
    (f32 / bf16 / f16) and whether the inputs were fixed to static shapes. A feed of another shape (the last,
    shorter batch of a data set) runs on a second compilation for that shape, made on first use.
    """

    name = "openvino"

    def __init__(self, path: str | Path, threads: int, settings: dict[str, Any] | None = None):
        ov = require("openvino", f"{path}: the OpenVINO runner")
        if int(threads) < 1:
            raise InputError(f"{path}: threads must be >= 1, got {threads}")
        settings = dict(settings or {})
        self.threads = int(threads)
        self.path = Path(path)
        try:
            core = ov.Core()
            model = core.read_model(str(path))
            static = settings.get("static_shapes")
            if static:
                model.reshape({k: list(v) for k, v in static.items()})
            config = {"INFERENCE_NUM_THREADS": self.threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
                      "INFERENCE_PRECISION_HINT": settings.get("precision", "f32")}
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as e:
            raise InputError(f"{path}: OpenVINO cannot load the model: {_first_line(e)}") from None
        self._core, self._config = core, config
        self._static = {k: tuple(v) for k, v in static.items()} if static else None
        self._other: dict[tuple, Any] = {}  # feed shapes -> (compiled model, request) for non-static feeds
        self._request = self._compiled.create_infer_request()
        self.input_names = [p.get_any_name() for p in self._compiled.inputs]

    def _request_for(self, feed: Feed) -> tuple[Any, Any]:
        """The compiled model and request that take `feed`: the static one, or one compiled for its shapes."""
        if self._static is None:
            return self._compiled, self._request
        shapes = {k: tuple(np.shape(feed[k])) for k in self.input_names if k in feed}
        if all(shapes.get(k) == v for k, v in self._static.items()):
            return self._compiled, self._request
        key = tuple(sorted(shapes.items()))
        if key not in self._other:
            model = self._core.read_model(str(self.path))
            model.reshape({k: list(v) for k, v in shapes.items()})
            compiled = self._core.compile_model(model, "CPU", self._config)
            self._other[key] = (compiled, compiled.create_infer_request())
        return self._other[key]

    def run(self, feed: Feed) -> list[np.ndarray]:
        if self._request is None:
            raise InputError(f"{self.path}: runner is closed")
        try:
            compiled, request = self._request_for(feed)
            res = request.infer({k: feed[k] for k in self.input_names})
        except KeyError as e:
            raise InputError(f"{self.path}: feed has no input {e.args[0]!r}") from None
        return [np.array(res[o]) for o in compiled.outputs]

    def close(self) -> None:
        self._request = None
        self._compiled = None
        self._other = {}


def _named(runner: Any, name: str) -> Any:
    """`runner` with `.name` (the runtime the ledger records) set when its class does not set one."""
    if not getattr(runner, "name", None):
        runner.name = name
    return runner


COREML_NOT_HERE = "Core ML runs only on Apple platforms: not measured on this host"


class NotMeasurableHere(InputError):
    """The model's runtime does not exist on this host (Core ML off Apple): the stage is kept, not timed."""


def make_runner(art: Artifact, threads: int, session: dict[str, Any] | None = None,
                spinning: bool = False) -> Runner:
    """A runner for `art` with `threads` intra-op threads.

    `session` (ONNX only) holds what a tuning pass chose: {"threads", "graph_optimization_level",
    "provider"}; when None, the artifact's meta["session"] is used. Its "threads" wins over `threads`
    (the runner's `.threads` says which count it runs with).
    """
    if art.kind == "onnx":
        if art.path is None:
            raise InputError("onnx artifact has no file path")
        if session is None:
            session = art.meta.get("session")
        return OrtRunner(art.path, threads, session=session, spinning=spinning)
    if art.kind == "torch":
        names = list(art.meta.get("input_names") or art.input_spec.names)
        label = str(art.meta.get("source") or art.path or "torch module")
        return TorchRunner(art.module, names, threads, label=label)
    if art.kind == "openvino":
        if art.path is None:
            raise InputError("openvino artifact has no file path")
        return OvRunner(art.path, threads, settings=art.meta.get("openvino"))
    if art.kind == "tflite" and art.path is not None:
        from edgeopt.measure.litert import LiteRtRunner  # lazy: LiteRT is the optional [mobile] extra

        return _named(LiteRtRunner(art.path, threads, signature=(art.meta.get("litert") or {}).get("signature")),
                      "litert")
    if art.kind == "ncnn" and art.path is not None:
        from edgeopt.measure.ncnn import NcnnRunner  # lazy: ncnn is the optional [mobile] extra

        nc = art.meta.get("ncnn") or {}
        return _named(NcnnRunner(art.path, threads, input_names=art.input_spec.names, output_names=nc.get("outputs"),
                                 fp16=bool(nc.get("fp16")), output_shapes=nc.get("output_shapes")), "ncnn")
    if art.kind == "coreml":
        raise NotMeasurableHere(f"{art.path or 'Core ML model'}: {COREML_NOT_HERE}")
    raise InputError(f"{art.path or art.kind}: no runner for {art.kind!r} models "
                     "(runners: onnx, torch, openvino, tflite, ncnn)")
