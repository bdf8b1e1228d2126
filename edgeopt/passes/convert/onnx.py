"""convert.onnx: export a PyTorch module to ONNX with the TorchScript-based or the dynamo exporter."""

from __future__ import annotations

import warnings
from typing import Literal

from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassConfig, PassContext, register


@register("convert.onnx")
class ConvertOnnx(Pass):
    """Export a torch artifact to `model.onnx` in the stage folder.

    Transformer models are exported with eager attention by the TorchScript-based exporter (the default):
    that is the graph form ONNX Runtime's attention fusion recognizes. The dynamo exporter is available
    for models the TorchScript exporter cannot trace.
    """

    class Config(PassConfig):
        opset: int = Field(default=17, ge=9, le=23)
        exporter: Literal["torchscript", "dynamo"] = "torchscript"
        dynamic_batch: bool = True
        dynamic_axes: dict[str, dict[int, str]] | None = None

    accepts = ("torch",)
    produces = "onnx"

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import torch

        cfg = self.config
        module = art.module
        example = art.meta.get("example_inputs")
        if module is None or example is None:
            raise PassError("convert.onnx needs a live module with example inputs")
        names = list(art.meta.get("input_names") or art.input_spec.names)
        args = tuple(example.values()) if isinstance(example, dict) else tuple(example)
        output_names = list(art.meta.get("output_names") or ["output"])
        dynamic_axes = cfg.dynamic_axes
        if dynamic_axes is None and cfg.dynamic_batch:
            dynamic_axes = {}
            for spec in art.input_spec.inputs:
                dynamic_axes[spec.name] = {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
            for o in output_names:
                dynamic_axes[o] = {0: "batch"}
        out = ctx.stage_dir / "model.onnx"
        tmp = ctx.stage_dir / "model.onnx.tmp"
        modes = [(m, m.training) for m in module.modules()]  # the exporters switch modes: give them back after
        try:
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if cfg.exporter == "torchscript":
                    torch.onnx.export(module, args, str(tmp), input_names=names, output_names=output_names,
                                      dynamic_axes=dynamic_axes, opset_version=cfg.opset, dynamo=False,
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
                                             dynamic_shapes=dyn_shapes, opset_version=cfg.opset, dynamo=True,
                                             optimize=True)
                    prog.save(str(tmp))
        except Exception as e:  # exporter errors are long; keep the first line
            tmp.unlink(missing_ok=True)
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
            raise PassError(f"convert.onnx ({cfg.exporter}) failed: {first[:300]}") from None
        finally:
            for m, training in modes:
                m.training = training
        tmp.replace(out)
        meta = {k: v for k, v in art.meta.items() if k not in ("example_inputs",)}
        meta["exporter"] = cfg.exporter
        ctx.notes["exporter"] = cfg.exporter
        ctx.notes["opset"] = cfg.opset
        return Artifact.from_onnx(out, meta=meta)
