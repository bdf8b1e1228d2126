"""graph.fp16: convert weights and compute to float16, keeping float32 inputs and outputs."""

from __future__ import annotations

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.graph._io import finish, stage_output


@register("graph.fp16")
class Float16(Pass):
    """Half-precision model through ONNX Runtime's float16 converter (inputs/outputs stay float32)."""

    class Config(PassConfig):
        keep_io_types: bool = True
        op_block_list: tuple[str, ...] | None = None

    tolerance = 0.99

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import onnx
        from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

        cfg = self.config
        model = onnx.load(str(art.path))
        blocked = list(cfg.op_block_list) if cfg.op_block_list is not None else list(DEFAULT_OP_BLOCK_LIST)
        try:
            half = convert_float_to_float16(model, keep_io_types=cfg.keep_io_types, op_block_list=blocked)
        except Exception as e:
            raise PassError(f"graph.fp16 failed: {str(e).splitlines()[0][:300]}") from None
        out, tmp = stage_output(ctx)
        onnx.save(half, str(tmp))
        ctx.notes["fp16"] = {"keep_io_types": cfg.keep_io_types, "blocked_ops": len(blocked)}
        return finish(tmp, out, art, precision="fp16")
