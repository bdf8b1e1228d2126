"""Artifact: one model in one form (torch module, ONNX file, ...) with its InputSpec and content hash."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Kind = Literal["torch", "onnx", "tflite", "openvino"]
KINDS: tuple[str, ...] = ("torch", "onnx", "tflite", "openvino")


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


def content_sha256(kind: str, path: str | Path) -> str:
    """The content hash an artifact of `kind` stored at `path` is recorded with."""
    path = Path(path)
    return sha256_files(path, path.with_suffix(".bin")) if kind == "openvino" else sha256_file(path)


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


@dataclass(frozen=True)
class Artifact:
    """An immutable model value. Passes return new artifacts and never mutate the one they were given.

    `path` is where the model file lives (for "torch", an optional safetensors copy of its weights);
    `module` holds the live torch module for kind "torch" (not part of equality or hashing);
    `meta` carries small facts that travel with the model (model family, output names, ...).
    """

    kind: Kind
    path: Path | None
    input_spec: InputSpec
    sha256: str
    size_bytes: int
    module: Any = field(default=None, compare=False, repr=False)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    @classmethod
    def from_onnx(cls, path: str | Path, meta: dict[str, Any] | None = None) -> Artifact:
        """An ONNX artifact from a file on disk (its InputSpec is read from the graph)."""
        from edgeopt.load import onnx_input_spec, onnx_size_bytes

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
        import openvino as ov

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
    def from_module(cls, module: Any, input_spec: InputSpec, meta: dict[str, Any] | None = None) -> Artifact:
        """A torch artifact around a live module (size is the bytes of its parameters and buffers)."""
        size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
        return cls(
            kind="torch",
            path=None,
            input_spec=input_spec,
            sha256=sha256_module(module),
            size_bytes=int(size),
            module=module,
            meta=dict(meta or {}),
        )

    def describe(self) -> dict[str, Any]:
        """The artifact as the ledger records it."""
        return {
            "kind": self.kind,
            "path": str(self.path) if self.path else None,
            "sha256": self.sha256,
            "size_bytes": self.size_bytes,
            "inputs": self.input_spec.to_dict(),
        }
