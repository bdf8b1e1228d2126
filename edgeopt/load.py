"""The one model loader: zoo names, model files and folders (registered formats), torch modules -> Artifact."""

from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.errors import InputError

# ONNX operator domains ONNX Runtime's CPU build implements; a node from any other domain cannot run.
KNOWN_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "com.microsoft.nchwc", "ai.onnx.preview.training",
                 "com.ms.internal.nhwc", "pkg.onnxscript.torch_lib.common"}
MIN_OPSET, MAX_OPSET = 7, 23
# A Hugging Face config.json beside an .onnx file (optimum exports write one): meta key -> its config keys, first
# found wins (GPT-2 names them n_head / n_embd, encoder-decoders encoder_attention_heads / d_model)
HF_CONFIG_INTS = {"num_heads": ("num_attention_heads", "n_head", "encoder_attention_heads"),
                  "hidden_size": ("hidden_size", "n_embd", "d_model"),
                  "vocab_size": ("vocab_size",)}
MAX_HF_CONFIG_BYTES = 1 << 20


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


# ---------------------------------------------------------------------------------------------- registries
@dataclass(frozen=True)
class ZooEntry:
    """A bundled model, loaded by name as `zoo:NAME`: `load(name, seq_len=, batch=)` returns its Artifact."""

    name: str
    description: str
    load: Callable[..., Artifact]


@dataclass(frozen=True)
class Format:
    """A model file or folder kind: `matches(path)` says whether it reads `path`, `load(path, seq_len=, batch=)`
    returns the Artifact."""

    name: str
    matches: Callable[[Path], bool]
    load: Callable[..., Artifact]


_ZOO: dict[str, ZooEntry] = {}
_FORMATS: dict[str, Format] = {}
_DISCOVERED = False
PLUGIN_PACKAGE = "edgeopt.zoo"  # its modules register zoo models and formats; imported on first use


def _add(table: dict[str, Any], what: str, entry: ZooEntry | Format) -> None:
    if entry.name in table and table[entry.name].load is not entry.load:
        raise RuntimeError(f"{what} {entry.name!r} registered twice")
    table[entry.name] = entry


def register_zoo(name: str, description: str) -> Callable[[Callable[..., Artifact]], Callable[..., Artifact]]:
    """Decorator: register `fn(name, *, seq_len, batch) -> Artifact` as the bundled model `zoo:NAME`."""
    return lambda fn: _add(_ZOO, "zoo model", ZooEntry(name, description, fn)) or fn


def register_format(name: str, matches: Callable[[Path], bool]
                    ) -> Callable[[Callable[..., Artifact]], Callable[..., Artifact]]:
    """Decorator: register `fn(path, *, seq_len, batch) -> Artifact` for the paths `matches` accepts (formats
    are tried in registration order; they should not overlap)."""
    return lambda fn: _add(_FORMATS, "model format", Format(name, matches, fn)) or fn


def _discover() -> None:
    """Import every module of PLUGIN_PACKAGE once, so each registers its entries (the zoo imports this
    module, never the reverse; found by name like the pass registry, so importing edgeopt stays lean)."""
    global _DISCOVERED
    if not _DISCOVERED:
        pkg = importlib.import_module(PLUGIN_PACKAGE)
        for info in pkgutil.iter_modules(pkg.__path__, prefix=PLUGIN_PACKAGE + "."):
            importlib.import_module(info.name)
        _DISCOVERED = True


def zoo_models() -> dict[str, str]:
    """Every bundled model: name -> description."""
    _discover()
    return {name: e.description for name, e in sorted(_ZOO.items())}


def formats() -> dict[str, Format]:
    """Every registered model file/folder format by name, in the order they are tried."""
    _discover()
    return dict(_FORMATS)


