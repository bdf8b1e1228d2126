"""convert.litert: PyTorch -> LiteRT (.tflite) through litert-torch, optionally quantized by the LiteRT quantizer."""

from __future__ import annotations

import io
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator

from edgeopt.analyze.tflite import census_summary, op_census, tflite_info
from edgeopt.artifact import Artifact, InputSpec, TensorSpec, write_bytes_atomic
from edgeopt.data import random_feeds, to_torch_args
from edgeopt.errors import EdgeoptError, PassError, first_line
from edgeopt.extras import require
from edgeopt.measure.litert import (LiteRtRunner, conversion_error, named_inputs, quiet_native_stderr,
                                    signature_name)
from edgeopt.passes.base import Pass, PassConfig, PassContext, register, torch_module_copy
from edgeopt.passes.convert._export import FP32_REL_TOL, contiguous_weights, min_cosine, relative_error, torch_outputs

MODEL = "model.tflite"
DEFAULT_SIGNATURE = "serving_default"  # litert-torch's name for the signature of a plain convert()
# minimum per-sample cosine to PyTorch each quantized variant must keep on the held-out feeds
QUANT_MIN_COSINE = {"fp16": 0.999, "weight_only_int8": 0.99, "dynamic_int8": 0.99, "static_int8": 0.95}
Quantize = Literal["none", "dynamic_int8", "weight_only_int8", "fp16", "static_int8"]


class SignatureSpec(PassConfig):
    """One signature of a multi-signature export: its name and the shapes of its sample inputs.

    `batch` / `seq_len` fill the input spec's named dims ("batch", "sequence"; default: the pass's); `shapes`
    gives an input's whole shape explicitly (input name -> shape) and wins over the named dims."""

    name: str = Field(min_length=1)
    batch: int | None = Field(default=None, ge=1)
    seq_len: int | None = Field(default=None, ge=1)
    shapes: dict[str, list[int]] = Field(default_factory=dict)


@contextmanager
def _group_norm_composite(on: bool) -> Iterator[None]:
    """litert-torch's switch for lowering GroupNorm as an `odml.group_norm` composite, set for one conversion."""
    import litert_torch  # lazy: the converter pulls torch, jax and MLIR

    before = os.environ.get("ENABLE_GROUP_NORM_COMPOSITE")
    litert_torch.config.enable_group_norm_composite = on
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("ENABLE_GROUP_NORM_COMPOSITE", None)
        else:
            os.environ["ENABLE_GROUP_NORM_COMPOSITE"] = before


