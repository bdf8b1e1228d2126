"""Artifact: one model in one form (torch module, ONNX file, ...) with its InputSpec and content hash."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

from edgeopt.extras import require

Kind = Literal["torch", "onnx", "tflite", "openvino", "ncnn", "coreml"]
KINDS: tuple[str, ...] = ("torch", "onnx", "tflite", "openvino", "ncnn", "coreml")
FILE_KINDS: tuple[str, ...] = ("onnx", "openvino", "tflite", "ncnn", "coreml")  # kinds stored as files on disk
WEIGHTS_FILE = "model.safetensors"  # a saved torch stage: its state dict ...
REBUILD_FILE = "rebuild.json"  # ... and how to rebuild its architecture from the model it started from
REBUILD_FORMAT = 1

# builder name -> fn(parent: Artifact, args: dict, ctx: PassContext) -> torch module (architecture only: the
# weights are loaded afterwards). Registered next to the passes (register_builder); see `Artifact.from_weights`.
_BUILDERS: dict[str, Callable[..., Any]] = {}


def register_builder(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register `fn(parent, args, ctx) -> module` under `name`, the builder a torch artifact's
    rebuild recipe names. It gets the artifact the pass started from, the recipe's JSON args and a
    PassContext (calibration data for example inputs), and returns a module with the architecture the pass
    produced; its weights do not matter (they are loaded from safetensors next) and the parent is never mutated."""

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in _BUILDERS and _BUILDERS[name] is not fn:
            raise RuntimeError(f"builder name {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco


def get_builder(name: str) -> Callable[..., Any]:
    """The builder registered under `name`. Builders register when their pass modules are imported: a caller
    that rebuilds saved stages loads the pass registry first (the pipeline does)."""
    if name not in _BUILDERS:
        raise KeyError(f"unknown builder {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    return _BUILDERS[name]


def _recipe(rebuild: tuple[str, dict[str, Any]] | None) -> dict[str, Any] | None:
    """(builder name, JSON args) as the JSON-normal dict saved in rebuild.json (tuples become lists)."""
    if rebuild is None:
        return None
    name, args = rebuild
    return {"builder": str(name), "args": json.loads(json.dumps(args, sort_keys=True))}


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file beside it and a rename (never a half-written model)."""
    _atomic(Path(path), lambda tmp: tmp.write_bytes(data))


@dataclass(frozen=True)
class TensorSpec:
    """One model input: name, numpy dtype name and shape (ints, or strings for named dynamic dims)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def concrete(self, dims: dict[str, int]) -> tuple[int, ...]:
        """The shape with named dims filled from `dims` (unknown names default to 1)."""
        return tuple(d if isinstance(d, int) else int(dims.get(d, 1)) for d in self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(d["name"], d["dtype"], tuple(d["shape"]))


@dataclass(frozen=True)
class InputSpec:
    """The inputs a model takes, in order."""

    inputs: tuple[TensorSpec, ...]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.inputs]

    def to_dict(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.inputs]

    @classmethod
    def from_dict(cls, d: list[dict[str, Any]]) -> InputSpec:
        return cls(tuple(TensorSpec.from_dict(x) for x in d))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file, including ONNX external-data files that sit beside it."""
    h = hashlib.sha256()
    path = Path(path)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    for extra in sorted(path.parent.glob(path.name + ".data")):
        with open(extra, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


def sha256_files(*paths: Path) -> str:
    """One content hash over several files (those that exist), e.g. an OpenVINO .xml and its .bin."""
    h = hashlib.sha256()
    for f in paths:
        if f.exists():
            with open(f, "rb") as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
    return h.hexdigest()


def sha256_tree(folder: Path) -> str:
    """One content hash over every file under a folder (relative paths included), e.g. a Core ML .mlpackage."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        with open(f, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def _companions(kind: str, path: Path) -> tuple[Path, ...]:
    """The files a model of `kind` at `path` consists of (an OpenVINO .xml and its .bin, ncnn .param and .bin)."""
    if kind in ("openvino", "ncnn"):
        return (path, path.with_suffix(".bin"))
    return (path,)


def content_sha256(kind: str, path: str | Path) -> str:
    """The content hash an artifact of `kind` stored at `path` is recorded with."""
    path = Path(path)
    if kind == "coreml":
        return sha256_tree(path)
    return sha256_files(*_companions(kind, path)) if kind in ("openvino", "ncnn") else sha256_file(path)


def file_size(kind: str, path: str | Path) -> int:
    """Bytes on disk of a model of `kind` at `path` (with its weight files; a Core ML package's whole folder)."""
    path = Path(path)
    if kind == "coreml":
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return sum(p.stat().st_size for p in _companions(kind, path) if p.exists())


def tflite_input_spec(path: str | Path) -> InputSpec:
    """The inputs of a .tflite model's first signature (else of its graph), read by LiteRT's interpreter."""
    interp_mod = require("ai_edge_litert.interpreter", "reading a .tflite model")
    try:
        it = interp_mod.Interpreter(model_path=str(path))
    except Exception as e:
        raise ValueError(f"{Path(path).name}: not a valid .tflite file ({(str(e).strip().splitlines() or [''])[0][:200]})") from None
    sigs = it.get_signature_list()
    if sigs:
        name = next(iter(sigs))
        details = it.get_signature_runner(name).get_input_details()
        # the file keeps a signature's inputs sorted by name; the graph's tensor index is the model's own order
        items = sorted(details.items(), key=lambda kv: int(kv[1].get("index", 0)))
    else:
        items = [(d["name"], d) for d in it.get_input_details()]
    specs = []
    for k, d in items:
        shape = tuple(int(x) for x in d["shape"])
        specs.append(TensorSpec(k, np_dtype_name(d["dtype"]), shape))
    return InputSpec(tuple(specs))


def np_dtype_name(dtype: Any) -> str:
    import numpy as np  # lazy: the artifact module stays light

    return np.dtype(dtype).name


def sha256_module(module: Any) -> str:
    """Content hash of a torch module: its class name plus every parameter and buffer."""
    import torch

    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())  # no copy
    return h.hexdigest()


def onnx_input_spec(path: str | Path) -> InputSpec:
    """The graph inputs of an ONNX file (initializers excluded), dims named where dynamic."""
    import onnx  # heavy: only when an ONNX file is read

    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    specs = []
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        t = inp.type.tensor_type
        dims: list[int | str] = []
        for i, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value > 0:
                dims.append(int(d.dim_value))
            else:
                dims.append(d.dim_param or f"{inp.name}_dim{i}")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name
        specs.append(TensorSpec(inp.name, dtype, tuple(dims)))
    return InputSpec(tuple(specs))


def node_name(node: Any, index: int) -> str:
    """An ONNX node's name, or `<op_type>_<index>` for an unnamed one (the same in analysis and graph passes)."""
    return node.name or f"{node.op_type}_{index}"


def onnx_size_bytes(path: str | Path) -> int:
    """Bytes on disk of an ONNX model, including external-data files it references."""
    import onnx  # heavy: only when an ONNX file is read

    path = Path(path)
    total = path.stat().st_size
    model = onnx.load(str(path), load_external_data=False)
    seen = set()
    for init in model.graph.initializer:
        for kv in init.external_data:
            if kv.key == "location" and kv.value not in seen:
                seen.add(kv.value)
                f = path.parent / kv.value
                if f.exists():
                    total += f.stat().st_size
    return total


@dataclass(frozen=True)
class Artifact:
    """An immutable model value. Passes return new artifacts and never mutate the one they were given.

    `path` is where the model file lives (for "torch", an optional safetensors copy of its weights);
    `module` holds the live torch module for kind "torch" (not part of equality or hashing);
    `meta` carries small facts that travel with the model (model family, output names, ...);
    `rebuild` (torch only) says how to rebuild the module's architecture from the artifact the pass started
    from: {"builder": a name registered with `register_builder`, "args": JSON}. With it the pipeline saves a
    torch stage (`save_weights`) and resumes it (`from_weights`) without running the pass again.
    """

    kind: Kind
    path: Path | None
    input_spec: InputSpec
    sha256: str
    size_bytes: int
    module: Any = field(default=None, compare=False, repr=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    rebuild: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_onnx(cls, path: str | Path, meta: dict[str, Any] | None = None) -> Artifact:
        """An ONNX artifact from a file on disk (its InputSpec is read from the graph)."""
        path = Path(path)
        return cls(
            kind="onnx",
            path=path,
            input_spec=onnx_input_spec(path),
            sha256=sha256_file(path),
            size_bytes=onnx_size_bytes(path),
            meta=dict(meta or {}),
        )

    @classmethod
    def from_openvino(cls, path: str | Path, meta: dict[str, Any] | None = None) -> Artifact:
        """An OpenVINO IR artifact (model.xml with its model.bin beside it)."""
        ov = require("openvino", "an OpenVINO IR model")

        path = Path(path)
        model = ov.Core().read_model(str(path))
        specs = []
        for i, p in enumerate(model.inputs):
            shape = tuple(int(d.get_length()) if d.is_static else ("batch" if j == 0 else "sequence")
                          for j, d in enumerate(p.get_partial_shape()))
            specs.append(TensorSpec(p.get_any_name(), p.get_element_type().to_dtype().name, shape))
        weights = path.with_suffix(".bin")
        size = path.stat().st_size + (weights.stat().st_size if weights.exists() else 0)
        return cls(kind="openvino", path=path, input_spec=InputSpec(tuple(specs)), sha256=sha256_files(path, weights),
                   size_bytes=size, meta=dict(meta or {}))

    @classmethod
    def from_file(cls, kind: str, path: str | Path, input_spec: InputSpec | None = None,
                  meta: dict[str, Any] | None = None) -> Artifact:
        """A file-backed artifact of any kind: onnx (.onnx), openvino (.xml + .bin), tflite (.tflite; its inputs
        are read from its first signature when `input_spec` is not given), ncnn (.param + .bin beside it) or
        coreml (a .mlpackage folder). ncnn and coreml need `input_spec` (their files do not hold the shapes).
        Raises ValueError for an unknown kind, a missing file or a missing input_spec."""
        path = Path(path)
        if kind == "onnx":
            return cls.from_onnx(path, meta=meta)
        if kind == "openvino":
            return cls.from_openvino(path, meta=meta)
        if kind not in FILE_KINDS:
            raise ValueError(f"unknown model kind {kind!r}; file kinds: {', '.join(FILE_KINDS)}")
        if not path.exists():
            raise ValueError(f"{path}: no such {kind} model")
        if kind == "ncnn" and not path.with_suffix(".bin").exists():
            raise ValueError(f"{path}: its weights {path.with_suffix('.bin').name} are missing")
        if input_spec is None:
            if kind != "tflite":
                raise ValueError(f"a {kind} model needs its input spec (the file does not record shapes)")
            input_spec = tflite_input_spec(path)
        return cls(kind=kind, path=path, input_spec=input_spec, sha256=content_sha256(kind, path),  # type: ignore[arg-type]
                   size_bytes=file_size(kind, path), meta=dict(meta or {}))

    @classmethod
    def from_module(cls, module: Any, input_spec: InputSpec, meta: dict[str, Any] | None = None,
                    rebuild: tuple[str, dict[str, Any]] | None = None) -> Artifact:
        """A torch artifact around a live module (size is the bytes of its parameters and buffers).

        `rebuild`: (builder name, JSON-serializable args) that rebuild this architecture from the input
        artifact of the pass that made it (see `register_builder`); None: the stage cannot be resumed.
        """
        size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        return cls(
            kind="torch",
            path=None,
            input_spec=input_spec,
            sha256=sha256_module(module),
            size_bytes=int(size),
            module=module,
            meta=dict(meta or {}),
            rebuild=_recipe(rebuild),
        )

    def save_weights(self, folder: str | Path, parent_sha256: str) -> Artifact:
        """Write a torch artifact to `folder`: `model.safetensors` (its state dict; tied tensors once) and
        `rebuild.json` (its rebuild recipe, the parent's and its own sha256). Returns it with `path` set.
        Raises ValueError for a non-torch artifact or one without a rebuild recipe."""
        if self.kind != "torch" or self.module is None:
            raise ValueError(f"only a live torch module can be saved as weights (got {self.kind})")
        if self.rebuild is None:
            raise ValueError("no rebuild recipe: the pass that made it does not say how to rebuild its architecture")
        from safetensors.torch import save_model

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        weights = folder / WEIGHTS_FILE
        _atomic(weights, lambda tmp: save_model(self.module, str(tmp)))
        desc = {"format": REBUILD_FORMAT, **self.rebuild, "parent_sha256": parent_sha256, "sha256": self.sha256,
                "class": type(self.module).__qualname__}
        _atomic(folder / REBUILD_FILE, lambda tmp: tmp.write_text(json.dumps(desc, indent=2, sort_keys=True)))
        return replace(self, path=weights)

    @classmethod
    def from_weights(cls, path: str | Path, parent: Artifact, ctx: Any = None, input_spec: InputSpec | None = None,
                     meta: dict[str, Any] | None = None) -> Artifact:
        """The torch artifact `save_weights` wrote at `path` (model.safetensors), rebuilt from `parent`.

        The builder named in rebuild.json rebuilds the architecture from `parent` (which must be the model it
        was built from: same sha256), then every tensor is loaded from safetensors (strict: same keys and
        shapes; no pickle anywhere), and the result must hash to the saved sha256. Raises ValueError when
        any of that does not hold, so a caller can fall back to running the pass.
        """
        from safetensors.torch import load_model

        path = Path(path)
        desc_path = path.with_name(REBUILD_FILE)
        if not path.is_file() or not desc_path.is_file():
            raise ValueError(f"{path.parent}: no {WEIGHTS_FILE} + {REBUILD_FILE} pair")
        desc = json.loads(desc_path.read_text())
        if desc.get("format") != REBUILD_FORMAT:
            raise ValueError(f"{desc_path}: format {desc.get('format')!r}, expected {REBUILD_FORMAT}")
        if desc.get("parent_sha256") != parent.sha256:
            raise ValueError(f"{desc_path}: built from another model than the one given")
        try:
            builder = get_builder(desc["builder"])
        except KeyError as e:
            raise ValueError(f"{desc_path}: {e.args[0]}") from None
        module = builder(parent, desc.get("args") or {}, ctx)
        if module is parent.module:
            raise ValueError(f"builder {desc['builder']!r} returned its parent module instead of a new one")
        try:
            missing, unexpected = load_model(module, str(path), strict=False)
        except Exception as e:  # a shape that does not fit (RuntimeError), a torn file (SafetensorError)
            raise ValueError(f"{path}: {(str(e).strip().splitlines() or ['unreadable'])[-1].strip()[:200]}") from None
        if missing or unexpected:
            raise ValueError(f"{path}: state dict does not fit the rebuilt architecture "
                             f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
        module.eval()
        art = cls.from_module(module, input_spec or parent.input_spec, meta=meta,
                              rebuild=(desc["builder"], desc.get("args") or {}))
        if art.sha256 != desc.get("sha256"):
            raise ValueError(f"{path}: the rebuilt model does not hash to the saved sha256")
        return replace(art, path=path)

    def describe(self) -> dict[str, Any]:
        """The artifact as the ledger records it."""
        return {
            "kind": self.kind,
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "inputs": self.input_spec.to_dict(),
        }
