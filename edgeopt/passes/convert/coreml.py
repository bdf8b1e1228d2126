"""convert.coreml: PyTorch -> a Core ML ML Program (.mlpackage) through coremltools, checked structurally."""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError, first_line
from edgeopt.extras import require
from edgeopt.passes.base import Pass, PassConfig, PassContext, register, torch_module_copy
from edgeopt.passes.convert._export import example_args, torch_outputs

PACKAGE = "model.mlpackage"
NOT_MEASURED = "Core ML runs only on Apple platforms: not measured on this host"
# deployment targets that run ML Programs (iOS 15 / macOS 12 and later), as coremltools names them
Target = Literal["iOS15", "iOS16", "iOS17", "iOS18", "iOS26", "macOS12", "macOS13", "macOS14", "macOS15", "macOS26",
                 "watchOS8", "watchOS9", "watchOS10", "watchOS11", "watchOS26",
                 "tvOS15", "tvOS16", "tvOS17", "tvOS18", "tvOS26"]


class _OpLog(logging.Handler):
    """Catches the op coremltools names when it fails ("converting 'cummax' op (located at: '3')")."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.op: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        m = re.search(r"converting '([^']+)' op", record.getMessage())
        if m and self.op is None:
            self.op = m.group(1)


def mlprogram_census(spec: Any) -> tuple[Counter, Counter]:
    """(ops by type, constant tensors of rank >= 1 by dtype) over every function and nested block of an
    ML Program spec, read from the protobuf coremltools saved."""
    from coremltools.proto import MIL_pb2  # lazy: coremltools imports torch and its converters

    ops: Counter = Counter()
    weights: Counter = Counter()

    def walk(block: Any) -> None:
        for op in block.operations:
            ops[op.type] += 1
            if op.type == "const" and op.outputs:
                t = op.outputs[0].type
                if t.HasField("tensorType") and t.tensorType.rank >= 1:
                    weights[MIL_pb2.DataType.Name(t.tensorType.dataType)] += 1
            for inner in op.blocks:
                walk(inner)

    for fn in spec.mlProgram.functions.values():
        for block in fn.block_specializations.values():
            walk(block)
    return ops, weights


def _features(described: Any) -> list[dict[str, Any]]:
    from coremltools.proto import FeatureTypes_pb2  # lazy: coremltools imports torch and its converters

    out = []
    for f in described:
        arr = f.type.multiArrayType
        out.append({"name": f.name, "shape": [int(d) for d in arr.shape],
                    "dtype": FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower()})
    return out


@register("convert.coreml")
class ConvertCoreML(Pass):
    """Convert a torch model to a Core ML ML Program (`model.mlpackage`) with coremltools, fp16 by default.

    The module is traced at a static batch (`batch`, default the measured batch) and converted with its input
    and output names; `precision` is the compute precision coremltools bakes into the program (fp16: fp16
    weights and activations, casts at the fp32 inputs/outputs). The package is checked structurally: the
    inputs and outputs keep their names and shapes (the outputs' shapes those PyTorch returns), and the op
    census (ops by type) and the weights' dtypes are recorded. Core ML runs only on Apple platforms, so the
    pass cannot compare outputs here (see `tolerance_reason`); ctx.notes["coreml"] says "not measured".
    An op coremltools cannot lower is a one-line PassError naming it.
    """

    class Config(PassConfig):
        precision: Literal["fp16", "fp32"] = "fp16"
        minimum_deployment_target: Target | None = None
        batch: int | None = Field(default=None, ge=1, description="static batch (default: measure.batch, else 1)")

    accepts = ("torch",)
    produces = "coreml"
    tolerance = None
    tolerance_reason = ("Core ML runs only on Apple platforms, so its outputs cannot be computed on this host: "
                        "the pass checks the package structurally instead (input/output names and shapes as "
                        "PyTorch's, a census of the program's ops, the weights' dtype for the precision)")

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import torch  # lazy: torch only when a conversion runs

        ct = require("coremltools", "convert.coreml")
        cfg = self.config
        batch = int(cfg.batch or getattr(ctx.measure, "batch", 0) or 1)
        module = torch_module_copy(art, self.name).eval()
        args = example_args(art, ctx, batch=batch)
        ref = torch_outputs(module, args)
        in_names = art.input_spec.names
        out_names = list(art.meta.get("output_names") or [])
        if len(out_names) != len(ref):
            out_names = [f"output_{i}" for i in range(len(ref))]
        catcher = _OpLog()
        ct_log = logging.getLogger("coremltools")
        ct_log.addHandler(catcher)
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    traced = torch.jit.trace(module, tuple(args), check_trace=False)
                except Exception as e:
                    raise PassError(f"convert.coreml: torch.jit.trace cannot trace the model: {first_line(e)}") from None
                kwargs: dict[str, Any] = {}
                if cfg.minimum_deployment_target:
                    kwargs["minimum_deployment_target"] = getattr(ct.target, cfg.minimum_deployment_target)
                precision = ct.precision.FLOAT16 if cfg.precision == "fp16" else ct.precision.FLOAT32
                try:
                    mlmodel = ct.convert(
                        traced, convert_to="mlprogram", compute_precision=precision,
                        inputs=[ct.TensorType(name=n, shape=tuple(a.shape), dtype=a.numpy().dtype)
                                for n, a in zip(in_names, args)],
                        outputs=[ct.TensorType(name=n) for n in out_names], **kwargs)
                except PassError:
                    raise
                except Exception as e:
                    op = catcher.op
                    where = f" op {op}" if op else ""
                    raise PassError(f"convert.coreml: coremltools cannot convert{where}: {first_line(e)}") from None
        finally:
            ct_log.removeHandler(catcher)
        dest = ctx.stage_dir / PACKAGE
        tmp = Path(tempfile.mkdtemp(prefix=".coreml-", dir=ctx.stage_dir))
        try:
            mlmodel.save(str(tmp / PACKAGE))
            info = self._check(ct, tmp / PACKAGE, in_names, out_names, args, ref)
            old = tmp / "old"
            if dest.exists():
                dest.replace(old)  # a folder cannot be replaced in one step: move the old one aside first
            (tmp / PACKAGE).replace(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        info.update({"precision": cfg.precision, "batch": batch, "format": "mlprogram",
                     "minimum_deployment_target": cfg.minimum_deployment_target, "coremltools": ct.__version__})
        ctx.notes["coreml"] = {"measured": False, "why": NOT_MEASURED, **info}
        meta = {k: v for k, v in art.meta.items() if k not in ("example_inputs", "session")}
        meta["coreml"] = {k: v for k, v in info.items() if k != "ops"}
        return Artifact.from_file("coreml", dest, input_spec=art.input_spec, meta=meta)

    def _check(self, ct: Any, package: Path, in_names: list[str], out_names: list[str], args: list[Any],
               ref: list[Any]) -> dict[str, Any]:
        """Read the saved package back: names and shapes as the torch model's; the op census and weight dtypes."""
        spec = ct.utils.load_spec(str(package))
        if not spec.HasField("mlProgram"):
            raise PassError("convert.coreml: the saved package holds no ML Program")
        inputs, outputs = _features(spec.description.input), _features(spec.description.output)
        if [i["name"] for i in inputs] != in_names:
            raise PassError(f"convert.coreml: inputs became {[i['name'] for i in inputs]}, expected {in_names}")
        for i, a in zip(inputs, args):
            if i["shape"] != list(a.shape):
                raise PassError(f"convert.coreml: input {i['name']} has shape {i['shape']}, expected {list(a.shape)}")
        if [o["name"] for o in outputs] != out_names:
            raise PassError(f"convert.coreml: outputs became {[o['name'] for o in outputs]}, expected {out_names}")
        for o, r in zip(outputs, ref):
            if o["shape"] and o["shape"] != list(r.shape):  # an ML Program may leave an output's shape unstated
                raise PassError(f"convert.coreml: output {o['name']} has shape {o['shape']}, PyTorch's is {list(r.shape)}")
        ops, weights = mlprogram_census(spec)
        if not ops:
            raise PassError("convert.coreml: the ML Program holds no ops")
        size = sum(p.stat().st_size for p in package.rglob("*") if p.is_file())
        return {"inputs": inputs, "outputs": outputs, "ops": dict(sorted(ops.items())),
                "weights_dtype": dict(sorted(weights.items())), "size_bytes": size,
                "spec_version": int(spec.specificationVersion)}
