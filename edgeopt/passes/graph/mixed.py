"""graph.quantize_mixed: per-layer sensitivity ranking, then INT8 everywhere but the layers that need float."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.graph._io import finish, stage_output, target_of
from edgeopt.passes.graph._quant import quantizable_nodes, resolved_settings, run_quantize_dynamic


def _outputs(path: Path, feeds: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = 0
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return [sess.run(None, f)[0] for f in feeds]


def _cosines(ref: list[np.ndarray], out: list[np.ndarray]) -> np.ndarray:
    a = np.concatenate([r.reshape(r.shape[0], -1) for r in ref]).astype(np.float64)
    b = np.concatenate([o.reshape(o.shape[0], -1) for o in out]).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def _candidate_counts(n: int) -> list[int]:
    """How many of the most sensitive layers to keep in float, tried in this order (0, 1, 2, 3, 4, 6, 8, 12, ...)."""
    ks, k = [], 0
    while k < n:
        ks.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    return ks + [n]


def mixed_quantize(art: Artifact, ctx: PassContext, *, min_mean_cosine: float | None, min_cosine: float | None,
                   base: Any, samples: int = 32) -> Artifact:
    """Rank quantizable layers by the output drift of quantizing each alone, then exclude the most
    sensitive ones until the fidelity target holds on the calibration data. Written by hand: ONNX Runtime
    offers the per-layer quantizer but no sensitivity search around it."""
    settings = resolved_settings(base, target_of(ctx))
    feeds = (ctx.calibration or ctx.evaluation)[:samples]
    if not feeds:
        raise PassError("mixed-precision quantization needs calibration data (recipe data.calibration)")
    nodes = [n for n in quantizable_nodes(art.path, base.op_types) if n[0] not in set(base.exclude)]
    if not nodes:
        raise PassError("no quantizable layers found (MatMul/Gemm/Conv/Attention with constant weights)")
    ref = _outputs(art.path, feeds)
    ranking: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(dir=ctx.stage_dir) as tmpdir:
        probe = Path(tmpdir) / "probe.onnx"
        advance = ctx.task("sensitivity (one layer at a time)", total=len(nodes))
        for name, op in nodes:
            run_quantize_dynamic(art.path, probe, op_types=base.op_types, exclude=[], include=[name], **settings)
            cos = _cosines(ref, _outputs(probe, feeds))
            ranking.append({"node": name, "op_type": op, "drift": float(1 - cos.mean()),
                            "min_cosine": float(cos.min())})
            advance()
        ranking.sort(key=lambda r: r["drift"], reverse=True)
        order = [r["node"] for r in ranking]
        out, tmp = stage_output(ctx)
        tried = []
        advance = ctx.task("excluding sensitive layers", total=None)
        chosen = None
        for k in _candidate_counts(len(order)):
            excluded = list(base.exclude) + order[:k]
            run_quantize_dynamic(art.path, tmp, op_types=base.op_types, exclude=excluded, **settings)
            cos = _cosines(ref, _outputs(tmp, feeds))
            row = {"kept_float": k, "mean_cosine": float(cos.mean()), "min_cosine": float(cos.min())}
            tried.append(row)
            advance()
            ok = (min_mean_cosine is None or cos.mean() >= min_mean_cosine) and (min_cosine is None or cos.min() >= min_cosine)
            if ok:
                chosen = (k, excluded, row)
                break
        if chosen is None:
            tmp.unlink(missing_ok=True)
            raise PassError(f"no mix of int8 layers reaches the fidelity target (best tried: {tried[-1]})")
    k, excluded, row = chosen
    ctx.notes["quantization"] = {"mode": "dynamic-mixed", **settings, "excluded": excluded, "kept_float": k,
                                 "quantized_layers": len(nodes) - k, "calibration_fidelity": row,
                                 "search": tried, "samples": len(feeds)}
    ctx.notes["sensitivity"] = ranking
    return finish(tmp, out, art, quantized="dynamic-int8-mixed")


@register("graph.quantize_mixed")
class QuantizeMixed(Pass):
    """Mixed INT8/float: keep the most sensitive layers in float until the fidelity target holds."""

    class Config(PassConfig):
        min_mean_cosine: float | None = Field(default=0.995, gt=0, le=1)
        min_cosine: float | None = Field(default=0.98, gt=0, le=1)
        mode: Literal["dynamic"] = "dynamic"
        samples: int = Field(default=32, ge=1)
        per_channel: bool | None = None
        reduce_range: bool | None = None
        weight_type: Literal["int8", "uint8"] | None = None
        op_types: tuple[str, ...] | None = None
        exclude: tuple[str, ...] = ()

    tolerance = 0.95

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        cfg = self.config
        return mixed_quantize(art, ctx, min_mean_cosine=cfg.min_mean_cosine, min_cosine=cfg.min_cosine,
                              base=cfg, samples=cfg.samples)
