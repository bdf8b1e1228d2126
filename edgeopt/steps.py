"""Running one pass into a folder, and the content-addressed stage cache: shared by the pipeline and the search.

A stage's cache key hashes what determines its output: the input model's sha256, the pass, its config, the
calibration data and the target. `StageCache` keeps one folder per key (written to a temporary folder and
renamed into place, so a reader never sees half a stage and two workers building the same key do not
corrupt each other); every worker of a search, local or on Ray, reads and writes the same cache, so no
conversion is done twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from edgeopt.artifact import FILE_KINDS, Artifact, InputSpec
from edgeopt.errors import EdgeoptError, InputError, PassError, first_line
from edgeopt.load import load_model
from edgeopt.measure.size import model_files
from edgeopt.passes.base import PassContext, build_pass, registry

DONE_FILE = "stage.json"  # written last into a cache folder: the artifact it holds and how it was made


def cache_key(parent_sha: str, pass_name: str, config: dict[str, Any], data_key: str, target: str) -> str:
    """The content address of a stage: its input model, pass, config, calibration data and target."""
    blob = json.dumps([parent_sha, pass_name, config, data_key, target], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def feeds_key(feeds: list[dict[str, Any]]) -> str:
    """A short hash of feed dicts (names and bytes)."""
    h = hashlib.sha256()
    for f in feeds:
        for k in sorted(f):
            h.update(k.encode())
            h.update(f[k].tobytes())
    return h.hexdigest()[:16]


def json_meta(meta: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serializable entries of an artifact's meta."""
    out = {}
    for k, v in meta.items():
        try:
            json.dumps(v)
            out[k] = v
        except TypeError:
            continue
    return out


def apply_pass(pass_name: str, config: dict[str, Any], art: Artifact, ctx: PassContext) -> Artifact:
    """Run one pass on `art` into `ctx.stage_dir` (recreated empty). A torch result is saved as weights +
    rebuild recipe where the pass gives one (a warning in ctx says why not otherwise). Errors come out as
    EdgeoptError (a library's error keeps its class name and first line); an interrupt is re-raised."""
    p = build_pass(pass_name, config)
    if ctx.stage_dir.exists():
        shutil.rmtree(ctx.stage_dir)
    try:
        out = p(art, ctx)
    except (KeyboardInterrupt, EdgeoptError):
        raise
    except Exception as e:  # a library's error inside a pass: keep the first line
        raise PassError(f"{e.__class__.__name__}: {first_line(e)}") from None
    if out.kind == "torch":
        out = save_torch(out, art, ctx)
    return out


def save_torch(out: Artifact, parent: Artifact, ctx: PassContext) -> Artifact:
    """Write a torch stage's weights (model.safetensors) and rebuild recipe (rebuild.json) to its folder, so it
    can be reused; a model that cannot be saved only costs that (a warning says why)."""
    if out.rebuild is None:
        ctx.warnings.append("not resumable: the pass gives no rebuild recipe for its torch model")
        return out
    try:
        return out.save_weights(ctx.stage_dir, parent.sha256)
    except (OSError, ValueError, RuntimeError) as e:
        ctx.warnings.append(f"not resumable: weights not saved ({e.__class__.__name__}: {first_line(e, 200)})")
        return out


def file_artifact(desc: dict[str, Any], meta: dict[str, Any] | None = None) -> Artifact:
    """The file-backed model (ONNX, OpenVINO, LiteRT, ncnn, Core ML) a description (Artifact.describe()) points
    at, with `meta`."""
    kind, path = desc.get("kind"), desc.get("path")
    if kind not in FILE_KINDS or not path:
        raise InputError(f"not a file-backed model description: kind {kind!r}, path {path!r}")
    if not Path(path).exists():
        raise InputError(f"{path}: no such file")
    spec = InputSpec.from_dict(desc["inputs"]) if desc.get("inputs") else None
    try:
        return Artifact.from_file(kind, path, input_spec=spec, meta=dict(meta or {}))
    except ValueError as e:
        raise InputError(str(e)) from None


def restore_torch(path: Path, parent: Artifact, ctx: PassContext, inputs: list[dict[str, Any]] | None,
                  meta: dict[str, Any]) -> Artifact:
    """The torch model saved at `path` (model.safetensors + rebuild.json), rebuilt from `parent` (raises
    ValueError or the builder's error when it cannot be: the caller runs the pass again)."""
    if parent.kind != "torch" or parent.module is None:
        raise ValueError("its input is not a live torch model")
    spec = InputSpec.from_dict(inputs) if inputs else None
    registry()  # the pass modules register the builders that rebuild their torch models
    return Artifact.from_weights(path, parent, ctx, input_spec=spec, meta=meta)


