"""Shared plumbing of the ONNX-level passes: atomic model writes and the target defaults they read."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from edgeopt.artifact import Artifact
from edgeopt.target import get_target

# Above this many bytes of tensors a model is written with its weights in `model.onnx.data` (protobuf's 2 GB cap).
_EXTERNAL_DATA_BYTES = 1_800_000_000


def stage_output(ctx: Any, name: str = "model.onnx") -> tuple[Path, Path]:
    """(final path, temporary path) for a model written into the stage folder."""
    out = Path(ctx.stage_dir) / name
    tmp = Path(ctx.stage_dir) / f".tmp.{name}"
    return out, tmp


def save_onnx_atomic(model: Any, path: Path) -> Path:
    """Write an ONNX ModelProto to `path` through a temporary name then a rename (weights external if huge)."""
    import onnx

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tensor_bytes = sum(len(t.raw_data) for t in model.graph.initializer)
    try:
        if tensor_bytes > _EXTERNAL_DATA_BYTES:
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=path.name + ".data")
        else:
            onnx.save_model(model, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def finish(tmp: Path, out: Path, art: Artifact, **meta: Any) -> Artifact:
    """Move a fully written temporary model into place and wrap it as the stage's artifact."""
    data = tmp.parent / (tmp.name + ".data")
    if data.exists():  # external data must keep the name the model refers to
        shutil.move(str(data), str(out.parent / (tmp.name + ".data")))
    tmp.replace(out)
    # session settings were tuned for the input model: a changed model needs its own tuning
    kept = {k: v for k, v in art.meta.items() if k != "session"}
    return Artifact.from_onnx(out, meta={**kept, **meta})


def target_of(ctx: Any):
    """The run's Target, or the detected one when the context carries none."""
    if ctx.target is not None:
        return ctx.target
    return get_target("auto")
