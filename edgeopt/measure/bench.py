"""Bench: time several models side by side on one shared feed, interleaved, with speedups and their spread.

This backs `edgeopt bench A B ...`. Every model gets the same feed (so their inputs must agree), the same
thread count and the same rounds; the speedup of each row is the first model's p50 over its p50, with a
paired bootstrap interval over the rounds (`latency.paired_speedup`: each round timed every model once, so
rounds pair up).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgeopt.versions import __version__
from edgeopt.artifact import Artifact, InputSpec
from edgeopt.data import check_feeds, resolve
from edgeopt.errors import InputError
from edgeopt.load import load_model
from edgeopt.measure.fidelity import compare
from edgeopt.measure.latency import CI, LatencyStats, measure_interleaved, paired_speedup
from edgeopt.measure.runners import Feed, make_runner


class BenchRow(LatencyStats):
    """One model's line: its latency stats (ms), speedup over the first model with its interval, size,
    agreement."""

    name: str
    kind: str
    runtime: str
    threads: int
    speedup: float  # p50 of the first row / p50 of this row (> 1: faster than the first)
    speedup_lo: float
    speedup_hi: float
    size_bytes: int
    cosine: float | None = None  # min cosine of this row's outputs against the first row's (None: not comparable)


@dataclass(frozen=True)
class BenchResult:
    """The rows plus everything needed to rerun the figures: threads, runs, shapes, data, versions."""

    rows: list[BenchRow]
    threads: int
    runs: int
    warmup: int
    batch: int
    seq_len: int
    data: str
    shapes: dict[str, list[int]]
    versions: dict[str, str]
    ci: float = CI

    @property
    def samples(self) -> dict[str, list[float]]:
        """Each row's timed runs in ms, in round order."""
        return {r.name: list(r.samples) for r in self.rows}

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (rows as dicts; raw per-round samples in ms included for re-analysis)."""
        d = asdict(self)
        d["rows"] = [r.model_dump() for r in self.rows]
        d["samples"] = self.samples
        return d


def summarize(stats: dict[str, LatencyStats], ci: float = CI) -> dict[str, dict[str, float]]:
    """Per name (first one is the base): its latency summary plus speedup, speedup_lo, speedup_hi."""
    if not stats:
        return {}
    names = list(stats)
    base = stats[names[0]].samples
    out = {}
    for n in names:
        s = stats[n]
        sp, lo, hi = paired_speedup(base, s.samples, ci=ci)
        out[n] = {**s.to_dict(), "speedup": sp, "speedup_lo": lo, "speedup_hi": hi}
    return out


def _label(source: str | Path | Artifact) -> str:
    if isinstance(source, Artifact):
        if source.path is not None:
            return str(source.path)
        return str(source.meta.get("source") or source.kind)
    return str(source)


def _fmt_shape(shape: Sequence[int | str]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _casts(art: Artifact) -> bool:
    """Whether the runner of `art` casts each input to the dtype the model stores: the LiteRT runner does, since
    litert-torch stores int64 / float64 inputs as int32 / float32 (edgeopt.measure.litert), as the pipeline feeds it."""
    return art.kind == "tflite"


def _same_family(a: str, b: str) -> bool:
    """Both integer or both floating point: a cast between them keeps token ids and (narrowed) values."""
    x, y = np.dtype(a), np.dtype(b)
    return (np.issubdtype(x, np.integer) and np.issubdtype(y, np.integer)) or \
        (np.issubdtype(x, np.floating) and np.issubdtype(y, np.floating))


def _reference(named: list[tuple[str, Artifact]]) -> tuple[str, Artifact]:
    """The model whose input dtypes the shared feed takes: the first one whose runner does not cast."""
    return next(((n, a) for n, a in named if not _casts(a)), named[0])


def check_same_inputs(named: list[tuple[str, Artifact]]) -> None:
    """Refuse models whose inputs differ in name, dtype, rank or fixed dims (one line naming the input). A LiteRT
    model may store an input in another width of the same kind (int32 token ids for int64): its runner casts."""
    base_name, base = _reference(named)
    base_specs = {t.name: t for t in base.input_spec.inputs}
    for name, art in named:
        if art is base:
            continue
        specs = {t.name: t for t in art.input_spec.inputs}
        for n in base_specs:
            if n not in specs:
                raise InputError(f"bench: input {n!r}: {base_name} takes it, {name} does not "
                                 f"(it takes: {', '.join(specs) or 'none'})")
        for n in specs:
            if n not in base_specs:
                raise InputError(f"bench: input {n!r}: {name} takes it, {base_name} does not "
                                 f"(it takes: {', '.join(base_specs) or 'none'})")
        for n, t in specs.items():
            b = base_specs[n]
            cast = (_casts(art) or _casts(base)) and _same_family(t.dtype, b.dtype)
            if t.dtype != b.dtype and not cast:
                raise InputError(f"bench: input {n!r}: {base_name} takes {b.dtype}, {name} takes {t.dtype}")
            fixed_differ = any(isinstance(x, int) and isinstance(y, int) and x != y for x, y in zip(b.shape, t.shape))
            if len(t.shape) != len(b.shape) or fixed_differ:
                raise InputError(f"bench: input {n!r}: {base_name} takes shape {_fmt_shape(b.shape)}, "
                                 f"{name} takes {_fmt_shape(t.shape)}")


def shared_feed(named: list[tuple[str, Artifact]], data: str | None, seq_len: int, batch: int) -> Feed:
    """One feed that fits every model: from `data` (any edgeopt data spec), or random when None."""
    check_same_inputs(named)
    spec = data or "random:1"
    arts = [a for _, a in named]
    ref = _reference(named)[1]
    if spec.startswith("random:"):  # prefer a model that knows its vocabulary size
        base = next((a for a in arts if a.meta.get("vocab_size")), arts[0])
    else:  # sentences need a tokenizer
        base = next((a for a in arts if a.meta.get("tokenizer")), arts[0])
        if spec.startswith("zoo:sentences") or spec.endswith(".txt"):
            if not base.meta.get("tokenizer"):
                raise InputError(f"bench: data {spec} is text, but no model given carries a tokenizer "
                                 "(add a zoo: name or Hugging Face folder, or use an .npz or random:N)")
    if base is not ref:  # its tokenizer / vocabulary, the reference's dtypes
        base = replace(base, input_spec=ref.input_spec)
    feeds = resolve(spec, base, seq_len=seq_len, batch=batch, role="eval", default_slice=slice(0, batch), count=1)
    for name, art in named:
        takes = art.input_spec
        if _casts(art):  # checked as the dtypes it is fed (its runner casts them, see check_same_inputs)
            have = {n: str(np.asarray(v).dtype) for n, v in feeds[0].items()}
            takes = InputSpec(tuple(replace(t, dtype=have[t.name]) if t.name in have and
                                    _same_family(t.dtype, have[t.name]) else t for t in takes.inputs))
        check_feeds(feeds, takes, f"bench data for {name}")
    return feeds[0]


def _versions(kinds: set[str]) -> dict[str, str]:
    import numpy

    v = {"python": platform.python_version(), "numpy": numpy.__version__}
    v["edgeopt"] = __version__
    if "onnx" in kinds:
        import onnxruntime

        v["onnxruntime"] = onnxruntime.__version__
    if "torch" in kinds:
        import torch

        v["torch"] = torch.__version__
    import importlib.metadata as md

    for kind, dist in (("openvino", "openvino"), ("tflite", "ai-edge-litert"), ("ncnn", "ncnn")):
        if kind in kinds:
            try:
                v[dist] = md.version(dist)
            except md.PackageNotFoundError:
                pass
    return v


def bench(sources: list[str | Path | Artifact], threads: int = 2, runs: int = 50, warmup: int = 10,
          data: str | None = None, seq_len: int = 128, batch: int = 1, progress: Any = None) -> BenchResult:
    """Load every source, build one feed that fits all of them, time them interleaved and compare.

    Sources are zoo: names, .onnx files, Hugging Face folders or Artifacts. `data` is an edgeopt data spec
    (zoo:sentences[a:b], .txt, .npz, random:N); None means random inputs.
    """
    if not sources:
        raise InputError("bench: no models given")
    named: list[tuple[str, Artifact]] = []
    seen: dict[str, int] = {}
    for src in sources:
        art = src if isinstance(src, Artifact) else load_model(src)
        label = _label(src)
        seen[label] = seen.get(label, 0) + 1
        named.append((label if seen[label] == 1 else f"{label} #{seen[label]}", art))
    feed = shared_feed(named, data, seq_len, batch)

    runners: dict[str, Any] = {}
    try:
        for name, art in named:
            runners[name] = make_runner(art, threads)
        outputs = {name: r.run(feed) for name, r in runners.items()}  # also a first warm-up call
        stats = measure_interleaved(runners, feed, warmup=warmup, runs=runs, progress=progress)
    finally:
        for r in runners.values():
            r.close()

    first = named[0][0]
    summary = summarize(stats)
    rows = []
    for name, art in named:
        try:
            cos = compare(outputs[first], outputs[name])["min_cosine"]
        except InputError:  # different output shapes: different models, nothing to compare
            cos = None
        rows.append(BenchRow(**summary[name], samples=stats[name].samples, name=name, kind=art.kind,
                             runtime=runners[name].name, threads=runners[name].threads,
                             size_bytes=int(art.size_bytes), cosine=cos))
    return BenchResult(rows=rows, threads=threads, runs=runs, warmup=warmup, batch=batch, seq_len=seq_len,
                       data=data or "random:1", shapes={k: list(v.shape) for k, v in feed.items()},
                       versions=_versions({a.kind for _, a in named}))


def render(result: BenchResult):
    """The result as a rich Table; its caption names threads, shapes, rounds and versions."""
    from rich.table import Table

    table = Table(title="edgeopt bench", title_justify="left")
    table.add_column("model", overflow="fold")
    table.add_column("runtime")
    table.add_column("p50 ms", justify="right")
    table.add_column("p90 ms", justify="right")
    table.add_column("std ms", justify="right")
    table.add_column("speedup vs first", justify="right")
    table.add_column("size MB", justify="right")
    table.add_column("cosine vs first", justify="right")
    for r in result.rows:
        table.add_row(r.name, r.runtime, f"{r.p50:.3f}", f"{r.p90:.3f}", f"{r.std:.3f}",
                      f"{r.speedup:.2f}x [{r.speedup_lo:.2f}–{r.speedup_hi:.2f}]",
                      f"{r.size_bytes / (1 << 20):.2f}", "—" if r.cosine is None else f"{r.cosine:.5f}")
    shapes = ", ".join(f"{k} {tuple(v)}" for k, v in result.shapes.items())
    versions = ", ".join(f"{k} {v}" for k, v in result.versions.items())
    table.caption = (f"{result.runs} interleaved rounds after {result.warmup} warm-up · threads {result.threads} · "
                     f"{shapes} · data {result.data} · speedup = first p50 / p50, "
                     f"{result.ci:.0%} paired bootstrap interval · {versions}")
    return table
