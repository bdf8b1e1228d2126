"""The ncnn runner: an ncnn .param/.bin model on the CPU through ncnn's Python bindings (no Vulkan)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeopt.errors import InputError, first_line
from edgeopt.extras import require

Feed = dict[str, np.ndarray]
PARAM_MAGIC = "7767517"  # the first line of every text .param ncnn reads


@dataclass(frozen=True)
class NcnnLayer:
    """One layer line of an ncnn .param: type, name, the blobs it reads and the blobs it writes."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: tuple[str, ...]


@dataclass(frozen=True)
class NcnnGraph:
    """An ncnn .param read as text: its layers, input blobs (the Input layers' outputs, in order) and output
    blobs (blobs no layer reads; pnnx names them out0, out1, ... in the torch model's output order)."""

    layers: tuple[NcnnLayer, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


def _natural(name: str) -> tuple:
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


def read_param(path: str | Path) -> NcnnGraph:
    """Parse an ncnn text .param (the format pnnx writes). Raises InputError (one line) on anything that is not one:
    a wrong magic number, a layer line with fewer blob names than it declares, or fewer layers than the header says.

    Written by hand because ncnn's Python bindings load a .param but do not list its layers or blobs; the format is
    a magic line, "layer_count blob_count", then per layer "type name n_in n_out in... out... key=value...".
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such ncnn .param file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read the ncnn .param: {first_line(e)}") from None
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if not lines or lines[0] != [PARAM_MAGIC]:
        raise InputError(f"{path}: not an ncnn text .param (first line is not the magic {PARAM_MAGIC})")
    try:
        n_layers, _n_blobs = (int(x) for x in lines[1])
    except (IndexError, ValueError):
        raise InputError(f"{path}: ncnn .param header is not 'layer_count blob_count'") from None
    layers: list[NcnnLayer] = []
    for i, parts in enumerate(lines[2:], start=3):
        try:
            n_in, n_out = int(parts[2]), int(parts[3])
        except (IndexError, ValueError):
            raise InputError(f"{path}: line {i} is not an ncnn layer line") from None
        blobs = parts[4:4 + n_in + n_out]
        if len(blobs) != n_in + n_out:
            raise InputError(f"{path}: line {i} ({parts[1]}) names {len(blobs)} blobs, declares {n_in + n_out}")
        layers.append(NcnnLayer(parts[0], parts[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]),
                                tuple(parts[4 + n_in + n_out:])))
    if len(layers) != n_layers:
        raise InputError(f"{path}: the ncnn .param declares {n_layers} layers but holds {len(layers)} (truncated?)")
    read = {b for ly in layers for b in ly.bottoms}
    inputs = tuple(t for ly in layers if ly.type == "Input" for t in ly.tops)
    outs = [t for ly in layers if ly.type != "Input" for t in ly.tops if t not in read]
    if outs and all(re.fullmatch(r"out\d+", o) for o in outs):
        outs.sort(key=_natural)
    return NcnnGraph(tuple(layers), inputs, tuple(outs))


class NcnnRunner:
    """An ncnn model (.param + its .bin beside it) run on the CPU with `threads` threads, Vulkan off.

    ncnn Mats hold one sample (no batch dimension): a feed with batch N runs the N samples one after the
    other, each in a fresh extractor, and the outputs are stacked back into (N, ...) as torch returns them,
    so a latency measured on a batch is the time of the whole batch. Inputs are passed as float32 (ncnn
    blobs are float). `fp16=False` turns ncnn's fp16 storage/packing/arithmetic off (they default to on
    where the CPU has F16C), so the model runs in float32 on any x86 CPU; `fp16=True` turns them on.
    `input_names` are the feed's keys in the model's input order (mapped in order onto the Input blobs of
    the .param); `output_names` the blobs to extract (default: the .param's outputs, out0, out1, ...);
    `output_shapes` (optional, per sample, without the batch) reshapes each sample's output when given.
    Worker threads do not spin-wait after a layer where ncnn's OpenMP lets it say so (openmp_blocktime 0);
    the PyPI wheel bundles GNU OpenMP, whose waiting follows OMP_WAIT_POLICY / GOMP_SPINCOUNT instead.
    """

    name = "ncnn"

    def __init__(self, param_path: str | Path, threads: int, input_names: list[str],
                 output_names: list[str] | None = None, fp16: bool = False,
                 output_shapes: list[list[int]] | None = None):
        ncnn = require("ncnn", f"{param_path}: the ncnn runner")
        self.path = Path(param_path)
        self.label = str(self.path)
        if int(threads) < 1:
            raise InputError(f"{self.path}: threads must be >= 1, got {threads}")
        self.threads = int(threads)
        self.fp16 = bool(fp16)
        bin_path = self.path.with_suffix(".bin")
        if not bin_path.is_file():
            raise InputError(f"{self.path}: its weights {bin_path.name} are missing")
        graph = read_param(self.path)
        self.blob_inputs = list(graph.inputs)
        self.output_names = list(output_names or graph.outputs)
        self.input_names = list(input_names)
        if len(self.input_names) != len(self.blob_inputs):
            raise InputError(f"{self.path}: the model has {len(self.blob_inputs)} inputs "
                             f"({', '.join(self.blob_inputs)}), {len(self.input_names)} names were given")
        known = {t for ly in graph.layers for t in ly.tops}
        missing = [o for o in self.output_names if o not in known]
        if missing:
            raise InputError(f"{self.path}: no blob named {missing[0]!r} in the model")
        self.output_shapes = [tuple(s) for s in output_shapes] if output_shapes else None
        net = ncnn.Net()
        opt = net.opt
        opt.use_vulkan_compute = False
        opt.num_threads = self.threads
        opt.use_fp16_storage = opt.use_fp16_packed = opt.use_fp16_arithmetic = self.fp16
        opt.use_bf16_storage = opt.use_bf16_packed = False
        opt.openmp_blocktime = 0  # no spin-waiting after a layer (as OrtRunner); LLVM OpenMP builds honour it
        if net.load_param(str(self.path)) != 0:
            raise InputError(f"{self.path}: ncnn cannot load the .param (an unknown layer type or a corrupt file)")
        if net.load_model(str(bin_path)) != 0:
            raise InputError(f"{self.path}: ncnn cannot load the weights {bin_path.name} (truncated or not this model's)")
        self._ncnn, self._net = ncnn, net

    def _sample(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        ex = self._net.create_extractor()
        # Mat(array) wraps the numpy memory without a refcount; ncnn's in-place layers (a BinaryOp with a scalar
        # on an input) then crash or write into the caller's feed: give ncnn its own copy.
        mats = [self._ncnn.Mat(a).clone() for a in arrays]
        for blob, mat in zip(self.blob_inputs, mats):
            ex.input(blob, mat)
        outs = []
        for blob in self.output_names:
            rc, mat = ex.extract(blob)
            if rc != 0:
                raise InputError(f"{self.path}: ncnn failed to compute blob {blob!r} (code {rc})")
            outs.append(np.array(mat, dtype=np.float32, copy=True))
        return outs

    def run(self, feed: Feed) -> list[np.ndarray]:
        """Outputs in the model's order, each shaped (N, ...) for a feed of batch N."""
        if self._net is None:
            raise InputError(f"{self.path}: runner is closed")
        try:
            arrays = [np.asarray(feed[n]) for n in self.input_names]
        except KeyError as e:
            raise InputError(f"{self.path}: feed has no input {e.args[0]!r} (has: {', '.join(feed) or 'none'})") from None
        batches = {a.shape[0] if a.ndim else 0 for a in arrays}
        if len(batches) != 1 or 0 in batches:
            raise InputError(f"{self.path}: inputs need one shared leading batch dimension, got shapes "
                             f"{[tuple(a.shape) for a in arrays]}")
        if any(a.ndim > 5 for a in arrays):
            raise InputError(f"{self.path}: ncnn takes at most 4 dims per sample, got {[a.shape for a in arrays]}")
        n = batches.pop()
        per_sample = [self._sample([np.ascontiguousarray(a[i], dtype=np.float32) for a in arrays]) for i in range(n)]
        outs = []
        for j in range(len(self.output_names)):
            parts = [s[j] for s in per_sample]
            if self.output_shapes is not None and j < len(self.output_shapes):
                shape = self.output_shapes[j]
                if all(p.size == int(np.prod(shape)) for p in parts):
                    parts = [p.reshape(shape) for p in parts]
            outs.append(np.stack(parts))
        return outs

    def close(self) -> None:
        if getattr(self, "_net", None) is not None:
            self._net.clear()
        self._net = None

    def __enter__(self) -> NcnnRunner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
