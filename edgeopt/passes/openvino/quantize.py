"""openvino.quantize: post-training INT8 of an OpenVINO IR through NNCF, calibrated on the recipe's data."""

from __future__ import annotations

import contextlib
import io
from typing import Literal

from pydantic import Field

from edgeopt.artifact import Artifact
from edgeopt.errors import PassError
from edgeopt.extras import require
from edgeopt.passes.base import Pass, PassConfig, PassContext, register
from edgeopt.passes.convert.openvino import save_ir

TRANSFORMER_FAMILIES = {"bert", "roberta", "distilbert", "albert", "electra", "xlm-roberta", "mpnet", "deberta"}


def _validation(ov, model, feeds: list[dict], names: list[str]):
    """NNCF's validation function for accuracy control, and the metric's name: top-1 accuracy when the feeds carry
    labels, else the mean cosine of the first output to the float `model`'s. The validation "dataset" is the feeds'
    indices, so labels and float outputs stay beside their feed. Returns (metric, per-sample values)."""
    import numpy as np

    from edgeopt.data import LABEL_KEY

    labelled = all(LABEL_KEY in f for f in feeds)
    reference = None
    if not labelled:
        ref = ov.Core().compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        reference = [np.asarray(ref({k: f[k] for k in names})[0]) for f in feeds]

    def validate(compiled, indices) -> tuple[float, list[float]]:
        values: list[float] = []
        for i in indices:
            f = feeds[int(i)]
            out = np.asarray(compiled({k: f[k] for k in names})[0])
            if labelled:
                y = np.atleast_1d(f[LABEL_KEY])
                values += [float(v) for v in (out.reshape(len(y), -1).argmax(-1) == y)]
            else:
                a, b = out.reshape(out.shape[0], -1), reference[int(i)].reshape(out.shape[0], -1)
                cos = (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1), 1e-12)
                values += [float(c) for c in cos]
        return float(np.mean(values)) if values else 0.0, values

    return validate, "top1" if labelled else "mean_cosine"


