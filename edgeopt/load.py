"""Loading models: ONNX files (with external data), local Hugging Face folders, torch modules and zoo names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.errors import InputError

# ONNX operator domains ONNX Runtime's CPU build implements; a node from any other domain cannot run.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training",
                 "com.ms.internal.nhwc", "pkg.onnxscript.torch_lib.common"}
MIN_OPSET, MAX_OPSET = 7, 23


def _onnx_dtype_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name


def load_onnx_checked(path: str | Path, load_external_data: bool = False):
    """Load and check an ONNX model; any problem becomes a one-line InputError naming the file."""
    import onnx

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected an .onnx file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty file")
    try:
        model = onnx.load(str(path), load_external_data=load_external_data)
    except Exception as e:  # protobuf raises DecodeError, RuntimeWarning, ValueError, ...
        raise InputError(f"{path}: not a valid ONNX file ({e.__class__.__name__})") from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{path}: not a valid ONNX file (empty graph)")
    if load_external_data is False:
        try:
            onnx.checker.check_model(str(path), full_check=False)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else e.__class__.__name__
            raise InputError(f"{path}: invalid ONNX model: {first[:200]}") from None
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    unknown = sorted({n.domain for n in model.graph.node if n.domain not in KNOWN_DOMAINS})
    local_funcs = {(f.domain, f.name) for f in model.functions}
    unknown = [d for d in unknown if not any(fd == d for fd, _ in local_funcs)]
    if unknown:
        op = next(n for n in model.graph.node if n.domain == unknown[0])
        raise InputError(f"{path}: op {op.op_type!r} from unknown domain {unknown[0]!r} has no runtime kernel")
    v = opsets.get("ai.onnx")
    if v is not None and not (MIN_OPSET <= v <= MAX_OPSET):
        raise InputError(f"{path}: opset {v} is not supported (supported: {MIN_OPSET}..{MAX_OPSET})")
    check_external_data(model, path)
    check_types_and_shapes(model, path)
    return model


def check_external_data(model: Any, path: Path) -> None:
    """Every external initializer's file exists and holds the bytes its shape and dtype declare (not read)."""
    import numpy as np
    import onnx

    sizes: dict[str, int] = {}
    for init in model.graph.initializer:
        if init.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {kv.key: kv.value for kv in init.external_data}
        loc = info.get("location", "")
        f = (path.parent / loc).resolve()
        if not loc or Path(loc).is_absolute() or ".." in Path(loc).parts:
            raise InputError(f"{path}: initializer {init.name!r}: external data location {loc!r} is not a file "
                             "beside the model")
        if loc not in sizes:
            if not f.is_file():
                raise InputError(f"{path}: initializer {init.name!r}: external data file {loc} is missing")
            sizes[loc] = f.stat().st_size
        offset, length = int(info.get("offset", 0)), info.get("length")
        try:
            itemsize = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(init.data_type)).itemsize
        except Exception:  # string or sub-byte types: only the declared length can be checked
            itemsize = None
        expected = int(np.prod(init.dims, dtype=np.int64)) * itemsize if itemsize else None
        if length is not None and expected is not None and int(length) != expected:
            raise InputError(f"{path}: initializer {init.name!r}: external data length {length} bytes, but its "
                             f"shape {list(init.dims)} needs {expected}")
        need = int(length) if length is not None else expected
        if need is not None and offset + need > sizes[loc]:
            raise InputError(f"{path}: initializer {init.name!r}: external data file {loc} has {sizes[loc]} bytes, "
                             f"the tensor needs bytes {offset}..{offset + need} (file truncated?)")


def check_types_and_shapes(model: Any, path: Path) -> None:
    """Types and shapes agree with every op's schema (ONNX strict shape inference, nothing run).

    Where ONNX's inference objects but ONNX Runtime can build a session from the file, the model is
    accepted (ONNX Runtime is the runtime edgeopt measures with); otherwise the inference error names the op.
    """
    import onnx

    try:
        onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
        return
    except Exception as e:
        lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
        first = lines[-1] if lines else e.__class__.__name__
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception:
        raise InputError(f"{path}: invalid ONNX model: {first[:240]}") from None


def onnx_input_spec(path: str | Path) -> InputSpec:
    """The graph inputs of an ONNX file (initializers excluded), dims named where dynamic."""
    import onnx

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
        specs.append(TensorSpec(inp.name, _onnx_dtype_name(t.elem_type), tuple(dims)))
    return InputSpec(tuple(specs))


def onnx_size_bytes(path: str | Path) -> int:
    """Bytes on disk of an ONNX model, including external-data files it references."""
    import onnx

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


def load_model(source: str | Path | Any, example_inputs: Any = None) -> Artifact:
    """An Artifact from a zoo name, an .onnx file, a local Hugging Face folder or a torch.nn.Module."""
    if not isinstance(source, (str, Path)):
        return _from_module(source, example_inputs)
    s = str(source)
    if s.startswith("zoo:"):
        from edgeopt.zoo import load_zoo_model

        return load_zoo_model(s[4:])
    p = Path(s)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    if p.is_dir():
        if (p / "config.json").exists():
            from edgeopt.zoo.hf import load_hf_folder

            return load_hf_folder(p)
        raise InputError(f"{p}: a folder without config.json is not a Hugging Face model folder")
    if p.suffix.lower() == ".xml" and p.with_suffix(".bin").exists():
        try:
            return Artifact.from_openvino(p, meta={"source": str(p)})
        except ImportError:
            raise InputError(f"{p}: OpenVINO IR needs the openvino package") from None
        except Exception as e:
            raise InputError(f"{p}: not a readable OpenVINO IR ({e.__class__.__name__})") from None
    if p.suffix.lower() != ".onnx":
        raise InputError(f"{p}: unsupported model file type {p.suffix or '(none)'!r}; expected .onnx, OpenVINO .xml, a zoo: name or a Hugging Face folder")
    load_onnx_checked(p)
    return Artifact.from_onnx(p, meta={"source": str(p)})


def eval_copy(module: Any) -> Any:
    """`module` in eval mode without touching the caller's: a deep copy if any submodule is in training mode."""
    import copy

    if any(m.training for m in module.modules()):
        module = copy.deepcopy(module)
    return module.eval()


def _from_module(module: Any, example_inputs: Any) -> Artifact:
    import torch

    if not isinstance(module, torch.nn.Module):
        raise InputError(f"expected a path, a zoo: name or a torch.nn.Module, got {type(module).__name__}")
    if example_inputs is None:
        raise InputError("a torch.nn.Module needs example_inputs (a tensor, a tuple of tensors or a dict)")
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if isinstance(example_inputs, dict):
        named = list(example_inputs.items())
    else:
        named = [(f"input_{i}", t) for i, t in enumerate(example_inputs)]
    specs = []
    for name, t in named:
        if not isinstance(t, torch.Tensor):
            raise InputError(f"example input {name!r} is a {type(t).__name__}, expected a torch.Tensor")
        shape = tuple(["batch", *t.shape[1:]]) if t.dim() > 0 else ()
        specs.append(TensorSpec(name, str(t.numpy().dtype) if t.dtype != torch.bfloat16 else "float32", shape))
    meta = {"source": f"module:{type(module).__name__}", "example_inputs": example_inputs, "input_names": [n for n, _ in named],
            "batch_example": int(named[0][1].shape[0]) if named and named[0][1].dim() > 0 else 1}
    return Artifact.from_module(eval_copy(module), InputSpec(tuple(specs)), meta=meta)
