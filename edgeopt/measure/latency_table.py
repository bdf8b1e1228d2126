"""Latency tables for once-for-all subnets: every distinct block measured on the target runtime, a subnet's latency
predicted as the sum of its parts, and whole extracted subnets measured to check the prediction.

An entry is one part at one input size: the stem at resolution r, each block kind (stage, first block of its stage
or not, kernel, expansion) at its input size, the head at the final feature size. Each part is exported from the
supernet's weights as a dense ONNX graph and all parts are timed interleaved in one process (`measure_interleaved`,
blocks of calls with the first untimed, the order rotating). A subnet's prediction is the sum of its parts'
medians less (parts - 1) × the per-call overhead of the runtime (timed on a one-op graph), since a whole subnet
is one call. Hand-written: OFA's own latency tables (the unmaintained once-for-all repository) are for its
networks and mobile phones, not for the runtime edgeopt deploys to.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

BLOCK, SETTLE = 5, 1


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
    """Median milliseconds per part (see the module docstring), the per-call overhead, and how it was measured."""

    entries: dict[str, float] = field(default_factory=dict)
    overhead_ms: float = 0.0
    runtime: str = "onnxruntime"
    threads: int = 2

    def predict(self, net: Any, subnet: Any) -> float:
        keys = parts_of(net, subnet)
        missing = [k for k in keys if k not in self.entries]
        if missing:
            raise ValueError(f"latency table has no entry for {missing[0]} (built for another search space?)")
        return sum(self.entries[k] for k in keys) - (len(keys) - 1) * self.overhead_ms

    def to_json(self) -> dict[str, Any]:
        return {"entries": self.entries, "overhead_ms": self.overhead_ms, "runtime": self.runtime,
                "threads": self.threads}

    def save(self, path: str | Path) -> Path:
        from edgeopt.ledger import write_text_atomic

        p = Path(path)
        write_text_atomic(p, json.dumps(self.to_json(), indent=1))
        return p

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        d = json.loads(Path(path).read_text())
        return cls(dict(d["entries"]), float(d["overhead_ms"]), d.get("runtime", "onnxruntime"), int(d["threads"]))

    @classmethod
    def build(cls, net: Any, folder: str | Path, threads: int = 2, runs: int = 30, progress: Any = None
              ) -> "LatencyTable":
        """Measure every part of `net`'s search space (an OFANet) on ONNX Runtime with `threads` threads."""
        import torch

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
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
        med = time_graphs(graphs, folder, threads, runs, progress)
        overhead = med.pop("overhead")
        return cls(med, overhead, "onnxruntime", threads)


def _AddOne() -> Any:  # noqa: N802 (a module factory: torch is imported lazily)
    import torch

    class AddOne(torch.nn.Module):
        """One Add: the runtime's per-call overhead."""

        def forward(self, x):
            return x + 1.0

    return AddOne()


def time_graphs(graphs: dict[str, tuple[Any, tuple[int, ...]]], folder: Path, threads: int, runs: int,
                progress: Any = None) -> dict[str, float]:
    """Median ms of each (module, input shape), exported to ONNX under `folder` and timed interleaved on ONNX
    Runtime, each on its own random input."""
    import numpy as np

    from edgeopt.artifact import Artifact
    from edgeopt.measure.latency import measure_interleaved
    from edgeopt.measure.runners import make_runner

    live: dict[str, Any] = {}
    try:
        for i, (key, (module, shape)) in enumerate(graphs.items()):
            path = _export(module, shape, folder / f"part{i}.onnx")
            feed = {"x": np.random.default_rng(i).standard_normal(shape).astype(np.float32)}
            # spinning off: hundreds of live sessions whose idle workers busy-wait would time each other
            live[key] = _Fixed(make_runner(Artifact.from_onnx(path), threads=threads, spinning=False), feed)
        stats = measure_interleaved(live, {}, warmup=5, runs=runs, block=BLOCK, settle=SETTLE, progress=progress)
    finally:
        for r in live.values():
            r.close()
    return {k: float(s.p50) for k, s in stats.items()}


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


def measure_subnets(extractor: Any, subnets: Iterable[Any], folder: str | Path, threads: int = 2, runs: int = 30,
                    progress: Any = None) -> list[float]:
    """Median milliseconds of each subnet extracted (dense) and exported, all timed interleaved on ONNX Runtime."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    graphs = {}
    for i, sub in enumerate(subnets):
        dense = extractor.extract(sub)
        graphs[f"subnet{i}"] = (dense, (1, extractor.config.in_channels, sub.r, sub.r))
    med = time_graphs(graphs, folder, threads, runs, progress)
    return [med[f"subnet{i}"] for i in range(len(graphs))]
