"""convert.onnx: export a PyTorch module to ONNX with the TorchScript-based or the dynamo exporter."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.export import export_onnx
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
        cfg = self.config
        out = export_onnx(art, ctx.stage_dir / "model.onnx", opset=cfg.opset, exporter=cfg.exporter,
                          dynamic_batch=cfg.dynamic_batch, dynamic_axes=cfg.dynamic_axes)
        ctx.notes["exporter"] = cfg.exporter
        ctx.notes["opset"] = cfg.opset
        return out
