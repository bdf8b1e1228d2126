"""What a .tflite (LiteRT) file holds: its op census, signatures, inputs/outputs and tensor dtypes.

Read with the flatbuffer schema module that ships with the LiteRT runtime (`ai_edge_litert.schema_py_generated`,
the generated `tflite` schema; `litert_converter` carries the same file), through its table API on a
read-only memory map, so a large model's weights are never copied. LiteRT's Python API has no per-op
profiler, so `edgeopt profile` shows this census for a .tflite instead (`NO_PROFILER`).
"""

from __future__ import annotations

import mmap
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from edgeopt.errors import InputError, first_line
from edgeopt.extras import require

NO_PROFILER = "LiteRT has no per-op profiler in Python; showing the op census instead"

# numpy dtype names of the schema's TensorType members that numpy has (the rest keep the schema's name)
_NUMPY_NAMES = {"FLOAT32": "float32", "FLOAT16": "float16", "FLOAT64": "float64", "INT8": "int8", "UINT8": "uint8",
                "INT16": "int16", "UINT16": "uint16", "INT32": "int32", "UINT32": "uint32", "INT64": "int64",
                "UINT64": "uint64", "BOOL": "bool", "COMPLEX64": "complex64", "COMPLEX128": "complex128"}


def _schema() -> Any:
    return require("ai_edge_litert.schema_py_generated", "reading a .tflite file")


def _enum_names(enum_cls: Any) -> dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


