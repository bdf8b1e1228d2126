"""graph.static_shapes: an ONNX model's dynamic input dims fixed to the shapes it is measured at (ONNX Runtime's tool).

ONNX Runtime plans memory and chooses some kernels per call when input dims are symbolic; fixed dims let it plan
once and fold shape arithmetic at load. `onnxruntime.tools.onnx_model_utils` does the work
(`make_input_shape_fixed`, then `fix_output_shapes`); this pass picks the shapes: each input's shape in the first
calibration feed (the data the stage is judged on), else the input spec with `batch` / `seq_len` (default: the
recipe's measure settings). A model fixed to one shape runs only at it, so every calibration and evaluation feed
must have it (except a smaller last batch of a data set: edgeopt's ONNX Runtime runner pads it with copies of its
last sample and drops their outputs): otherwise the pass fails naming the input, rather than produce a model the
measurements cannot run.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.graph._io import save_onnx_atomic


def dynamic_inputs(model: Any) -> dict[str, list[int | str]]:
    """{input name: shape} of the graph inputs (not initializers) that have a symbolic or unknown dim."""
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for inp in model.graph.input:
        if inp.name in inits:
            continue
        dims = [d.dim_param or (d.dim_value if d.HasField("dim_value") else "?")
                for d in inp.type.tensor_type.shape.dim]
        if any(isinstance(d, str) for d in dims):
            out[inp.name] = dims
    return out


def _ragged_last(have: list[int], want: list[int], i: int, feeds: list[Any]) -> bool:
    """Feed `i` is the last of its data set (the next feed starts over at the full batch, or none follows) and
    differs from the fixed shape only by a smaller batch: the runner pads it (OrtRunner.run)."""
    if len(have) != len(want) or not have or have[1:] != want[1:] or not 0 < have[0] < want[0]:
        return False
    nxt = feeds[i + 1] if i + 1 < len(feeds) else None
    return nxt is None or all(list(getattr(v, "shape", ()))[:1] == want[:1] for v in nxt.values()
                              if getattr(v, "ndim", 0))


@register("graph.static_shapes")
class StaticShapes(Pass):
    """Fix every dynamic input dim of an ONNX model (see the module docstring); outputs are re-inferred. The
    graph's computation is unchanged; ctx.notes["static_shapes"] has the shapes before and after."""

    class Config(PassConfig):
        batch: int | None = Field(default=None, ge=1, description="default: the first feed's, else measure.batch")
        seq_len: int | None = Field(default=None, ge=1, description="default: the first feed's, else measure.seq_len")

    accepts = ("onnx",)
    tolerance = 1e-5

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import onnx
        from onnxruntime.tools import onnx_model_utils as omu

        cfg = self.config
        model = onnx.load(str(art.path))
        before = dynamic_inputs(model)
        if not before:
            raise PassError(f"{self.name}: every input of {art.path.name} already has a fixed shape")
        shapes = self._shapes(art, ctx, before)
        feeds = list(ctx.calibration) + list(ctx.evaluation)
        for i, f in enumerate(feeds):
            for name, shape in shapes.items():
                have = list(getattr(f.get(name), "shape", ()))
                if name in f and have != shape and not _ragged_last(have, shape, i, feeds):
                    raise PassError(f"{self.name}: input {name!r} is fixed to {shape}, but feed {i} of the data has "
                                    f"{list(f[name].shape)}: a static-shape model runs only at its shape")
        try:
            for name, shape in shapes.items():
                omu.make_input_shape_fixed(model.graph, name, shape)
            omu.fix_output_shapes(model)
        except Exception as e:  # noqa: BLE001 (the tool raises ValueError / onnx errors; keep one line)
            raise PassError(f"{self.name}: {(str(e).strip().splitlines() or [type(e).__name__])[0][:300]}") from None
        out = save_onnx_atomic(model, ctx.stage_dir / "model.onnx")
        ctx.notes["static_shapes"] = {"before": before, "after": shapes}
        return Artifact.from_onnx(out, meta=dict(art.meta))

    def _shapes(self, art: Artifact, ctx: PassContext, dynamic: dict[str, list[int | str]]) -> dict[str, list[int]]:
        cfg, m = self.config, ctx.measure
        first = ctx.calibration[0] if ctx.calibration else {}
        spec = {t.name: t for t in art.input_spec.inputs}
        dims = {"batch": cfg.batch or (getattr(m, "batch", None) or 1),
                "sequence": cfg.seq_len or (getattr(m, "seq_len", None) or 128)}
        shapes = {}
        for name, dyn in dynamic.items():
            if name in first and cfg.batch is None and cfg.seq_len is None:
                shape = [int(x) for x in first[name].shape]
            elif name in spec:
                shape = list(spec[name].concrete(dims))
            else:
                shape = [d if isinstance(d, int) else (dims["batch"] if i == 0 else dims["sequence"])
                         for i, d in enumerate(dyn)]
            if len(shape) != len(dyn):
                raise PassError(f"{self.name}: input {name!r} has rank {len(dyn)}, the data's has {len(shape)}")
            shapes[name] = shape
        return shapes