@register("openvino.quantize")
class QuantizeOpenVINO(Pass):
    """INT8 weights and activations for OpenVINO's CPU plugin (VNNI / AMX kernels), through NNCF.

    NNCF (OpenVINO's own quantizer) places the fake-quantize nodes where the CPU plugin has int8
    kernels; `model_type` "auto" uses its transformer scheme for BERT-family models. Float ops left
    run at `precision` (f32 by default: mixing bf16 with int8 was slower in our measurements).
    `weights_only`: INT8 weights only (NNCF's `compress_weights`, asymmetric per channel), activations stay
    float and no calibration data is needed — what OpenVINO uses for autoregressive decoders.
    `max_drop`: NNCF's accuracy control (`quantize_with_accuracy_control`): layers are returned to float, most
    harmful first, until the metric is within `max_drop` (absolute) of the float model's. The metric is top-1
    accuracy where the calibration data has labels, else the mean cosine of the first output to the float model's
    (per sample, so NNCF can rank the layers); it is judged on the calibration feeds, never the evaluation split.
    """

    class Config(PassConfig):
        preset: Literal["mixed", "performance"] = "mixed"
        model_type: Literal["auto", "transformer", "none"] = "auto"
        samples: int = Field(default=64, ge=1)
        fast_bias_correction: bool = True
        precision: Literal["keep", "f32", "bf16", "f16"] = "f32"
        ignored: tuple[str, ...] = ()
        weights_only: bool = False
        max_drop: float | None = Field(default=None, gt=0, lt=1, description="accuracy control: the largest "
                                       "absolute metric drop NNCF may leave (top-1 with labels, else mean cosine)")

    accepts = ("openvino",)
    produces = "openvino"
    tolerance = 0.95

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        ov = require("openvino", "openvino.quantize")
        nncf = require("nncf", "openvino.quantize")
        import logging

        cfg = self.config
        if cfg.weights_only:
            return self._weights_only(art, ctx, ov, nncf)
        feeds = ctx.calibration[: cfg.samples]
        if not feeds:
            raise PassError("openvino.quantize needs calibration data (recipe data.calibration)")
        family = str(art.meta.get("family", "")).lower()
        transformer = cfg.model_type == "transformer" or (cfg.model_type == "auto" and family in TRANSFORMER_FAMILIES)
        model = ov.Core().read_model(str(art.path))
        names = [p.get_any_name() for p in model.inputs]
        kwargs = {}
        if transformer:
            kwargs["model_type"] = nncf.ModelType.TRANSFORMER
        if cfg.ignored:
            kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(cfg.ignored))
        advance = ctx.task("calibrating (NNCF)", total=None)
        nncf_logger = logging.getLogger("nncf")
        level = nncf_logger.level
        nncf_logger.setLevel(logging.ERROR)
        try:
            # NNCF draws its own progress bars on rich's global console (stdout): held back, ours says "calibrating"
            with contextlib.redirect_stdout(io.StringIO()):
                dataset = nncf.Dataset([{k: f[k] for k in names} for f in feeds])
                common = {"preset": nncf.QuantizationPreset(cfg.preset), "subset_size": len(feeds),
                          "fast_bias_correction": cfg.fast_bias_correction, **kwargs}
                if cfg.max_drop is None:
                    q = nncf.quantize(model, dataset, **common)
                else:
                    validate, metric = _validation(ov, model, feeds, names)
                    q = nncf.quantize_with_accuracy_control(
                        model, dataset, nncf.Dataset(list(range(len(feeds)))), validate, max_drop=cfg.max_drop,
                        drop_type=nncf.DropType.ABSOLUTE, **common)
        except Exception as e:
            raise PassError(f"openvino.quantize: NNCF failed: {(str(e).strip().splitlines() or [''])[0][:300]}") from None
        finally:
            nncf_logger.setLevel(level)
        advance()
        save_ir(q, ctx.stage_dir)
        settings = dict(art.meta.get("openvino") or {})
        if cfg.precision != "keep":
            settings["precision"] = cfg.precision
        ctx.notes["quantization"] = {"mode": "static-int8-openvino", "preset": cfg.preset, "samples": len(feeds),
                                     "scheme": "transformer" if transformer else "default", "nncf": nncf.__version__}
        if cfg.max_drop is not None:
            fq = sum(1 for op in q.get_ops() if op.get_type_name() == "FakeQuantize")
            ctx.notes["quantization"]["accuracy_control"] = {"max_drop": cfg.max_drop, "metric": metric,
                                                             "fake_quantize_nodes": fq}
        return Artifact.from_openvino(ctx.stage_dir / "model.xml", meta={**art.meta, "openvino": settings})

    def _weights_only(self, art: Artifact, ctx: PassContext, ov, nncf) -> Artifact:
        import logging

        cfg = self.config
        model = ov.Core().read_model(str(art.path))
        kwargs = {"ignored_scope": nncf.IgnoredScope(names=list(cfg.ignored))} if cfg.ignored else {}
        nncf_logger = logging.getLogger("nncf")
        level = nncf_logger.level
        nncf_logger.setLevel(logging.ERROR)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                q = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM, **kwargs)
        except Exception as e:
            raise PassError(f"openvino.quantize: NNCF weight compression failed: "
                            f"{(str(e).strip().splitlines() or [''])[0][:300]}") from None
        finally:
            nncf_logger.setLevel(level)
        save_ir(q, ctx.stage_dir)
        settings = dict(art.meta.get("openvino") or {})
        if cfg.precision != "keep":
            settings["precision"] = cfg.precision
        ctx.notes["quantization"] = {"mode": "int8-weights-openvino", "nncf": nncf.__version__}
        return Artifact.from_openvino(ctx.stage_dir / "model.xml", meta={**art.meta, "openvino": settings})