# ---------------------------------------------------------------------------------------------- the loader
def load_model(source: str | Path | Any, example_inputs: Any = None, *, seq_len: int = 128,
               batch: int = 1) -> Artifact:
    """An Artifact from a zoo name (`zoo:NAME`), a model file or folder (.onnx, OpenVINO .xml, a local
    Hugging Face folder: any registered format), a torch.nn.Module with `example_inputs`, or an Artifact
    (returned as is). `seq_len` and `batch` shape the example inputs of models built here (zoo, Hugging Face)."""
    if isinstance(source, Artifact):
        return source
    if not isinstance(source, (str, Path)):
        return _from_module(source, example_inputs)
    s = str(source)
    if s.startswith("zoo:"):
        known = zoo_models()
        if s[4:] not in known:
            raise InputError(f"{s}: unknown zoo model; known: {', '.join('zoo:' + k for k in known)}")
        return _ZOO[s[4:]].load(s[4:], seq_len=seq_len, batch=batch)
    p = Path(s)
    if not p.exists():
        raise InputError(f"{p}: no such file or folder")
    for fmt in formats().values():
        if fmt.matches(p):
            return fmt.load(p, seq_len=seq_len, batch=batch)
    if p.is_dir():
        raise InputError(f"{p}: a folder without config.json is not a Hugging Face model folder")
    raise InputError(f"{p}: unsupported model file type {p.suffix or '(none)'!r}; expected .onnx, OpenVINO .xml, "
                     ".tflite, a zoo: name or a Hugging Face folder")


def hf_config_meta(model_path: Path) -> dict[str, Any]:
    """The model facts a Hugging Face `config.json` beside `model_path` gives, under the meta keys the Hugging Face
    folder loader sets: `family` (model_type), `num_heads`, `hidden_size`, `vocab_size` ({} without a readable
    config). Plain JSON, read only; values of the wrong type are left out (the model file still loads)."""
    f = Path(model_path).parent / "config.json"
    try:
        if not f.is_file() or f.stat().st_size > MAX_HF_CONFIG_BYTES:
            return {}
        cfg = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # unreadable, not UTF-8, not JSON, nested too deep
        return {}
    if not isinstance(cfg, dict):
        return {}
    meta: dict[str, Any] = {}
    if isinstance(cfg.get("model_type"), str) and cfg["model_type"].strip():
        meta["family"] = cfg["model_type"].strip()
    for key, names in HF_CONFIG_INTS.items():
        v = next((cfg[n] for n in names if n in cfg), None)
        if isinstance(v, int) and not isinstance(v, bool) and v > 0:
            meta[key] = v
    return meta


@register_format("onnx", lambda p: p.is_file() and p.suffix.lower() == ".onnx")
def _from_onnx(path: Path, *, seq_len: int, batch: int) -> Artifact:
    """An ONNX file (checked), with the family, heads and width of a Hugging Face config.json beside it, so
    graph.fuse can run ONNX Runtime's transformer optimizer on it."""
    load_onnx_checked(path)
    return Artifact.from_onnx(path, meta={"source": str(path), **hf_config_meta(path)})


@register_format("openvino", lambda p: p.is_file() and p.suffix.lower() == ".xml" and p.with_suffix(".bin").exists())
def _from_openvino(path: Path, *, seq_len: int, batch: int) -> Artifact:
    try:
        return Artifact.from_openvino(path, meta={"source": str(path)})
    except InputError:  # openvino not installed: the message names the extra
        raise
    except ImportError:
        raise InputError(f"{path}: OpenVINO IR needs the openvino package") from None
    except Exception as e:
        raise InputError(f"{path}: not a readable OpenVINO IR ({e.__class__.__name__})") from None


@register_format("tflite", lambda p: p.is_file() and p.suffix.lower() == ".tflite")
def _from_tflite(path: Path, *, seq_len: int, batch: int) -> Artifact:
    """A LiteRT (.tflite) flatbuffer; its inputs come from its first signature (read by LiteRT's interpreter)."""
    try:
        return Artifact.from_file("tflite", path, meta={"source": str(path)})
    except InputError:  # ai-edge-litert not installed: the message names the extra
        raise
    except ValueError as e:
        raise InputError(str(e)) from None


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
