"""Recipe: the pydantic schema of a YAML recipe (model, target, data, passes, measure, gates)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edgeopt.errors import RecipeError
from edgeopt.measure.fidelity import GateSpec  # the gates' schema lives with the check that reads it
from edgeopt.passes.base import build_pass
from edgeopt.search.candidates import check_space

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


# A stage name becomes a folder under OUT: a plain name, never a path, never "best" (OUT/best is the winner).
STAGE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RESERVED_STAGES = ("best", "baseline")


def check_stage_name(name: Any, where: str = "stage") -> str:
    """`name` if it is a safe stage name (letters, digits, . _ -; starts with a letter or digit; not reserved)."""
    if not isinstance(name, str) or not STAGE_NAME.fullmatch(name) or name in RESERVED_STAGES:
        why = (f"{name!r} is reserved" if name in RESERVED_STAGES else
               f"{name!r} is not a plain name (letters, digits, '.', '_', '-'; starting with a letter or digit; "
               "at most 64 characters)")
        raise ValueError(f"{where}: {why}")
    return name


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    source: str = Field(description="zoo:NAME, a .onnx file, or a local Hugging Face folder")


class DataSpec(_Strict):
    calibration: str | None = Field(default=None, description="zoo:sentences[:64], zoo:images[:64] (pictures), zoo:speech[:64] (synthesized speech), "
                                                                "a .txt (one sentence a line), an .npz or random:N; "
                                                                "none: the model's own kind of data")
    eval: str | None = None


class LlmMeasureSpec(_Strict):
    """How LLM stages are measured (edgeopt.llm.measure); used when the model is a causal LM."""

    prompt_tokens: int = Field(default=128, ge=1, description="prompt length TTFT and prefill tok/s are measured at")
    decode_tokens: int = Field(default=64, ge=8, description="greedy tokens timed per repeat (decode tok/s: median)")
    repeats: int = Field(default=3, ge=1, description="interleaved repeats of the timing over all stages")
    sequences: int = Field(default=64, ge=1, description="held-out sequences for top-1 agreement, KL and perplexity")
    seq_len: int = Field(default=128, ge=2, description="tokens per held-out sequence")
    prompt: str = Field(default="The capital of France is", description="a probe prompt: each stage's greedy answer "
                        "is recorded")
    answer_tokens: int = Field(default=8, ge=1)
    memory: bool = Field(default=True, description="peak RSS of each stage in a child process")


SIZE = re.compile(r"([1-9][0-9]*)x([1-9][0-9]*)")


class DiffusionMeasureSpec(_Strict):
    """How diffusion stages are measured (edgeopt.diffusion.stages); used when the model is a diffusion model."""

    steps: int = Field(default=20, ge=1, description="scheduler steps of every image")
    samples: int = Field(default=10, ge=1, description="digits: images per class (fidelity, accuracy, FD)")
    scheduler: Literal["ddim", "ddpm", "pndm", "euler"] = Field(
        default="ddim", description="digits: ddim or ddpm; Stable Diffusion: ddim, pndm or euler")
    prompts: tuple[str, ...] = Field(default=("a photo of a cat",), min_length=1,
                                     description="Stable Diffusion: one image per prompt (the first one is timed)")
    guidance: float = Field(default=7.5, ge=0, description="Stable Diffusion: classifier-free guidance (1: off)")
    size: str | None = Field(default=None, description="Stable Diffusion: HxW pixels, multiples of 8 (default: "
                                                        "the model's)")
    seed: int = Field(default=0, ge=0, description="seed of the initial noise: every stage draws from the same")
    rounds: int = Field(default=5, ge=1, description="timed whole runs per stage, round-robin over the stages")
    images: int = Field(default=10, ge=1, description="images of each stage saved as PNG (the first ones)")

    @field_validator("prompts")
    @classmethod
    def _no_empty_prompt(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not p.strip() for p in v):
            raise ValueError("an empty prompt")
        return v

    @field_validator("size")
    @classmethod
    def _size(cls, v: str | None) -> str | None:
        m = SIZE.fullmatch(v) if v is not None else None
        if v is not None and (m is None or int(m.group(1)) % 8 or int(m.group(2)) % 8):
            raise ValueError(f"size {v!r}: expected HxW pixels, multiples of 8, e.g. 512x512")
        return v


class MeasureSpec(_Strict):
    threads: int = Field(default=2, ge=1, le=1024)
    batch: int = Field(default=1, ge=1)
    seq_len: int = Field(default=128, ge=1)
    runtimes: tuple[str, ...] = ("onnxruntime",)
    warmup: int = Field(default=10, ge=0)
    runs: int = Field(default=50, ge=3)
    block: int = Field(default=5, ge=1, description="consecutive calls per runner per round")
    settle: int = Field(default=1, ge=0, description="untimed calls at the start of each block")
    pause_ms: float = Field(default=50, ge=0, description="untimed sleep before each block: spinning threads park")
    spinning: bool = Field(default=True, description="ONNX Runtime worker threads spin between ops, as deployed")
    memory: bool = True
    memory_budget_mb: int | None = Field(
        default=None, gt=0, description="cap the measuring child's memory: a stage over it fails with "
        "'needs N MB, budget M MB' (default: the mobile-cpu target's 4 GB, else no cap)")
    energy: bool = True
    fidelity_samples: int = Field(default=256, ge=1)
    torch_latency: bool = True
    llm: LlmMeasureSpec = LlmMeasureSpec()
    diffusion: DiffusionMeasureSpec = DiffusionMeasureSpec()

    @model_validator(mode="after")
    def _settle_below_block(self) -> "MeasureSpec":
        if self.settle >= self.block:
            raise ValueError(f"settle ({self.settle}) must be smaller than block ({self.block})")
        return self

    @field_validator("runtimes")
    @classmethod
    def _known_runtimes(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        known = {"onnxruntime", "torch", "openvino", "litert", "ncnn"}
        bad = [r for r in v if r not in known]
        if bad:
            raise ValueError(f"unknown runtime {bad[0]!r}; known: {', '.join(sorted(known))}")
        return v


class PassStep(_Strict):
    """One step: a registered pass name, its config, and the stage name it records under."""

    name: str
    pass_name: str
    config: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(default=None, description="the earlier stage whose model this step takes (default: the previous step's)")
    when: Literal["torch", "onnx", "openvino", "tflite", "ncnn", "coreml"] | None = Field(
        default=None, description="run the step only when its input model is of this kind (else it is skipped)")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        check_stage_name(re.sub(r"#[0-9]+$", "", v))  # "#2" marks a repeated name
        return v

    @model_validator(mode="after")
    def _not_from_itself(self) -> "PassStep":
        if self.source == self.name:
            raise ValueError(f"stage {self.name}: 'from' names the stage itself")
        return self


class SearchSpec(_Strict):
    """A recipe's `search:` section: which candidate families to explore and the budget (see edgeopt.search)."""

    families: tuple[str, ...] = Field(default=(), description="candidate families; empty: every family the target allows")
    trials: int = Field(default=16, ge=1, description="budget: trials measured (built, judged and timed)")
    minutes: float | None = Field(default=None, gt=0, description="budget: wall-clock minutes for the search")
    train_minutes: float = Field(default=0, ge=0, description="training budget: 0 leaves out structural candidates")
    runs: int = Field(default=30, ge=6, description="timed calls per trial, interleaved with the root's")
    space: dict[str, dict[str, list[Any]]] = Field(default_factory=dict, description="per family: setting -> choices")
    seed: int = 0
    drop: bool = Field(default=True, description="drop a family after its first trial measures no gain")
    cache: str | None = Field(default=None, description="the content-addressed stage cache (default OUT/cas): a "
                                                        "folder every worker shares")

    @model_validator(mode="after")
    def _known_space(self) -> "SearchSpec":
        check_space(self.families, self.space)
        return self