@register("convert.litert")
class ConvertLiteRT(Pass):
    """Convert a torch model to LiteRT (`model.tflite`) with litert-torch, optionally quantized, and check it
    against PyTorch.

    litert-torch traces the module with torch.export at fixed sample shapes (the measured batch and sequence
    length, `batch` / `seq_len` to override; inputs keep the model's names) and lowers it through StableHLO to
    TFLite ops. `quantize` applies a recipe of the LiteRT quantizer (ai-edge-quantizer, which litert-torch itself
    delegates to for its quantization recipes): "dynamic_int8" = `dynamic_wi8_afp32` (int8 weights, activations
    quantized on the fly), "weight_only_int8" = `weight_only_wi8_afp32` (int8 weights dequantized to float),
    "fp16" = fp16 weights (the quantizer's float-casting weight-only config), "static_int8" = `static_wi8_ai8`
    (int8 weights and activations, calibrated on `samples` calibration feeds; the model then takes and returns
    int8, which the LiteRT runner quantizes / dequantizes). `signatures` exports several named signatures of
    the same module, each traced at its own shapes (the first is the one measured). `composite_lowering`
    turns on litert-torch's `odml.group_norm` composite for GroupNorm; its SDPA and RMS/LayerNorm composites
    exist only for models built from `litert_torch.generative` layers, which mark them in their forward
    (GELU, hardswish, pooling and upsampling composites are always built).

    `smooth` (SmoothQuant's alpha, for the int8 variants) first gives the Linears that read one tensor (an
    attention's query / key / value) one per-channel scale, kept as an explicit multiply in front of them and
    calibrated on up to `samples` calibration feeds (`edgeopt.nn.smooth`): the same fp32 function with the
    activation outliers moved into the weights, which per-token dynamic int8 then rounds less. On MiniLM it took
    dynamic int8 from mean cosine 0.9977 to 0.9992 at the same speed.

    The result runs on LiteRT beside PyTorch on held-out inputs: fp32 within 1e-4 relative (max abs error over
    the output's max abs), quantized variants at least the cosine in `QUANT_MIN_COSINE`.
    A model torch.export cannot trace or an op litert-torch cannot lower is a one-line PassError naming it.
    """

    class Config(PassConfig):
        quantize: Quantize = "none"
        samples: int = Field(default=32, ge=1, description="calibration feeds for static_int8 and smooth")
        smooth: float | None = Field(default=None, gt=0, lt=1, description="SmoothQuant alpha before an int8 variant: "
                                     "Linears that share an input get an explicit per-channel scale (None: off)")
        batch: int | None = Field(default=None, ge=1, description="traced batch (default: measure.batch)")
        seq_len: int | None = Field(default=None, ge=1, description="traced sequence length (default: measure.seq_len)")
        signatures: list[SignatureSpec] | None = None
        composite_lowering: bool = False
        min_cosine: float | None = Field(default=None, ge=0, le=1, description="a quantized export's lowest per-sample "
                                         "cosine to PyTorch (default per variant: QUANT_MIN_COSINE); lower it to keep "
                                         "and measure a model the recipe's gates then judge")

        @field_validator("signatures")
        @classmethod
        def _distinct(cls, v: list[SignatureSpec] | None) -> list[SignatureSpec] | None:
            if v is not None:
                if not v:
                    raise ValueError("signatures: give at least one, or leave it out")
                names = [s.name for s in v]
                dup = sorted({n for n in names if names.count(n) > 1})
                if dup:
                    raise ValueError(f"signature name {dup[0]!r} appears twice")
            return v

    accepts = ("torch",)
    produces = "tflite"
    tolerance = 0.95  # the loosest variant (static int8); fp32 is held to 1e-4 relative inside the pass

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        import torch  # lazy: torch only when a conversion runs

        with quiet_native_stderr():  # TensorFlow's and absl's start-up lines
            litert_torch = require("litert_torch", "convert.litert")
        cfg = self.config
        litert_torch.config.show_progress = False
        names = art.input_spec.names
        module = contiguous_weights(torch_module_copy(art, self.name).eval())
        specs = cfg.signatures or [SignatureSpec(name=DEFAULT_SIGNATURE)]
        samples = {s.name: self._sample(art, ctx, s) for s in specs}
        smoothed = self._smooth(module, ctx, names) if cfg.smooth is not None else None
        calibration = self._calibration(ctx, specs, samples) if cfg.quantize == "static_int8" else None
        wrapper = named_inputs(module, [signature_name(n) for n in names])
        converter = litert_torch.Converter()
        for s in specs:
            kwargs = {signature_name(n): torch.from_numpy(np.ascontiguousarray(samples[s.name][n])) for n in names}
            converter.signature(s.name, wrapper, sample_kwargs=kwargs)
        held = io.StringIO()  # torch.export prints its partial graph to sys.stderr when it fails
        try:
            with _group_norm_composite(cfg.composite_lowering), torch.no_grad(), redirect_stderr(held), \
                    quiet_native_stderr(), warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # torch's pytree deprecations inside litert-torch
                edge = converter.convert()
                content = edge.model_content()
        except Exception as e:
            raise PassError(conversion_error(e, module, "convert.litert")) from None
        kept = [ln for ln in held.getvalue().splitlines() if "FutureWarning" not in ln and "return cls.__new__" not in ln]
        if kept:  # a conversion that worked keeps its own warnings
            sys.stderr.write("\n".join(kept) + "\n")
        if cfg.quantize != "none":
            content = self._quantize(content, ctx, calibration)
        path = ctx.stage_dir / MODEL
        write_bytes_atomic(path, bytes(content))
        measured = None if cfg.signatures is None else specs[0].name
        validation = self._validate(path, art, ctx, module, specs, samples)
        census = op_census(path)
        info = tflite_info(path)
        litert = {"quantize": cfg.quantize, "smooth": smoothed, "signature": measured,
                  "signatures": [s.name for s in specs],
                  "shapes": {s.name: {n: list(np.shape(samples[s.name][n])) for n in names} for s in specs},
                  "composite_lowering": cfg.composite_lowering}
        ctx.notes["litert"] = {**litert, "versions": _versions(), "validation": validation,
                               "ops": census, "census": census_summary(census), "weight_dtypes": info["weight_dtypes"],
                               "quantizer": RECIPES.get(cfg.quantize)}
        meta = {k: v for k, v in art.meta.items() if k not in ("example_inputs", "session")}
        meta["litert"] = litert
        return Artifact.from_file("tflite", path, input_spec=art.input_spec, meta=meta)

    # --- sample inputs ------------------------------------------------------------------------------------
    def _sample(self, art: Artifact, ctx: PassContext, spec: SignatureSpec) -> dict[str, np.ndarray]:
        """The feed a signature is traced with: the first calibration feed when it has the signature's shapes
        (or no shapes were asked for), else random values shaped by the input spec (token ids within the
        module's smallest embedding table)."""
        m, cfg = ctx.measure, self.config
        batch = spec.batch or cfg.batch or getattr(m, "batch", None)
        seq = spec.seq_len or cfg.seq_len or getattr(m, "seq_len", None)
        unknown = sorted(set(spec.shapes) - set(art.input_spec.names))
        if unknown:
            raise PassError(f"convert.litert: signature {spec.name!r} gives a shape for {unknown[0]!r}, which is not "
                            f"an input (inputs: {', '.join(art.input_spec.names)})")
        first = next((f for f in ctx.calibration if all(n in f for n in art.input_spec.names)), None)
        if first is not None and batch is None and seq is None and not spec.shapes:
            return {n: np.asarray(first[n]) for n in art.input_spec.names}
        dims = {"batch": int(batch or 1), "sequence": int(seq or 128)}
        want = {t.name: tuple(spec.shapes.get(t.name) or t.concrete(dims)) for t in art.input_spec.inputs}
        if first is not None and all(tuple(np.shape(first[n])) == s for n, s in want.items()):
            return {n: np.asarray(first[n]) for n in art.input_spec.names}
        shaped = InputSpec(tuple(TensorSpec(t.name, t.dtype, want[t.name]) for t in art.input_spec.inputs))
        return random_feeds(shaped, 1, dims, seed=0, vocab=_vocab(art.module))[0]

    # --- quantization -------------------------------------------------------------------------------------
    def _smooth(self, module: Any, ctx: PassContext, names: list[str]) -> dict[str, Any]:
        """SmoothQuant on `module` in place (see the class docstring); what was done, for the notes and meta."""
        from edgeopt.nn.smooth import smooth_shared_inputs

        cfg = self.config
        if cfg.quantize not in ("dynamic_int8", "static_int8"):
            raise PassError(f"convert.litert: smooth applies to the int8 variants (dynamic_int8, static_int8), "
                            f"not quantize={cfg.quantize}")
        feeds = [f for f in ctx.calibration if all(n in f for n in names)][:cfg.samples]
        if not feeds:
            raise PassError(f"convert.litert: smooth needs calibration feeds with the inputs {', '.join(names)}; "
                            "the calibration data has none")
        done = smooth_shared_inputs(module, (to_torch_args(f, names) for f in feeds), cfg.smooth)
        return {**done, "samples": len(feeds)}

    def _calibration(self, ctx: PassContext, specs: list[SignatureSpec],
                     samples: dict[str, dict[str, np.ndarray]]) -> dict[str, list[dict[str, np.ndarray]]]:
        """Calibration feeds per signature, shaped like its sample (checked before converting)."""
        data = {s.name: _calibration_feeds(ctx.calibration, samples[s.name], self.config.samples) for s in specs}
        empty = [name for name, feeds in data.items() if not feeds]
        if empty:
            shapes = {n: list(np.shape(a)) for n, a in samples[empty[0]].items()}
            raise PassError(f"convert.litert: static_int8 needs calibration feeds shaped like {shapes} "
                            f"(signature {empty[0]!r}); the calibration data has none")
        return data

    def _quantize(self, content: bytes, ctx: PassContext, data: dict[str, list[dict[str, np.ndarray]]] | None) -> bytes:
        quantizer = require("ai_edge_quantizer.quantizer", f"convert.litert quantize={self.config.quantize}")
        q = quantizer.Quantizer(content, _recipe(self.config.quantize))
        calibration = None
        if q.need_calibration:
            try:
                with warnings.catch_warnings(), redirect_stderr(io.StringIO()):  # the calibrator keeps every
                    warnings.simplefilter("ignore")  # tensor on purpose and warns about it; its tqdm bar
                    calibration = q.calibrate(data or {}, num_threads=max(1, getattr(ctx.measure, "threads", 0) or 1))
            except Exception as e:
                raise PassError(f"convert.litert: calibration failed: {first_line(e, 200)}") from None
        try:
            with redirect_stderr(io.StringIO()), quiet_native_stderr():  # the quantizer's own tqdm bars
                result = q.quantize(calibration, enable_progress_bar=False, enable_progress_report=False)
            return bytes(result.quantized_model)
        except Exception as e:
            raise PassError(f"convert.litert: the LiteRT quantizer failed ({self.config.quantize}): "
                            f"{first_line(e, 200)}") from None

    # --- validation ---------------------------------------------------------------------------------------
    def _validate(self, path: Path, art: Artifact, ctx: PassContext, module: Any, specs: list[SignatureSpec],
                  samples: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
        """Run each signature on LiteRT beside torch: up to 4 held-out feeds of its shapes (any batch: the runner
        runs them in chunks of the traced batch), else its sample."""
        import torch  # lazy: torch only when a conversion runs

        names = art.input_spec.names
        pool = [f for f in (ctx.evaluation or ctx.calibration) if all(n in f for n in names)]
        worst_rel, worst_cos, n = 0.0, 1.0, 0
        try:
            for s in specs:
                shapes = {k: np.shape(v) for k, v in samples[s.name].items()}
                fits = [f for f in pool if all(np.shape(f[k])[1:] == shapes[k][1:] for k in names)]  # any batch
                feeds = fits[:4] or [samples[s.name]]
                with LiteRtRunner(path, 1, signature=s.name) as runner:
                    for feed in feeds:
                        want = torch_outputs(module, [torch.from_numpy(np.ascontiguousarray(feed[k])) for k in names])
                        got = runner.run(feed)
                        if len(got) != len(want):
                            raise PassError(f"convert.litert: the LiteRT model returns {len(got)} outputs, "
                                            f"torch returns {len(want)}")
                        worst_rel = max(worst_rel, relative_error(want, got))
                        worst_cos = min(worst_cos, min_cosine(want, got) if worst_rel < float("inf") else -1.0)
                        n += 1
        except PassError:
            path.unlink(missing_ok=True)
            raise
        except EdgeoptError as e:
            path.unlink(missing_ok=True)
            raise PassError(f"convert.litert: LiteRT cannot run the converted model: {e}") from None
        result = {"n": n, "max_rel_error": worst_rel, "min_cosine": worst_cos}
        quantize = self.config.quantize
        if quantize == "none" and not worst_rel <= FP32_REL_TOL:
            path.unlink(missing_ok=True)
            raise PassError(f"convert.litert: the LiteRT model differs from PyTorch by {worst_rel:.3g} relative "
                            f"(fp32 tolerance {FP32_REL_TOL})")
        floor = QUANT_MIN_COSINE.get(quantize, 0.0) if self.config.min_cosine is None else self.config.min_cosine
        if quantize != "none" and not worst_cos >= floor:
            path.unlink(missing_ok=True)
            raise PassError(f"convert.litert: the {quantize} LiteRT model's cosine to PyTorch is {worst_cos:.5f} "
                            f"(< {floor}; set min_cosine to keep it)")
        return result


# the LiteRT quantizer's recipe behind each `quantize` value (for the notes)
RECIPES = {"dynamic_int8": "dynamic_wi8_afp32", "weight_only_int8": "weight_only_wi8_afp32",
           "fp16": "weight_only fp16 (float_casting)", "static_int8": "static_wi8_ai8"}


def _recipe(quantize: str) -> Any:
    """The ai-edge-quantizer recipe for a `quantize` value."""
    recipe = require("ai_edge_quantizer.recipe", "convert.litert quantization")
    if quantize == "dynamic_int8":
        return recipe.dynamic_wi8_afp32()
    if quantize == "weight_only_int8":
        return recipe.weight_only_wi8_afp32()
    if quantize == "static_int8":
        return recipe.static_wi8_ai8()
    if quantize == "fp16":
        from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager  # lazy: optional quantizer

        rm = recipe_manager.RecipeManager()
        rm.add_weight_only_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
                                  algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING)
        return rm.get_quantization_recipe()
    raise PassError(f"convert.litert: no LiteRT quantizer recipe for {quantize!r}")  # the Config refuses it first