def portable(art: Artifact) -> dict[str, Any]:
    """A description of `art` another process can load (`load_portable`): files by path, torch models by the
    source they were loaded from (a zoo: name or a local folder). Raises InputError for a torch model built
    in this process that no source describes."""
    desc = {**art.describe(), "meta": json_meta(art.meta)}
    if art.kind == "torch":
        if art.path is not None and Path(art.path).name == "model.safetensors":
            desc["saved"] = True
        elif not art.meta.get("source"):
            raise InputError("a torch model built in this process cannot be sent to another worker "
                             "(it has no source to load it from)")
    return desc


def load_portable(desc: dict[str, Any], seq_len: int = 128, batch: int = 1) -> Artifact:
    """The model a `portable` description names, loaded in this process (torch: from its source, and it must
    hash to the recorded sha256)."""
    if desc.get("kind") == "torch":
        src = (desc.get("meta") or {}).get("source")
        if not src or desc.get("saved"):
            raise InputError("a torch stage derived from another model cannot be loaded by source alone")
        art = load_model(src, seq_len=seq_len, batch=batch)
        if art.sha256 != desc.get("sha256"):
            raise InputError(f"{src}: loads to another model than the one described (sha256 differs)")
        return art
    return file_artifact(desc, desc.get("meta"))


class StageCache:
    """Content-addressed stage folders under `root`: `root/<key>/` holds a finished stage's files and
    `stage.json` (its description, notes, warnings and how long it took)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def folder(self, key: str) -> Path:
        return self.root / key

    def record(self, key: str) -> dict[str, Any] | None:
        """The finished stage stored under `key`, or None."""
        f = self.folder(key) / DONE_FILE
        if not f.is_file():
            return None
        try:
            return json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def get(self, key: str, parent: Artifact, ctx: PassContext) -> tuple[Artifact, dict[str, Any]] | None:
        """The model stored under `key` (built from `parent`) and its record, or None when absent or not intact."""
        rec = self.record(key)
        if rec is None:
            return None
        desc = rec["artifact"]
        path = self.folder(key) / desc["file"]
        try:
            if desc["kind"] == "torch":
                ctx.stage_dir = self.folder(key)
                art = restore_torch(path, parent, ctx, desc.get("inputs"), {**parent.meta, **rec.get("meta", {})})
            else:
                art = file_artifact({**desc, "path": str(path)}, rec.get("meta"))
        except Exception:  # a torn or foreign folder: build again
            return None
        return (art, rec) if art.sha256 == desc.get("sha256") else None

    def build(self, key: str, pass_name: str, config: dict[str, Any], parent: Artifact,
              ctx: PassContext) -> tuple[Artifact, dict[str, Any]]:
        """Run the pass into a temporary folder, then move it to `root/<key>` (a folder another worker finished
        first wins). Returns the stored model and its record."""
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=self.root))
        ctx.stage_dir = tmp / "stage"
        t0 = time.perf_counter()
        try:
            out = apply_pass(pass_name, config, parent, ctx)
            if out.path is None:
                raise PassError(f"{pass_name}: its {out.kind} model could not be saved to the stage cache "
                                f"({'; '.join(ctx.warnings) or 'no file'})")
            if not Path(out.path).resolve().is_relative_to(ctx.stage_dir.resolve()):  # a pass that kept its input file
                ctx.stage_dir.mkdir(parents=True, exist_ok=True)
                for f in model_files(out):
                    shutil.copy2(f, ctx.stage_dir / f.name)
                out = file_artifact({**out.describe(), "path": str(ctx.stage_dir / Path(out.path).name)}, out.meta)
            rel = Path(out.path).relative_to(ctx.stage_dir)
            rec = {"key": key, "pass": pass_name, "config": config, "parent_sha256": parent.sha256,
                   "artifact": {**out.describe(), "file": str(rel), "path": None},
                   "meta": json_meta(out.meta), "notes": json_meta(ctx.notes), "warnings": list(ctx.warnings),
                   "duration_s": round(time.perf_counter() - t0, 3)}
            (ctx.stage_dir / DONE_FILE).write_text(json.dumps(rec, indent=2, default=str))
            dst = self.folder(key)
            try:
                os.replace(ctx.stage_dir, dst)
            except OSError:  # another worker stored the same key first: use theirs
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        got = self.get(key, parent, ctx)
        if got is None:
            raise PassError(f"{pass_name}: stage cache folder {self.folder(key)} is not readable after writing it")
        return got