class _Reader:
    """One .tflite file mapped read-only, its root Model table and name tables of the schema's enums."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such .tflite file")
        self.fb = _schema()
        self._file = open(self.path, "rb")
        try:
            self.size = self.path.stat().st_size
            self.buf = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if self.size else b""
            if self.size < 8 or not self.fb.Model.ModelBufferHasIdentifier(self.buf, 0):
                raise ValueError("no TFL3 file identifier")
            self.model = self.fb.Model.GetRootAs(self.buf, 0)
            self.ops = _enum_names(self.fb.BuiltinOperator)
            self.types = _enum_names(self.fb.TensorType)
            self._check_extents()
        except InputError:
            self.close()
            raise
        except Exception as e:  # struct.error, IndexError, ValueError from reading past the end
            self.close()
            why = first_line(e, 200)
            if isinstance(e, struct.error) or "smaller than requested" in why:
                why = f"truncated or corrupt: its tables point past its {self.size} bytes"
            raise InputError(f"{self.path}: not a valid .tflite file ({why})") from None

    def _check_extents(self) -> None:
        """Every table the census reads and every weight buffer lies inside the file (catches truncation)."""
        m = self.model
        for i in range(m.SubgraphsLength()):
            sg = m.Subgraphs(i)
            for j in range(sg.OperatorsLength()):
                sg.Operators(j).OpcodeIndex()
            for j in range(sg.TensorsLength()):
                sg.Tensors(j).Type()
        for i in range(m.BuffersLength()):
            b = m.Buffers(i)
            if b.Offset() > 1:  # data stored after the flatbuffer (models over 2 GB)
                end = b.Offset() + b.Size()
                if end > self.size:
                    raise ValueError(f"weight buffer {i} ends at byte {end}, past the end of the file")
            elif b.DataLength():
                b.DataAsNumpy()  # a view: numpy refuses one that would end past the file


    def close(self) -> None:
        buf = getattr(self, "buf", None)
        if isinstance(buf, mmap.mmap):
            self.model = None
            try:
                buf.close()
            except BufferError:  # a view is still alive; the map closes when it is collected
                pass
        self._file.close()

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # --- reading ---------------------------------------------------------------------------------------
    def op_name(self, op: Any) -> str:
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # extended codes live in BuiltinCode
        name = self.ops.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            return f"CUSTOM:{(code.CustomCode() or b'?').decode(errors='replace')}"
        composite = self.fb.BuiltinOptions2.StableHLOCompositeOptions
        if name == "STABLEHLO_COMPOSITE" and op.BuiltinOptions2Type() == composite:
            table = op.BuiltinOptions2()
            opts = self.fb.StableHLOCompositeOptions()
            opts.Init(table.Bytes, table.Pos)
            return f"STABLEHLO_COMPOSITE:{(opts.Name() or b'?').decode(errors='replace')}"
        return name

    def dtype(self, tensor: Any) -> str:
        name = self.types.get(tensor.Type(), f"TYPE_{tensor.Type()}")
        return _NUMPY_NAMES.get(name, name.lower())

    def main_subgraphs(self, signature: str | None = None) -> list[int]:
        """The subgraphs the signatures run (subgraph 0 when the file has none; only `signature`'s when given):
        control-flow and composite bodies they call are not counted again."""
        m = self.model
        sigs = {(m.SignatureDefs(i).SignatureKey() or b"").decode(errors="replace"): m.SignatureDefs(i).SubgraphIndex()
                for i in range(m.SignatureDefsLength())}
        if signature is not None:
            if signature not in sigs:
                raise InputError(f"{self.path}: no signature {signature!r} (signatures: {', '.join(sigs) or 'none'})")
            return [sigs[signature]]
        return sorted(set(sigs.values())) or ([0] if m.SubgraphsLength() else [])

    def const_bytes(self, tensor: Any) -> int:
        """Bytes of the tensor's constant data (a weight); 0 for a tensor computed at run time."""
        b_idx = tensor.Buffer()
        if b_idx <= 0 or b_idx >= self.model.BuffersLength():
            return 0
        b = self.model.Buffers(b_idx)
        return int(b.Size() if b.Offset() > 1 else b.DataLength())  # Offset > 1: stored after the flatbuffer

    def tensor_desc(self, sg: Any, index: int, name: str | None = None) -> dict[str, Any]:
        t = sg.Tensors(index)
        shape = [int(t.ShapeSignature(j)) for j in range(t.ShapeSignatureLength())] or \
                [int(t.Shape(j)) for j in range(t.ShapeLength())]
        desc: dict[str, Any] = {"name": name or (t.Name() or b"").decode(errors="replace"),
                                "dtype": self.dtype(t), "shape": shape}
        q = t.Quantization()
        if q is not None and q.ScaleLength():
            desc["quantization"] = {"scale": [float(q.Scale(j)) for j in range(q.ScaleLength())],
                                    "zero_point": [int(q.ZeroPoint(j)) for j in range(q.ZeroPointLength())]}
        return desc


def op_census(path: str | Path, signature: str | None = None) -> dict[str, int]:
    """Op name -> how many times it occurs in the model's signature subgraphs (only `signature`'s when given),
    most frequent first.

    Builtin ops by their schema name (CONV_2D, FULLY_CONNECTED, ...), custom ops as `CUSTOM:<code>`,
    StableHLO composites (litert-torch's SDPA / norm boundaries) as `STABLEHLO_COMPOSITE:<name>`.
    Raises InputError ("…: not a valid .tflite file (…)") for a truncated or foreign file, or an unknown
    signature.
    """
    with _Reader(path) as r:
        counts: Counter[str] = Counter()
        for i in r.main_subgraphs(signature):
            sg = r.model.Subgraphs(i)
            for j in range(sg.OperatorsLength()):
                counts[r.op_name(sg.Operators(j))] += 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def weight_bytes_read(path: str | Path, signature: str | None = None) -> int:
    """Bytes of constant data one call of `signature` (all signatures when None) reads: every weight buffer its
    subgraphs use, once however many ops share it, except that a table only ever looked up (the data input of
    GATHER / EMBEDDING_LOOKUP, e.g. an LLM's embedding) counts one row."""
    table_input = {"GATHER": 0, "EMBEDDING_LOOKUP": 1}  # which input of a lookup op is its table
    with _Reader(path) as r:
        m = r.model
        uses: dict[int, tuple[int, int, bool]] = {}  # buffer -> (bytes, rows, only looked up)
        for gi in r.main_subgraphs(signature):
            sg = m.Subgraphs(gi)
            for j in range(sg.OperatorsLength()):
                op = sg.Operators(j)
                table = table_input.get(r.op_name(op), -1)
                for k in range(op.InputsLength()):
                    ti = op.Inputs(k)
                    if ti < 0:
                        continue
                    t = sg.Tensors(ti)
                    n = r.const_bytes(t)
                    if not n:
                        continue
                    rows = int(t.Shape(0)) if t.ShapeLength() else 1
                    prev = uses.get(t.Buffer())
                    uses[t.Buffer()] = (n, rows, k == table and (prev is None or prev[2]))
    return int(sum(n // max(rows, 1) if lookup else n for n, rows, lookup in uses.values()))


# ops that carry the multiply-accumulates: (which input is the activation, which the weight)
MATMUL_LIKE = {"FULLY_CONNECTED": (0, 1), "CONV_2D": (0, 1), "DEPTHWISE_CONV_2D": (0, 1), "CONV_3D": (0, 1),
               "TRANSPOSE_CONV": (2, 1), "BATCH_MATMUL": (0, 1)}  # TRANSPOSE_CONV: (output_shape, weights, input)
_INT_ACTIVATIONS = ("int8", "uint8", "int16")
_INT_WEIGHTS = ("int8", "int4", "uint8")


def op_precisions(path: str | Path, signature: str | None = None) -> list[dict[str, Any]]:
    """Each op of the signature subgraphs (only `signature`'s when given) with the precision it computes in, as
    the file declares it (LiteRT has no per-op profiler in Python): {"op_type", "precision", "kernel",
    "matmul_like"}.

    A MatMul-like op (MATMUL_LIKE) whose activation input is an integer type is static "int8" ("int16" for 16-bit
    activations); one whose constant weight is int8 / int4 and whose activation is float is "int8" too: the
    LiteRT quantizer's dynamic-range recipe, which XNNPACK runs with int8 dot products on activations quantized per
    call (`kernel` says "int8 weights, dynamic int8 activations"). A weight that a DEQUANTIZE op turns into float
    first (weight-only int8, fp16 weights) leaves the op float. Any other op computes in its output's dtype."""
    with _Reader(path) as r:
        m = r.model
        out: list[dict[str, Any]] = []
        for gi in r.main_subgraphs(signature):
            sg = m.Subgraphs(gi)
            for j in range(sg.OperatorsLength()):
                op = sg.Operators(j)
                name = r.op_name(op)
                ins = [sg.Tensors(op.Inputs(k)) if op.Inputs(k) >= 0 else None for k in range(op.InputsLength())]
                outs = [sg.Tensors(op.Outputs(k)) for k in range(op.OutputsLength())]
                out_dtype = r.dtype(outs[0]) if outs else "none"
                a, w = MATMUL_LIKE.get(name, (None, None))
                if a is None or a >= len(ins) or ins[a] is None:
                    out.append({"op_type": name, "precision": out_dtype, "kernel": name, "matmul_like": False})
                    continue
                act = r.dtype(ins[a])
                weight = ins[w] if w < len(ins) else None
                wdt = r.dtype(weight) if weight is not None else None
                const = weight is not None and r.const_bytes(weight) > 0
                if act in _INT_ACTIVATIONS:
                    prec, kernel = ("int16" if act == "int16" else "int8"), f"{name} ({act} activations, {wdt} weights)"
                elif const and wdt in _INT_WEIGHTS:
                    prec, kernel = "int8", f"{name} ({wdt} weights, dynamic int8 activations)"
                else:
                    prec, kernel = act, f"{name} ({act})"
                out.append({"op_type": name, "precision": prec, "kernel": kernel, "matmul_like": True})
    return out


def precision_summary(path: str | Path, signature: str | None = None) -> dict[str, Any]:
    """`op_precisions` summed up: {"ops", "matmul_like", "int8" (int8 or int16 compute), "float", "int8_kernels",
    "float_kernels" (kernel -> count, most frequent first), "any_int8", "precisions" (precision -> op count)}."""
    precs = op_precisions(path, signature)
    mm = [p for p in precs if p["matmul_like"]]
    int8 = [p for p in mm if p["precision"] in ("int8", "int16")]
    other = [p for p in mm if p["precision"] not in ("int8", "int16")]

    def count(items: Any) -> dict[str, int]:
        return dict(Counter(items).most_common())

    return {"ops": len(precs), "matmul_like": len(mm), "int8": len(int8), "float": len(other),
            "int8_kernels": count(p["kernel"] for p in int8), "float_kernels": count(p["kernel"] for p in other),
            "any_int8": bool(int8), "precisions": count(p["precision"] for p in precs)}


def tflite_info(path: str | Path) -> dict[str, Any]:
    """What the file declares, as JSON-ready values.

    Keys: `signatures` ({name: {"inputs": [...], "outputs": [...]}} in the model's order, each tensor {name,
    dtype, shape[, quantization]}), `inputs` / `outputs` (of the first signature, else of subgraph 0),
    `subgraphs`, `ops` (total in the signature subgraphs), `tensor_dtypes` (dtype -> count over those
    subgraphs' tensors), `weight_dtypes` (the same for constant tensors: e.g. how many int8 weights),
    `weight_bytes` (bytes of constant data), `int8_weights`, `size_bytes` and `version` (schema version).
    """
    with _Reader(path) as r:
        m = r.model
        signatures: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for i in range(m.SignatureDefsLength()):
            sd = m.SignatureDefs(i)
            sg = m.Subgraphs(sd.SubgraphIndex())
            key = (sd.SignatureKey() or b"").decode(errors="replace")
            # a SignatureDef lists its tensors by name (sorted: output_10 before output_2); the subgraph's own
            # input/output lists hold the model's order
            in_pos = {sg.Inputs(j): j for j in range(sg.InputsLength())}
            out_pos = {sg.Outputs(j): j for j in range(sg.OutputsLength())}
            ins = sorted((sd.Inputs(j) for j in range(sd.InputsLength())),
                         key=lambda t: in_pos.get(t.TensorIndex(), len(in_pos)))
            outs = sorted((sd.Outputs(j) for j in range(sd.OutputsLength())),
                          key=lambda t: out_pos.get(t.TensorIndex(), len(out_pos)))
            signatures[key] = {
                "inputs": [r.tensor_desc(sg, t.TensorIndex(), t.Name().decode(errors="replace")) for t in ins],
                "outputs": [r.tensor_desc(sg, t.TensorIndex(), t.Name().decode(errors="replace")) for t in outs],
            }
        if signatures:
            first = next(iter(signatures.values()))
            inputs, outputs = first["inputs"], first["outputs"]
        elif m.SubgraphsLength():
            sg = m.Subgraphs(0)
            inputs = [r.tensor_desc(sg, sg.Inputs(j)) for j in range(sg.InputsLength())]
            outputs = [r.tensor_desc(sg, sg.Outputs(j)) for j in range(sg.OutputsLength())]
        else:
            inputs, outputs = [], []
        dtypes: Counter[str] = Counter()
        weights: Counter[str] = Counter()
        weight_bytes = 0
        n_ops = 0
        seen_buffers: set[int] = set()
        for i in r.main_subgraphs():
            sg = m.Subgraphs(i)
            n_ops += sg.OperatorsLength()
            for j in range(sg.TensorsLength()):
                t = sg.Tensors(j)
                dt = r.dtype(t)
                dtypes[dt] += 1
                b_idx = t.Buffer()
                size = r.const_bytes(t)
                if size:
                    weights[dt] += 1
                    if b_idx not in seen_buffers:  # buffers shared between signatures count once
                        seen_buffers.add(b_idx)
                        weight_bytes += int(size)
        return {
            "signatures": signatures,
            "inputs": inputs,
            "outputs": outputs,
            "subgraphs": int(m.SubgraphsLength()),
            "ops": int(n_ops),
            "tensor_dtypes": dict(sorted(dtypes.items())),
            "weight_dtypes": dict(sorted(weights.items())),
            "weight_bytes": int(weight_bytes),
            "int8_weights": int(weights.get("int8", 0)),
            "size_bytes": int(r.size),
            "version": int(m.Version()),
        }


def census_summary(census: dict[str, int], top: int = 8) -> str:
    """One line: the `top` most frequent ops with their counts, then how many other ops there are."""
    items = list(census.items())
    head = ", ".join(f"{k}×{v}" for k, v in items[:top])
    rest = sum(v for _, v in items[top:])
    return head + (f", +{rest} other" if rest else "") if items else "no ops"


TFLITE_SCHEMA = "edgeopt.analysis.tflite/1"


def analyze_tflite(path: str | Path, target: dict[str, Any] | None = None) -> dict[str, Any]:
    """`edgeopt analyze` for a .tflite: what the file declares, per signature, without running it (LiteRT has no
    per-op profiler or shape-inferring FLOP counter in Python, so there are no FLOPs or per-op times).

    Keys: `schema` (TFLITE_SCHEMA), `model` (path, size_bytes, subgraphs, version, signatures with their inputs and
    outputs), `target` (as given), `weights` (bytes, dtypes, int8 count), `signatures` ({name: {"ops", "census",
    "matmul_like", "int8", "float", "int8_kernels", "float_kernels", "weight_bytes_read"}}: which MatMul-like ops
    compute in int8 as `op_precisions` reads them, and the constant bytes one call reads), `suggestions` ([{what,
    why}]) and `warnings`."""
    info = tflite_info(path)
    names = list(info["signatures"]) or [None]
    sigs: dict[str, dict[str, Any]] = {}
    for name in names:
        prec = precision_summary(path, name)
        sigs[name or "(subgraph 0)"] = {
            "census": op_census(path, name), **{k: prec[k] for k in ("ops", "matmul_like", "int8", "float",
                                                                     "int8_kernels", "float_kernels")},
            "weight_bytes_read": weight_bytes_read(path, name)}
    census = op_census(path)  # each subgraph once, however many signatures share it
    suggestions: list[dict[str, str]] = []
    n_mm, n_int8 = sum(s["matmul_like"] for s in sigs.values()), sum(s["int8"] for s in sigs.values())
    dot = bool(target and target.get("has_int8_dot"))
    if n_mm and not n_int8:
        suggestions.append({"what": "convert.litert quantize: dynamic_int8",
                            "why": f"all {n_mm} MatMul-like ops compute in float; int8 weights quarter their bytes and "
                                   "XNNPACK runs them with int8 dot products on activations quantized per call"
                                   + ("" if dot or target is None else " (this target has no int8 dot products: "
                                      "expect less speed than size)")})
    wd = info["weight_dtypes"]
    if wd.get("float16") and "DEQUANTIZE" in census:
        suggestions.append({"what": "fp16 weights are unpacked to fp32 at load",
                            "why": "XNNPACK computes them in fp32: they halve the file, not the memory or the time"})
    if "DEQUANTIZE" in census and wd.get("int8") and not n_int8:
        suggestions.append({"what": "weight-only int8 is computed in fp32",
                            "why": "a DEQUANTIZE in front of each weight: it saves disk; dynamic_int8 also saves time"})
    custom = sorted(op for op in census if op.startswith("CUSTOM:"))
    warnings = [f"custom ops {', '.join(custom)}: a runtime without them registered cannot run this file"] if custom else []
    return {"schema": TFLITE_SCHEMA,
            "model": {"path": str(path), "format": "LiteRT (.tflite)", "size_bytes": info["size_bytes"],
                      "subgraphs": info["subgraphs"], "version": info["version"], "signatures": info["signatures"]},
            "target": target, "census": census,
            "weights": {"bytes": info["weight_bytes"], "dtypes": info["weight_dtypes"],
                        "int8": info["int8_weights"]},
            "signatures": sigs, "suggestions": suggestions, "warnings": warnings}