def _calibration_feeds(feeds: list[dict[str, Any]], sample: dict[str, np.ndarray], limit: int) -> list[dict[str, Any]]:
    """Up to `limit` calibration feeds with exactly the sample's shapes: the feeds' rows (those whose other
    dims match) re-cut into batches of the sample's batch, keyed by the signature's input names."""
    names = list(sample)
    shapes = {n: np.shape(sample[n]) for n in names}
    rows: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for f in feeds:
        if all(n in f and np.ndim(f[n]) == len(shapes[n]) and np.shape(f[n])[1:] == shapes[n][1:] for n in names):
            for n in names:
                rows[n].append(np.asarray(f[n]))
    if not all(rows[n] for n in names) or any(len(shapes[n]) == 0 for n in names):
        return []
    cat = {n: np.concatenate(rows[n]) for n in names}
    batch = shapes[names[0]][0]
    total = min(len(cat[n]) for n in names)
    out = []
    for start in range(0, total - batch + 1, batch):
        out.append({signature_name(n): _x32(cat[n][start:start + batch]) for n in names})
        if len(out) >= limit:
            break
    return out


def _vocab(module: Any) -> int:
    """The range random token ids are drawn from: the smallest embedding table of the module (else 100)."""
    sizes = [m.num_embeddings for m in module.modules() if type(m).__name__ == "Embedding"]
    return int(min(sizes)) if sizes else 100


def _x32(a: np.ndarray) -> np.ndarray:
    """int64 / float64 as the 32-bit types litert-torch stores those inputs as (it converts without x64)."""
    if a.dtype == np.int64:
        return a.astype(np.int32)
    if a.dtype == np.float64:
        return a.astype(np.float32)
    return np.ascontiguousarray(a)


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for p in ("litert-torch", "ai-edge-litert", "ai-edge-quantizer", "torch"):
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out