class Recipe(_Strict):
    model: ModelSpec | None = None
    target: str = "auto"
    data: DataSpec = DataSpec()
    passes: tuple[PassStep, ...] = ()
    measure: MeasureSpec = MeasureSpec()
    gates: GateSpec = GateSpec()
    search: SearchSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _normalize_passes(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise ValueError("a recipe is a mapping with keys model, target, data, passes, measure, gates, search")
        raw = data.get("passes") or []
        if not isinstance(raw, (list, tuple)):
            raise ValueError("passes: expected a list of {pass.name: {config}} entries")
        steps, seen = [], {}
        for i, entry in enumerate(raw):
            if isinstance(entry, PassStep):
                steps.append(entry)
                continue
            if isinstance(entry, str):
                entry = {entry: {}}
            if not isinstance(entry, dict) or len(entry) != 1:
                raise ValueError(f"passes[{i}]: expected one {{pass.name: {{config}}}} mapping, got {entry!r}")
            (pname, cfg), = entry.items()
            if cfg is None:
                cfg = {}
            if not isinstance(cfg, dict):
                raise ValueError(f"passes[{i}] {pname}: config must be a mapping, got {cfg!r}")
            cfg = dict(cfg)
            earlier = ["baseline", *seen]
            stage = check_stage_name(cfg.pop("stage", pname), f"passes[{i}] {pname}: stage")
            source = cfg.pop("from", None)
            when = cfg.pop("when", None)
            seen[stage] = seen.get(stage, 0) + 1
            if seen[stage] > 1:
                stage = f"{stage}#{seen[stage]}"
            if source is not None and str(source) not in earlier:
                raise ValueError(f"passes[{i}] {pname}: from {source!r} names no earlier stage "
                                 f"(earlier: {', '.join(earlier)})")
            steps.append({"name": stage, "pass_name": str(pname), "config": cfg,
                          "source": None if source is None else str(source), "when": when})
        return {**data, "passes": steps}

    def validate_passes(self) -> None:
        """Check every pass name and config against the registry (one-line error naming the field)."""
        for step in self.passes:
            build_pass(step.pass_name, step.config)

    def to_dict(self) -> dict[str, Any]:
        d = self.model_dump(mode="json")
        d["passes"] = [{s["pass_name"]: {**s["config"], "stage": s["name"], **({"from": s["source"]} if s["source"] else {}),
                                         **({"when": s["when"]} if s["when"] else {})}}
                       for s in d["passes"]]
        return d


def _one_line(e: ValidationError, where: str) -> RecipeError:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err.get("loc", ())) or "recipe"
    msg = err.get("msg", "").removeprefix("Value error, ")
    return RecipeError(f"{where}: field {loc!r}: {msg}")


def parse_recipe(data: dict[str, Any], where: str = "recipe") -> Recipe:
    """Validate a recipe mapping, including every pass config, into a Recipe."""
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise _one_line(e, where) from None
    except ValueError as e:
        raise RecipeError(f"{where}: {e}") from None
    try:
        recipe.validate_passes()
    except RecipeError as e:
        raise RecipeError(f"{where}: {e}") from None
    return recipe


def load_recipe(path_or_name: str | Path) -> Recipe:
    """Load a recipe from a YAML file or by the name of a bundled one (`cpu-int8` -> recipes/cpu-int8.yaml)."""
    p = Path(path_or_name)
    if not p.exists():
        bundled = RECIPES_DIR / f"{path_or_name}.yaml"
        if bundled.exists():
            p = bundled
        else:
            names = ", ".join(sorted(x.stem for x in RECIPES_DIR.glob("*.yaml")))
            raise RecipeError(f"{path_or_name}: no such recipe file (bundled recipes: {names})")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{p}: not valid YAML{where}") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{p}: not a text file") from None
    if data is None:
        data = {}
    return parse_recipe(data, where=str(p))


def bundled_recipes() -> list[str]:
    return sorted(x.stem for x in RECIPES_DIR.glob("*.yaml"))
