"""Static analysis of a model: op census, parameters, FLOPs, activation memory and optimization opportunities.

`analyze(source)` returns one JSON-serializable dict; `edgeopt.analyze.profile.profile` measures per-node
latency with ONNX Runtime's profiler; `edgeopt.analyze.render` turns either report into rich tables.
"""

from __future__ import annotations

import dataclasses
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

from edgeopt.analyze.census import model_info, op_census, param_stats
from edgeopt.analyze.flops import activation_memory, count_flops, prepare
from edgeopt.analyze.opportunities import fusion_opportunities, int8_summary, jsonable, suggest_passes
from edgeopt.analyze.tflite import analyze_tflite
from edgeopt.artifact import onnx_size_bytes
from edgeopt.errors import EdgeoptError, InputError
from edgeopt.export import export_onnx
from edgeopt.load import load_model, load_onnx_checked
from edgeopt.target import get_target

SCHEMA = "edgeopt.analysis/1"


def resolve_onnx(source: Any, workdir: Path, example_inputs: Any = None) -> tuple[Path, Any, Any, dict[str, Any]]:
    """An ONNX file for `source`: (path, checked ModelProto without external data, Artifact or None,
    facts about where it came from: {"source", "exported_from"}).

    `source` is an .onnx path, an Artifact, or anything `edgeopt.load.load_model` takes (zoo name, Hugging
    Face folder, torch module with `example_inputs`); torch models are exported (`edgeopt.export.export_onnx`, as convert.onnx does) into
    `workdir`. Unreadable or corrupt files raise InputError.
    """
    if isinstance(source, (str, Path)) and str(source).lower().endswith(".onnx"):
        path = Path(source)
        return path, load_onnx_checked(path), None, {"source": str(source), "exported_from": None}
    art = load_model(source, example_inputs)
    origin = {"source": str(art.meta.get("source") or (art.path or source)), "exported_from": None}
    if art.kind == "torch":
        art = export_onnx(art, Path(workdir) / "convert.onnx" / "model.onnx")
        origin["exported_from"] = "torch"
    if art.kind != "onnx" or art.path is None:
        raise InputError(f"analysis reads ONNX models (or torch ones it can export); got a {art.kind} model")
    return Path(art.path), load_onnx_checked(art.path), art, origin


def target_info(target: Any) -> tuple[dict[str, Any] | None, tuple[str, ...] | None, list[str]]:
    """(target as a dict, its no_int8_ops or None, warnings) for a target name or Target object."""
    warnings: list[str] = []
    t = target
    if target is None:
        return None, None, warnings
    if isinstance(target, str):
        try:
            t = get_target(target)
        except EdgeoptError:
            raise
        except Exception as e:
            return {"name": target}, None, [f"target {target!r} could not be resolved ({type(e).__name__}); defaults used"]
    if dataclasses.is_dataclass(t) and not isinstance(t, type):
        d = dataclasses.asdict(t)
    elif isinstance(t, dict):
        d = dict(t)
    else:
        d = {k: getattr(t, k) for k in dir(t) if not k.startswith("_") and not callable(getattr(t, k))}
    d = jsonable(d)
    no_int8 = getattr(t, "no_int8_ops", None) if not isinstance(t, dict) else t.get("no_int8_ops")
    return d, (tuple(no_int8) if no_int8 is not None else None), warnings


def analyze(source: Any, target: Any = "auto", seq_len: int = 128, batch: int = 1, *,
            dims: dict[str, int] | None = None, example_inputs: Any = None) -> dict[str, Any]:
    """Analyze a model without running it; returns a JSON-serializable report.

    Keys: `schema`, `model` (path, source, opset, ir_version, producer, inputs, outputs, ...), `target`,
    `shapes` (batch, seq_len, dims bound, inference method), `census` (op -> count), `params` (count, bytes,
    by_dtype), `flops` (total, macs, by_op_type, nodes, unestimated), `memory` (weight bytes, activation
    peak/total bytes, ...), `opportunities` (fusable patterns: rule, count, nodes, pass, description, flops),
    `quantizable_flops_share`, `no_int8_ops`, `quantization` (all int8 shares), `suggested_passes`
    (pass, why; in order) and `warnings`. Named dynamic dims are bound to `batch` / `seq_len` (or `dims`).
    A `.tflite` file gets `analyze.tflite.analyze_tflite`'s report instead (schema edgeopt.analysis.tflite/1).
    """
    if int(batch) < 1 or int(seq_len) < 1:
        raise InputError(f"batch and seq_len must be at least 1 (got batch={batch}, seq_len={seq_len})")
    tinfo, no_int8, warnings = target_info(target)
    if isinstance(source, (str, Path)) and str(source).lower().endswith(".tflite"):
        if not Path(source).is_file():
            raise InputError(f"no such file: {source}")
        report = analyze_tflite(source, tinfo)  # what a LiteRT file declares (edgeopt.analyze.tflite)
        report["warnings"] = warnings + report["warnings"]
        return report
    with tempfile.TemporaryDirectory(prefix="edgeopt-analyze-") as tmp:
        path, model, _, origin = resolve_onnx(source, Path(tmp), example_inputs)
        info = model_info(model, path if origin["exported_from"] is None else None)
        info.update(origin)
        info["file_bytes"] = onnx_size_bytes(path)
    prep = prepare(model, batch=int(batch), seq_len=int(seq_len), dims=dims)
    warnings += prep["warnings"]
    flops = count_flops(prep["model"], prep["shapes"])
    if flops["unestimated"]:
        warnings.append("no FLOP estimate for " + ", ".join(f"{k} ({v})" for k, v in flops["unestimated"].items()))
    params = param_stats(model)
    memory = {"weight_bytes": params["bytes"], **activation_memory(prep["model"], prep["shapes"])}
    node_flops = {n["name"]: n["flops"] for n in flops["nodes"]}
    findings, w = fusion_opportunities(model, node_flops)
    warnings += w
    quant = int8_summary(model, flops, no_int8)
    return {
        "schema": SCHEMA,
        "model": info,
        "target": tinfo,
        "shapes": {"batch": int(batch), "seq_len": int(seq_len), "dims": prep["dims"], "inference": prep["method"]},
        "census": op_census(model),
        "params": params,
        "flops": flops,
        "memory": memory,
        "opportunities": findings,
        "quantizable_flops_share": quant["quantizable_flops_share"],
        "no_int8_ops": quant["no_int8_ops"],
        "quantization": quant,
        "suggested_passes": suggest_passes(findings, quant, flops, tinfo),
        "warnings": warnings,
    }


class _CallableModule(types.ModuleType):
    """`edgeopt.analyze` names both this package and the function `analyze` (the public API maps the name to
    the function, but importing any `edgeopt.analyze.*` module rebinds the attribute to the package), so
    calling the package calls the function: `edgeopt.analyze(path)` works whichever one a caller gets."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return analyze(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

__all__ = ["analyze", "resolve_onnx", "target_info", "SCHEMA"]
