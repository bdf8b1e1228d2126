"""convert.openvino: ONNX -> OpenVINO IR, with the inference precision and static shapes to run it with."""

from __future__ import annotations

import shutil
from typing import Literal

from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.extras import require
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.graph._io import target_of


def save_ir(model, stage_dir) -> None:
    """Write an OpenVINO model as stage_dir/model.xml + model.bin through a temporary folder (atomic per file)."""
    ov = require("openvino", "writing OpenVINO IR")

    tmp = stage_dir / ".tmp"
    tmp.mkdir(exist_ok=True)
    ov.save_model(model, str(tmp / "model.xml"), compress_to_fp16=False)
    for name in ("model.bin", "model.xml"):  # the .xml last: a reader finding it finds its weights
        (tmp / name).replace(stage_dir / name)
    shutil.rmtree(tmp, ignore_errors=True)


def default_precision(target) -> str:
    """bf16 where the CPU multiplies bf16 in hardware (AMX / AVX512-BF16), else f32."""
    isa = set(getattr(target, "isa", ()) or ())
    return "bf16" if {"amx_bf16", "avx512_bf16"} & isa else "f32"


@register("convert.openvino")
class ConvertOpenVINO(Pass):
    """Convert an ONNX model to OpenVINO IR (model.xml + model.bin) through OpenVINO's converter.

    `precision` is the inference precision hint the runtime uses for float ops ("auto": bf16 on CPUs
    with AMX or AVX512-BF16, else f32); `static_shapes` fixes the inputs to the measured batch and
    sequence length, which lets the CPU plugin pick shape-specialised kernels (as edge runtimes like
    LiteRT do); weights stay float32 in the file.
    """

    class Config(PassConfig):
        precision: Literal["auto", "f32", "bf16", "f16"] = "auto"
        static_shapes: bool = False
        batch: int | None = Field(default=None, ge=1, description="static batch (default: measure.batch)")
        seq_len: int | None = Field(default=None, ge=1, description="static sequence length (default: measure.seq_len)")

    accepts = ("onnx",)
    produces = "openvino"
    tolerance = 0.99

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        ov = require("openvino", "convert.openvino")
        cfg = self.config
        precision = default_precision(target_of(ctx)) if cfg.precision == "auto" else cfg.precision
        try:
            model = ov.convert_model(str(art.path))
        except Exception as e:
            raise PassError(f"convert.openvino: OpenVINO cannot convert {art.path.name}: "
                            f"{(str(e).strip().splitlines() or [''])[0][:300]}") from None
        settings: dict = {"precision": precision}
        if cfg.static_shapes:
            m = ctx.measure
            batch = cfg.batch or (m.batch if m else 1)
            seq = cfg.seq_len or (m.seq_len if m else 128)
            settings["static_shapes"] = {t.name: list(t.concrete({"batch": batch, "sequence": seq}))
                                         for t in art.input_spec.inputs}
        save_ir(model, ctx.stage_dir)
        ctx.notes["openvino"] = {**settings, "version": ov.get_version()}
        meta = {k: v for k, v in art.meta.items() if k != "session"}
        meta["openvino"] = settings
        return Artifact.from_openvino(ctx.stage_dir / "model.xml", meta=meta)
