"""convert.litert_llm / quantize.litert_llm: a causal LM re-authored with litert-torch's Generative API, exported
to one .tflite with prefill_<N> / decode / score signatures and an explicit KV cache, and quantized per variant."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from edgeopt.analyze.tflite import census_summary, op_census, tflite_info
from edgeopt.artifact import Artifact, InputSpec, TensorSpec
from edgeopt.errors import EdgeoptError, InputError, PassError
from edgeopt.llm import export as llm_export
from edgeopt.llm.reauthor import hf_shape
from edgeopt.passes.base import Pass, PassConfig, PassContext, register

MODEL = "model.tflite"
Variant = Literal["none", "dynamic_int8", "weight_only_int8", "fp16", "dynamic_int4_block32", "dynamic_int4_block64",
                  "dynamic_int4_block128"]
Embedding = Literal["same", "dynamic_int8", "weight_only_int8", "none"]
Part = Literal["same", "dynamic_int8", "weight_only_int8", "fp16", "dynamic_int4_block32", "dynamic_int4_block64",
               "dynamic_int4_block128"]


def _spec(n: int) -> InputSpec:
    return InputSpec((TensorSpec("tokens", "int32", (1, n)), TensorSpec("input_pos", "int32", (n,))))


def _hf_model(art: Artifact, pass_name: str) -> Any:
    lm = getattr(art.module, "lm", None)
    if art.meta.get("task") != "causal-lm" or lm is None:
        raise PassError(f"{pass_name}: the model is not a causal LM (load a Hugging Face *ForCausalLM folder, "
                        "zoo:smollm2-135m or zoo:tinyllama)")
    return lm


def _llm_artifact(path: Path, facts: dict[str, Any], art_meta: dict[str, Any], ctx: PassContext,
                  litertlm: bool = False, pass_name: str = "") -> Artifact:
    info = tflite_info(path)
    facts = {**facts, "file_bytes": path.stat().st_size, "weight_dtypes": info["weight_dtypes"]}
    tok = art_meta.get("tokenizer")
    llm_export.write_sidecar(ctx.stage_dir, facts, Path(tok) if tok else None)
    if litertlm:  # the same .tflite with its tokenizer and metadata, for the LiteRT-LM engine
        from edgeopt.llm.litertlm import bundle

        try:
            facts["litertlm"] = bundle(path).name
        except EdgeoptError as e:
            raise PassError(f"{pass_name}: {e}") from None
        llm_export.write_sidecar(ctx.stage_dir, facts, None)
    census = op_census(path)
    ctx.notes["litert_llm"] = {**{k: v for k, v in facts.items() if k != "hf_config"},
                               "signatures": list(info["signatures"]), "census": census_summary(census)}
    meta = {k: v for k, v in art_meta.items() if k not in ("example_inputs", "session")}
    meta.update({"task": "causal-lm", "llm": {k: v for k, v in facts.items() if k != "hf_config"},
                 "tokenizer": str(ctx.stage_dir) if tok else None})
    return Artifact.from_file("tflite", path, input_spec=_spec(facts["prefill_lens"][-1]), meta=meta)


@register("convert.litert_llm")
class ConvertLiteRtLlm(Pass):
    """Re-author a Llama-family causal LM with litert-torch's Generative API, check it against the Hugging Face
    logits (1e-4 relative), and export `model.tflite` with signatures `prefill_<N>` for each of `prefill_lens`,
    `decode` and `score_<score_len>` (prefill with logits, for teacher-forced fidelity), the KV cache
    (`kv_cache_max_len` positions) as explicit inputs and outputs; optionally quantized (`quantize`, the
    Generative API's recipes; `embedding` quantizes the embedding table and a tied output layer differently,
    e.g. int4 blocks with an int8 embedding). `smooth` (SmoothQuant's alpha) re-weights a copy of the model first
    (edgeopt.llm.smooth: calibrated on 16 x 128 tokens of calibration text, the fp32 function unchanged), which on
    SmolLM2-135M halved dynamic int8's KL to fp32 (0.023 -> 0.011). `rotate` rotates the residual stream instead
    (edgeopt.llm.rotate, QuaRot-style: same fp32 function, outliers spread, one float Hadamard op per block), and
    `gptq` rounds the weights onto `quantize`'s grid with GPTQ (edgeopt.llm.gptq) before the export, so this stage
    quantizes exactly those weights. Writes llm.json and the tokenizer beside the model, so
    `edgeopt generate <stage folder>` runs it. To measure several variants from one conversion, convert once
    (quantize: none) and add `quantize.litert_llm` steps `from:` that stage."""

    class Config(PassConfig):
        prefill_lens: list[int] = Field(default_factory=lambda: [32, 128], min_length=1)
        kv_cache_max_len: int = Field(default=1024, ge=8)
        score_len: int | None = Field(default=128, ge=2, description="teacher-forced scoring signature (None: none)")
        kv_layout: Literal["transposed", "default"] = Field(
            default="transposed", description="KV cache layout: transposed attends per KV group without repeating "
            "K/V heads (same function; decode 1.23x faster on SmolLM2-135M with a 1024-position cache)")
        decode_windows: list[int] = Field(
            default_factory=list, description="extra decode_<W> signatures attending over the first W cache "
            "positions only (transposed layout; the runner picks the smallest window that holds the position)")
        workers: int | None = Field(default=None, ge=1, description="processes converting the signatures side by "
                                    "side (None: one per CPU while memory allows; edgeopt.llm.export.convert)")
        quantize: Variant = "none"
        embedding: Embedding = "same"
        attention: Part = Field(default="same", description="the attention blocks' quantization, if not quantize's")
        feedforward: Part = Field(default="same", description="the feed-forward blocks' quantization, if not quantize's")
        smooth: float | None = Field(default=None, gt=0, lt=1, description="SmoothQuant alpha: move activation "
                                     "outliers into the weights before export (same fp32 function; int8 keeps more)")
        smooth_sequences: int = Field(default=16, ge=1, description="calibration sequences x 128 tokens for smooth")
        rotate: bool = Field(default=False, description="rotate the residual stream (QuaRot-style, edgeopt.llm.rotate: "
                             "same fp32 function, outliers spread over all channels, one online 128-wide Hadamard "
                             "before each down projection)")
        gptq: bool = Field(default=False, description="round the weights onto `quantize`'s int8 / int4 grid with GPTQ "
                           "(edgeopt.llm.gptq) before export; needs quantize")
        gptq_sequences: int = Field(default=16, ge=1, description="calibration sequences x 128 tokens for gptq")
        litertlm: bool = Field(default=False, description="also bundle model.litertlm (tokenizer + metadata) for "
                               "the LiteRT-LM engine; needs kv_layout transposed")

        @field_validator("prefill_lens")
        @classmethod
        def _positive(cls, v: list[int]) -> list[int]:
            if any(n < 1 for n in v):
                raise ValueError(f"prefill lengths must be >= 1, got {v}")
            return sorted(set(v))

        @model_validator(mode="after")
        def _gptq_needs_a_grid(self) -> "ConvertLiteRtLlm.Config":
            if self.gptq and self.quantize == "none":
                raise ValueError("gptq rounds the weights onto the stage's quantization grid: set quantize "
                                 "(e.g. dynamic_int8)")
            return self

    accepts = ("torch",)
    produces = "tflite"
    tolerance = None
    tolerance_reason = ("an LLM's outputs are next-token distributions: the stage is judged by top-1 agreement, KL "
                        "and perplexity against the fp32 model (measure.llm), and fp32 is checked to 1e-4 inside")

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        cfg = self.config
        hf = _hf_model(art, self.name)
        reweighted: dict[str, Any] = {}
        if cfg.smooth is not None or cfg.rotate or cfg.gptq:
            import copy

            hf = copy.deepcopy(hf)  # the input model stays as it was
            try:
                reweighted = self._reweight(hf, art, ctx)
            except EdgeoptError as e:
                raise PassError(f"{self.name}: {e}") from None
        try:
            llm_export.check_variant(cfg.quantize, cfg.embedding, hf_shape(hf.config))
            fp32 = ctx.stage_dir / (MODEL if cfg.quantize == "none" else ".fp32.tflite")
            facts = llm_export.convert(hf, fp32, prefill_lens=cfg.prefill_lens,
                                       kv_cache_max_len=cfg.kv_cache_max_len, score_len=cfg.score_len,
                                       kv_layout=cfg.kv_layout, decode_windows=cfg.decode_windows,
                                       workers=cfg.workers)
            facts["hf_config"] = hf.config.to_dict()
            facts["smooth"] = reweighted.get("smooth")
            facts.update({k: v for k, v in reweighted.items() if k != "smooth"})
            if cfg.quantize != "none":
                llm_export.quantize_file(fp32, ctx.stage_dir / MODEL, cfg.quantize, hf.config, cfg.embedding,
                                         cfg.attention, cfg.feedforward)
                fp32.unlink(missing_ok=True)
                facts.update(quantize=cfg.quantize, embedding=cfg.embedding, attention=cfg.attention,
                             feedforward=cfg.feedforward)
        except EdgeoptError as e:
            raise PassError(f"{self.name}: {e}") from None
        return _llm_artifact(ctx.stage_dir / MODEL, facts, art.meta, ctx, cfg.litertlm, self.name)

    def _reweight(self, hf: Any, art: Artifact, ctx: PassContext) -> dict[str, Any]:
        """SmoothQuant, rotation and GPTQ on the copy `hf` as the config asks (edgeopt.llm.calibrate.reweight)."""
        from edgeopt.llm.calibrate import reweight

        cfg = self.config
        tok = None
        if art.meta.get("tokenizer"):
            from edgeopt.llm.generate import load_tokenizer

            tok = load_tokenizer(Path(art.meta["tokenizer"]))
        gptq = ({"variant": cfg.quantize, "attention": cfg.attention, "feedforward": cfg.feedforward}
                if cfg.gptq else None)
        return reweight(hf, tok, smooth=cfg.smooth, smooth_sequences=cfg.smooth_sequences, rotate=cfg.rotate,
                        gptq=gptq, gptq_sequences=cfg.gptq_sequences,
                        task=lambda what, n: ctx.task(f"{self.name}: {what}", n))


@register("quantize.litert_llm")
class QuantizeLiteRtLlm(Pass):
    """Quantize an fp32 LLM exported by convert.litert_llm with a Generative API recipe (`variant`; `embedding`
    as in convert.litert_llm; `attention` / `feedforward` quantize those blocks differently, e.g. int8 with int4
    feed-forward blocks), from its .tflite: no new conversion, seconds instead of minutes. `gptq` rounds the
    weights onto the variant's grid with GPTQ first, as convert.litert_llm's `gptq` does, and writes them into a copy
    of the export (edgeopt.llm.swap) instead of converting again: the GPTQ stages of recipes/llm-litert.yaml."""

    class Config(PassConfig):
        variant: Variant = "dynamic_int8"
        embedding: Embedding = "same"
        attention: Part = Field(default="same", description="the attention blocks' quantization, if not variant's")
        feedforward: Part = Field(default="same", description="the feed-forward blocks' quantization, if not variant's")
        litertlm: bool = Field(default=False, description="also bundle model.litertlm for the LiteRT-LM engine")
        gptq: bool = Field(default=False, description="round the weights onto `variant`'s grid with GPTQ first: "
                           "the run's baseline model, re-weighted as this export's was, is GPTQ-ed and its new "
                           "weights written into a copy of the export (edgeopt.llm.swap), so no new conversion")
        gptq_sequences: int = Field(default=16, ge=1, description="calibration sequences x 128 tokens for gptq")

        @model_validator(mode="after")
        def _gptq_needs_a_grid(self) -> "QuantizeLiteRtLlm.Config":
            if self.gptq and self.variant == "none":
                raise ValueError("gptq rounds the weights onto the stage's quantization grid: set variant "
                                 "(e.g. dynamic_int8)")
            return self

    accepts = ("tflite",)
    produces = "tflite"
    tolerance = None
    tolerance_reason = ConvertLiteRtLlm.tolerance_reason

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:
        cfg = self.config
        try:
            facts = llm_export.read_sidecar(art.path)
        except EdgeoptError as e:
            raise PassError(f"{self.name}: {e}") from None
        if facts.get("quantize", "none") != "none":
            raise PassError(f"{self.name}: its input is already quantized ({facts['quantize']}); quantize the fp32 "
                            "export (from: the convert.litert_llm stage with quantize: none)")
        if "hf_config" not in facts:
            raise PassError(f"{self.name}: {art.path.parent / llm_export.LLM_JSON} has no model config")
        from types import SimpleNamespace

        hf_config = SimpleNamespace(**facts["hf_config"])
        src = art.path
        try:
            if cfg.gptq:
                src = ctx.stage_dir / ".fp32.tflite"
                facts.update(self._gptq_export(art, facts, src, ctx))
            llm_export.quantize_file(src, ctx.stage_dir / MODEL, cfg.variant, hf_config, cfg.embedding,
                                     cfg.attention, cfg.feedforward)
        except EdgeoptError as e:
            raise PassError(f"{self.name}: {e}") from None
        finally:
            if cfg.gptq:
                src.unlink(missing_ok=True)
        facts.update(quantize=cfg.variant, embedding=cfg.embedding, attention=cfg.attention,
                     feedforward=cfg.feedforward)
        return _llm_artifact(ctx.stage_dir / MODEL, facts, dict(art.meta), ctx, cfg.litertlm, self.name)

    def _gptq_export(self, art: Artifact, facts: dict[str, Any], out: Path, ctx: PassContext) -> dict[str, Any]:
        """The fp32 export `art` with the run's baseline model's GPTQ-ed weights, written to `out`
        (edgeopt.llm.swap.gptq_into); a warning when they had to be converted rather than swapped in."""
        from edgeopt.llm import swap

        cfg = self.config
        base = ctx.baseline
        lm = getattr(getattr(base, "module", None), "lm", None) if base is not None else None
        if lm is None or base.meta.get("task") != "causal-lm":
            raise InputError("gptq needs the run's baseline to be the Hugging Face causal LM this export was "
                             "converted from")
        recorded = facts["hf_config"]
        keys = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "vocab_size")
        if any(recorded.get(k) != getattr(lm.config, k, None) for k in keys):
            raise InputError("the run's baseline is not the model this export was converted from "
                             f"({', '.join(f'{k} {getattr(lm.config, k, None)} vs {recorded.get(k)}' for k in keys)})")
        tok = None
        if art.meta.get("tokenizer"):
            from edgeopt.llm.generate import load_tokenizer

            tok = load_tokenizer(Path(art.meta["tokenizer"]))
        grid = {"variant": cfg.variant, "attention": cfg.attention, "feedforward": cfg.feedforward}
        done = swap.gptq_into(lm, tok, art.path, out, facts, grid, cfg.gptq_sequences,
                              task=lambda what, n: ctx.task(f"{self.name}: {what}", n))
        if done["gptq_export"]["method"] == "convert":
            ctx.warnings.append(f"{self.name}: converted the GPTQ-ed model ({done['gptq_export']['reason']})")
        return done
