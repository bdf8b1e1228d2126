"""Latency tables for once-for-all subnets: every distinct block measured on the target runtime, a subnet's latency
predicted as the sum of its parts, and whole extracted subnets measured to check the prediction.

An entry is one part at one input size: the stem at resolution r, each block kind (stage, first block of its stage
or not, kernel, expansion) at its input size, the head at the final feature size. Each part is exported from the
supernet's weights as a dense ONNX graph (converted to LiteRT for a LiteRT table; OpenVINO reads the ONNX file) and all
parts are timed interleaved in one process on the table's runtime (`measure_interleaved`, blocks of calls with the
first untimed, the order rotating). The timing is a measure task of the search's executor (`edgeopt.executor`): on a
Ray cluster it runs only on a node of the target, and the files it reads must be on a folder every node sees. A
subnet's prediction is the sum of its parts' medians less (parts - 1) × the per-call overhead of the runtime (timed
on a one-op graph), since a whole subnet is one call. Hand-written: OFA's own latency tables (the unmaintained
once-for-all repository) are for its networks and mobile phones, not for the runtime edgeopt deploys to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

BLOCK, SETTLE = 5, 1
CALIBRATION_SEED = 10_000  # calibration subnets' seeds start here, apart from the ones a search samples


def _ceil_div(a: int, b: int) -> int:
    return (a + b - 1) // b


def parts_of(net: Any, subnet: Any) -> list[str]:
    """The table keys a subnet runs: stem@r, each block as s{stage}{f|r}-k{k}-e{e}@{input size}, head@{size}."""
    from edgeopt.nn.ofa import SubnetConfig

    sub = SubnetConfig.of(subnet).check(net.config)
    keys = [f"stem@{sub.r}"]
    r = _ceil_div(sub.r, net.config.stem_stride)
    i = 0
    for s, (stage, d) in enumerate(zip(net.stages, sub.d)):
        for j, blk in enumerate(stage):
            if j < d:
                keys.append(f"s{s}{'f' if j == 0 else 'r'}-k{sub.k[i]}-e{sub.e[i]:g}@{r}")
                r = _ceil_div(r, blk.stride)
            i += 1
    keys.append(f"head@{r}")
    return keys


@dataclass
class LatencyTable:
    """Median milliseconds per part (see the module docstring), the per-call overhead, and how it was measured.

    A prediction is `scale` × (sum of the parts − (parts − 1) × `overhead_ms`). Uncalibrated, `scale` is 1 and the
    overhead is the one-op graph's; `calibrate` refits both by least squares on whole subnets measured on the same
    runtime (`calibrated` says on how many), since a runtime's fixed cost per call is not all in the one-op graph
    (OpenVINO reorders each part's input and output into its blocked layouts: a whole subnet does that once)."""

    entries: dict[str, float] = field(default_factory=dict)
    overhead_ms: float = 0.0
    runtime: str = "onnxruntime"
    threads: int = 2
    scale: float = 1.0
    calibrated: int = 0
    call_ms: float = 0.0  # the one-op graph's time (the uncalibrated overhead)
    # milliseconds of the `probe` subnets build() timed in the same session as the parts (not saved)
    probe_ms: list[float] = field(default_factory=list, compare=False, repr=False)

    def parts_sum(self, net: Any, subnet: Any) -> tuple[float, int]:
        """(sum of the subnet's parts' medians, number of parts)."""
        keys = parts_of(net, subnet)
        missing = [k for k in keys if k not in self.entries]
        if missing:
            raise ValueError(f"latency table has no entry for {missing[0]} (built for another search space?)")
        return sum(self.entries[k] for k in keys), len(keys)

    def predict(self, net: Any, subnet: Any) -> float:
        total, n = self.parts_sum(net, subnet)
        return self.scale * (total - (n - 1) * self.overhead_ms)

    def calibrate(self, net: Any, folder: str | Path, subnets: int = 8, runs: int = 30, progress: Any = None,
                  executor: Any = None, seed: int = CALIBRATION_SEED) -> dict[str, Any]:
        """Measure `subnets` random whole subnets (seeds `seed`, `seed`+1, ...) on the table's runtime and refit
        `scale` and `overhead_ms` to them (`fit`). In a session of their own, so the machine may have drifted
        since the parts were timed: `build(calibrate=N)` times both in one session."""
        from edgeopt.nn.ofa import OFASubNetworkExtractor

        ex = OFASubNetworkExtractor(net)
        subs = calibration_subnets(net, subnets, seed)
        measured = measure_subnets(ex, subs, folder, threads=self.threads, runs=runs, progress=progress,
                                   runtime=self.runtime, executor=executor)
        return self.fit(net, subs, measured)

    def fit(self, net: Any, subnets: Sequence[Any], measured: Sequence[float]) -> dict[str, Any]:
        """Refit `scale` and `overhead_ms` by least squares to whole subnets' measured milliseconds (kept as they
        were unless there are >= 3 and the scale comes out positive). Returns the fit's figures: median absolute
        % error on those subnets before and after."""
        import numpy as np

        m = np.asarray(measured, dtype=float)
        sums = np.asarray([self.parts_sum(net, s) for s in subnets], dtype=float)
        before = np.asarray([self.predict(net, s) for s in subnets])
        design = np.stack([sums[:, 0], -(sums[:, 1] - 1)], axis=1)
        (a, ao), *_ = np.linalg.lstsq(design, m, rcond=None)
        if len(subnets) >= 3 and a > 0:
            self.scale, self.overhead_ms, self.calibrated = float(a), float(ao / a), len(subnets)
        after = np.asarray([self.predict(net, s) for s in subnets])
        err = lambda p: float(np.median(np.abs(p - m) / m * 100))  # noqa: E731
        return {"subnets": len(subnets), "error_before_pct": err(before), "error_after_pct": err(after),
                "scale": self.scale, "overhead_ms": self.overhead_ms}

    def raw_predict(self, net: Any, subnet: Any) -> float:
        """The uncalibrated prediction: sum of the parts less (parts − 1) × the one-op graph's time."""
        total, n = self.parts_sum(net, subnet)
        return total - (n - 1) * self.call_ms

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "overhead_ms": self.overhead_ms, "runtime": self.runtime,
                "threads": self.threads, "scale": self.scale, "calibrated": self.calibrated, "call_ms": self.call_ms}

    def save(self, path: str | Path) -> Path:
        from edgeopt.ledger import write_text_atomic

        p = Path(path)
        write_text_atomic(p, json.dumps(self.to_json(), indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        d = json.loads(Path(path).read_text())
        return cls(dict(d["entries"]), float(d["overhead_ms"]), d.get("runtime", "onnxruntime"), int(d["threads"]),
                   float(d.get("scale", 1.0)), int(d.get("calibrated", 0)),
                   float(d.get("call_ms", d["overhead_ms"])))

    @classmethod
    def build(cls, net: Any, folder: str | Path, threads: int = 2, runs: int = 30, progress: Any = None,
              runtime: str = "onnxruntime", executor: Any = None, calibrate: int = 0,
              probe: Sequence[Any] = ()) -> "LatencyTable":
        """Measure every part of `net`'s search space (an OFANet) on `runtime` (one of RUNTIMES) with `threads`
        threads. With `calibrate` >= 3, that many random whole subnets are timed in the same session and the table
        is `fit` to them; `probe` subnets are timed there too, their milliseconds in `.probe_ms` (to judge the
        predictions without the machine's drift between sessions). The timing is one measure task of `executor`
        (an `edgeopt.executor` executor: on a Ray cluster it runs on a node of the target; default: here)."""
        from edgeopt.nn.ofa import OFASubNetworkExtractor

        graphs = table_graphs(net)
        cal = calibration_subnets(net, calibrate) if calibrate else []
        ex = OFASubNetworkExtractor(net)
        for name, subs in (("calibration", cal), ("probe", list(probe))):
            for i, sub in enumerate(subs):
                graphs[f"{name}{i}"] = (ex.extract(sub), (1, net.config.in_channels, sub.r, sub.r))
        med = time_graphs(graphs, folder, threads, runs, progress, runtime=runtime, executor=executor)
        overhead = med.pop("overhead")
        whole = {k: med.pop(k) for k in list(med) if k.startswith(("calibration", "probe"))}
        table = cls(med, overhead, check_runtime(runtime), threads, call_ms=overhead)
        if cal:
            table.fit(net, cal, [whole[f"calibration{i}"] for i in range(len(cal))])
        table.probe_ms = [whole[f"probe{i}"] for i in range(len(probe))]
        return table


def calibration_subnets(net: Any, n: int, seed: int = CALIBRATION_SEED) -> list[Any]:
    """The `n` random subnets a table is calibrated on (seeds `seed`, `seed`+1, ...: apart from the seeds a search
    samples from)."""
    import random

    from edgeopt.nn.ofa import random_subnet

    return [random_subnet(random.Random(seed + i), net.config) for i in range(int(n))]


def table_graphs(net: Any) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """Every part of `net`'s search space (an OFANet) as {table key: (dense module, input shape)}, and "overhead" (a
    one-op graph) last."""
    c = net.config
    graphs: dict[str, tuple[Any, tuple[int, ...]]] = {}
    for r in c.resolutions:
        graphs[f"stem@{r}"] = (net.stem, (1, c.in_channels, r, r))
        size = _ceil_div(r, c.stem_stride)
        for s, stage in enumerate(net.stages):
            for j, blk in enumerate(stage[:2]):  # the first block of a stage, and the rest (all alike)
                inp = size if j == 0 else _ceil_div(size, stage[0].stride)
                for k in c.kernel_sizes:
                    for e in c.expand_ratios:
                        graphs[f"s{s}{'f' if j == 0 else 'r'}-k{k}-e{e:g}@{inp}"] = (
                            blk.dense(k, e), (1, blk.cin, inp, inp))
            size = _ceil_div(size, stage[0].stride)
        graphs[f"head@{size}"] = (net.head, (1, net.head.conv[0].in_channels, size, size))
    graphs["overhead"] = (_AddOne(), (1, 1, 1, 1))
    return graphs


RUNTIMES = ("onnxruntime", "openvino", "litert")


def check_runtime(runtime: str) -> str:
    """`runtime` when it is one the tables are measured on, else ValueError naming the choices."""
    if runtime not in RUNTIMES:
        raise ValueError(f"latency table: field 'runtime': {runtime!r} is not one of {', '.join(RUNTIMES)}")
    return runtime


def _AddOne() -> Any:  # noqa: N802 (a module factory: torch is imported lazily)
    import torch

    class AddOne(torch.nn.Module):
        """One Add: the runtime's per-call overhead."""

        def forward(self, x):
            return x + 1.0

    return AddOne()


def time_graphs(graphs: dict[str, tuple[Any, tuple[int, ...]]], folder: Path, threads: int, runs: int,
                progress: Any = None, runtime: str = "onnxruntime", executor: Any = None) -> dict[str, float]:
    """Median ms of each (module, input shape) on `runtime`, each on its own random input, all timed interleaved.

    The modules are exported here (ONNX under `folder`, and for LiteRT converted by litert-torch to .tflite: build
    work; a file whose manifest entry in `folder`/parts.json matches the part's fingerprint is reused, so an
    interrupted or repeated table converts nothing twice); the timing is `time_parts`, run inline (with `progress`)
    or as one measure task of `executor`."""
    from edgeopt.ledger import write_text_atomic

    check_runtime(runtime)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    manifest_path = folder / "parts.json"  # file name -> fingerprint of what it holds: a rerun converts nothing twice
    try:
        manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    except (OSError, ValueError):
        manifest = {}
    parts: dict[str, dict[str, Any]] = {}
    for i, (key, (module, shape)) in enumerate(graphs.items()):
        path = folder / f"part{i}.{'tflite' if runtime == 'litert' else 'onnx'}"
        mark = _fingerprint(module, shape, runtime)
        if not (path.is_file() and manifest.get(path.name) == mark):
            if runtime == "litert":
                _to_litert(module, shape, path)
            else:
                _export(module, shape, path)
            manifest[path.name] = mark
            write_text_atomic(manifest_path, json.dumps(manifest, indent=1))
        parts[key] = {"path": str(path.resolve()), "shape": list(shape), "seed": i}
    job = {"parts": parts, "runtime": runtime, "threads": int(threads), "runs": int(runs)}
    from edgeopt.executor import is_local

    if is_local(executor):
        res = time_parts(job, progress=progress)
    else:
        res = executor.measure(time_parts, job).result()
    return {k: float(v) for k, v in res["p50"].items()}


def _fingerprint(module: Any, shape: tuple[int, ...], runtime: str) -> str:
    """A hash of a part: its runtime, input shape, module class and every tensor of its state (weights and BatchNorm
    statistics), so a file converted from the same part is reused and one from other weights is not."""
    import hashlib

    h = hashlib.sha256(f"{runtime}|{list(shape)}|{type(module).__qualname__}".encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def time_parts(job: dict[str, Any], progress: Any = None) -> dict[str, Any]:
    """A measure task (plain data in and out): the files of `job["parts"]` ({key: {path, shape, seed}}) opened on
    `job["runtime"]` with `job["threads"]` threads and timed interleaved (blocks of calls, the first untimed, the
    order rotating), each on a seeded random input. Returns {"p50": {key: ms}, "runtime", "threads"}."""
    import numpy as np

    from edgeopt.measure.latency import measure_interleaved

    runtime, threads = check_runtime(job["runtime"]), int(job["threads"])
    live: dict[str, Any] = {}
    try:
        for key, part in job["parts"].items():
            shape = tuple(int(x) for x in part["shape"])
            feed = {"x": np.random.default_rng(int(part["seed"])).standard_normal(shape).astype(np.float32)}
            live[key] = _Fixed(_runner(Path(part["path"]), runtime, threads), feed)
        stats = measure_interleaved(live, {}, warmup=5, runs=int(job.get("runs", 30)), block=BLOCK, settle=SETTLE,
                                    progress=progress)
    finally:
        for r in live.values():
            r.close()
    return {"p50": {k: float(s.p50) for k, s in stats.items()}, "runtime": runtime, "threads": threads}


def _runner(path: Path, runtime: str, threads: int) -> Any:
    """A runner of one part's file on `runtime` (spinning off for ONNX Runtime: hundreds of live sessions whose
    idle workers busy-wait would time each other)."""
    from edgeopt.artifact import Artifact
    from edgeopt.measure.runners import OvRunner, make_runner

    if runtime == "openvino":
        return OvRunner(path, threads)  # OpenVINO reads the ONNX file itself
    if runtime == "litert":
        from edgeopt.measure.litert import LiteRtRunner  # lazy: LiteRT is the optional [mobile] extra

        return LiteRtRunner(path, threads)
    return make_runner(Artifact.from_onnx(path), threads=threads, spinning=False)


class _Fixed:
    """A runner that brings its own input (measure_interleaved hands every runner the same feed)."""

    def __init__(self, runner: Any, feed: dict[str, Any]):
        self.runner, self.feed = runner, feed

    def run(self, _feed: Any) -> Any:
        return self.runner.run(self.feed)

    def close(self) -> None:
        self.runner.close()


def _export(module: Any, shape: tuple[int, ...], path: Path) -> Path:
    """`module` (eval) as an ONNX graph with one input "x" of `shape` (exported with gradients on: no fast paths)."""
    import warnings

    import torch

    module = module.eval()
    with warnings.catch_warnings():  # the legacy exporter's deprecation and tracer notes say nothing about the graph
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.randn(*shape),), str(path), input_names=["x"], opset_version=17,
                          dynamo=False)
    return path


def _to_litert(module: Any, shape: tuple[int, ...], path: Path) -> Path:
    """`module` (eval) converted by litert-torch to a .tflite file whose one input is named "x" (written atomically);
    a module litert-torch cannot convert is a one-line InputError."""
    import io
    import warnings
    from contextlib import redirect_stderr

    import torch

    from edgeopt.artifact import write_bytes_atomic
    from edgeopt.errors import InputError
    from edgeopt.extras import require
    from edgeopt.measure.litert import conversion_error, named_inputs, quiet_native_stderr

    with quiet_native_stderr():  # TensorFlow's and absl's start-up lines
        litert_torch = require("litert_torch", "latency tables on LiteRT")
    litert_torch.config.show_progress = False
    try:
        with torch.no_grad(), redirect_stderr(io.StringIO()), quiet_native_stderr(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            edge = litert_torch.convert(named_inputs(module.eval(), ["x"]), (),
                                        sample_kwargs={"x": torch.randn(*shape)})
            content = bytes(edge.model_content())
    except Exception as e:  # noqa: BLE001 (litert-torch raises many kinds; keep one line)
        raise InputError(conversion_error(e, module, f"{path.name} ({type(module).__name__})")) from None
    write_bytes_atomic(path, content)
    return path


def measure_subnets(extractor: Any, subnets: Iterable[Any], folder: str | Path, threads: int = 2, runs: int = 30,
                    progress: Any = None, runtime: str = "onnxruntime", executor: Any = None) -> list[float]:
    """Median milliseconds of each subnet extracted (dense) and exported, all timed interleaved on `runtime`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for i, sub in enumerate(subnets):
        dense = extractor.extract(sub)
        graphs[f"subnet{i}"] = (dense, (1, extractor.config.in_channels, sub.r, sub.r))
    med = time_graphs(graphs, folder, threads, runs, progress, runtime=runtime, executor=executor)
    return [med[f"subnet{i}"] for i in range(len(graphs))]
