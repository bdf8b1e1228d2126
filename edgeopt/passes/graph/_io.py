"""Shared plumbing of the ONNX-level passes: atomic model writes and the target defaults they read."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgeopt.artifact import Artifact


def stage_output(ctx: Any, name: str = "model.onnx") -> tuple[Path, Path]:
    """(final path, temporary path) for a model written into the stage folder."""
    out = Path(ctx.stage_dir) / name
    tmp = Path(ctx.stage_dir) / f".tmp.{name}"
    return out, tmp


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
    from edgeopt.target import get_target

    return get_target("auto")
