"""Export a live PyTorch artifact to an ONNX file (TorchScript-based or dynamo exporter), atomically."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError


def export_onnx(art: Artifact, out: Path, *, opset: int = 17, exporter: Literal["torchscript", "dynamo"] = "torchscript",
                dynamic_batch: bool = True, dynamic_axes: dict[str, dict[int, str]] | None = None) -> Artifact:
    """Write `art`'s module (run on its example inputs) to `out` and return the ONNX artifact.

    The module is left exactly as it was (the exporters switch submodules to eval mode; their modes are
    given back). Named dynamic dims of the input spec stay dynamic when `dynamic_batch` (the default).
    An exporter failure is a PassError with the exporter's first line; nothing is left at `out`.
    """
    import torch  # lazy: importing edgeopt stays torch-free

    module = art.module
    example = art.meta.get("example_inputs")
    if module is None or example is None:
        raise PassError("convert.onnx needs a live module with example inputs")
    names = list(art.meta.get("input_names") or art.input_spec.names)
    args = tuple(example.values()) if isinstance(example, dict) else tuple(example)
    output_names = list(art.meta.get("output_names") or ["output"])
    if dynamic_axes is None and dynamic_batch:
        dynamic_axes = {}
        for spec in art.input_spec.inputs:
            dynamic_axes[spec.name] = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
        for o in output_names:
            dynamic_axes[o] = {0: "batch"}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    modes = [(m, m.training) for m in module.modules()]  # the exporters switch modes: give them back after
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                torch.onnx.export(module, args, str(tmp), input_names=names, output_names=output_names,
                                  dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
                                  do_constant_folding=True)
            else:
                dyn_shapes = None
                if dynamic_axes:
                    dim = torch.export.Dim
                    cache: dict[str, object] = {}
                    dyn_shapes = tuple(
                        {i: cache.setdefault(n, dim.AUTO) for i, n in dynamic_axes.get(nm, {}).items()} or None
                        for nm in names
                    )
                prog = torch.onnx.export(module, args, input_names=names, output_names=output_names,
                                         dynamic_shapes=dyn_shapes, opset_version=opset, dynamo=True,
                                         optimize=True)
                prog.save(str(tmp))
    except Exception as e:  # exporter errors are long; keep the first line
        tmp.unlink(missing_ok=True)
        first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
        raise PassError(f"convert.onnx ({exporter}) failed: {first[:300]}") from None
    finally:
        for m, training in modes:
            m.training = training
    tmp.replace(out)
    meta = {k: v for k, v in art.meta.items() if k not in ("example_inputs",)}
    meta["exporter"] = exporter
    return Artifact.from_onnx(out, meta=meta)
