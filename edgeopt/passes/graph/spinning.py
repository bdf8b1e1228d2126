"""session.spinning: whether ONNX Runtime's worker threads spin (busy-wait) between ops, as a session setting."""

from __future__ import annotations

from pathlib import Path

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.graph.session import copy_onnx


@register("session.spinning")
class SessionSpinning(Pass):
    """Set `spinning` in the model's ONNX Runtime session settings (meta["session"]): spinning threads hand work
    over faster but keep cores busy when idle, which costs where the CPU is shared; off, they sleep between ops.
    The model file is copied unchanged; every runner of the stage (timing, fidelity, the deployed session)
    then uses the setting instead of the recipe's `measure.spinning`."""

    class Config(PassConfig):
        spinning: bool = False

    accepts = ("onnx",)
    tolerance = 0.999

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        if art.path is None or not Path(art.path).exists():
            raise PassError(f"{self.name} needs an ONNX file on disk, got {art.path}")
        out = copy_onnx(Path(art.path), ctx.stage_dir)
        session = {**(art.meta.get("session") or {}), "spinning": self.config.spinning}
        ctx.notes["session_spinning"] = {"spinning": self.config.spinning}
        return Artifact.from_onnx(out, meta={**art.meta, "session": session})
