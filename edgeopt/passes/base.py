"""The Pass contract, its typed frozen configs, the run context and the one registry of passes."""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

import edgeopt.passes
from edgeopt.artifact import Artifact, content_sha256, sha256_module
from edgeopt.errors import PassError, RecipeError


class PassConfig(BaseModel):
    """Base of every pass config: frozen, validated at construction, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass
class PassContext:
    """What a pass may use besides its input: target, data, its own stage folder, progress, notes.

    `calibration` and `evaluation` are lists of feed dicts (input name -> numpy array).
    A pass writes anything it produces under `stage_dir`, and records facts worth keeping (which
    fusions fired, sensitivity rankings, ...) in `notes`; warnings go to `warnings`.
    """

    stage_dir: Path
    target: Any = None
    calibration: list[dict[str, Any]] = field(default_factory=list)
    evaluation: list[dict[str, Any]] = field(default_factory=list)
    progress: Any = None
    baseline: Artifact | None = None
    measure: Any = None
    gates: Any = None
    executor: Any = None  # the run's edgeopt.executor executor (None: work runs here) for passes that fan out
    notes: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def task(self, description: str, total: int | None):
        """A progress task: returns a callable `advance(n=1)`; silent when no progress display is set."""
        if self.progress is None:
            return lambda n=1: None
        task_id = self.progress.add_task(description, total=total)
        return lambda n=1: self.progress.advance(task_id, n)


class Pass:
    """A pass: a typed config plus `run(artifact, ctx) -> artifact`.

    Subclasses declare `name` (set by @register), `accepts` (input kinds), `produces` (output kind,
    None = same as input) and `tolerance` (the minimum cosine to the input's outputs the contract test
    expects; None where the pass changes the task itself, e.g. pruning). `__call__` enforces the
    declaration around `run`. `tolerance_reason` says why a pass has no tolerance and what shows instead that it
    worked (e.g. accuracy above a floor); the contract test requires a tolerance or a reason.
    """

    name: ClassVar[str] = ""
    accepts: ClassVar[tuple[str, ...]] = ("onnx",)
    produces: ClassVar[str | None] = None
    tolerance: ClassVar[float | None] = 0.999
    tolerance_reason: ClassVar[str | None] = None
    Config: ClassVar[type[PassConfig]] = PassConfig

    def __init__(self, config: PassConfig | dict[str, Any] | None = None, **kwargs: Any):
        if isinstance(config, PassConfig):
            if not isinstance(config, self.Config):
                raise RecipeError(f"{self.name}: config is a {type(config).__name__}, not {self.name}'s Config")
            if kwargs:  # validated like any other config (model_copy(update=...) would skip validation)
                config = make_config(self.name, self.Config, {**config.model_dump(), **kwargs})
        else:
            config = make_config(self.name, self.Config, {**(config or {}), **kwargs})
        self.config = config

    def run(self, art: Artifact, ctx: PassContext) -> Artifact:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, art: Artifact, ctx: PassContext) -> Artifact:
        if art.kind not in self.accepts:
            raise PassError(f"pass {self.name} accepts {'/'.join(self.accepts)} models, got {art.kind}")
        ctx.stage_dir.mkdir(parents=True, exist_ok=True)
        before = art.sha256
        module_before = module_fingerprint(art.module) if art.kind == "torch" and art.module is not None else None
        out = self.run(art, ctx)
        expected = self.produces or art.kind
        if out.kind != expected:
            raise PassError(f"pass {self.name} declared it produces {expected} but returned {out.kind}")
        if art.path is not None and art.path.exists() and art.kind != "torch":
            if content_sha256(art.kind, art.path) != before:
                raise PassError(f"pass {self.name} modified its input file {art.path}")
        if module_before is not None and module_fingerprint(art.module) != module_before:
            raise PassError(f"pass {self.name} modified its input torch module (weights, buffers or train/eval mode)")
        return out

    def __repr__(self) -> str:
        return f"{self.name}({self.config.model_dump()})"


def torch_module_copy(art: Artifact, pass_name: str, share_weights: bool = False) -> Any:
    """A deep copy of the artifact's live module, train/eval flags as they were (a pass never mutates its input).

    `share_weights`: the copy's parameters and buffers are the input's own tensors, for passes that only swap
    modules and never write a weight (the kernel passes): a stage then costs no second copy of the model's
    weights (Stable Diffusion's UNet alone is 3.4 GB in fp32)."""
    if art.module is None:
        raise PassError(f"{pass_name}: torch artifact has no live module")
    if not share_weights:
        return copy.deepcopy(art.module)
    memo = {id(t): t for t in (*art.module.parameters(), *art.module.buffers())}
    return copy.deepcopy(art.module, memo)


def module_fingerprint(module: Any) -> str:
    """A torch module's content hash (parameters and buffers) plus every submodule's train/eval flag."""
    modes = "".join(str(int(m.training)) for m in module.modules())
    return f"{sha256_module(module)}:{modes}"


_REGISTRY: dict[str, type[Pass]] = {}
_LOADED = False


def register(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator: register a Pass subclass under `name` (one registry for CLI, recipes, tests)."""

    def deco(cls: type[Pass]) -> type[Pass]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"pass name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_all() -> None:
    """Import every module under edgeopt.passes once, so each registers its passes (lazy: keeps import fast)."""
    global _LOADED
    if not _LOADED:
        import pkgutil

        for info in pkgutil.walk_packages(edgeopt.passes.__path__, prefix="edgeopt.passes."):
            if info.name != __name__ and ".rules" not in info.name:
                importlib.import_module(info.name)
        _LOADED = True


def registry() -> dict[str, type[Pass]]:
    """Every registered pass by name."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered under `name`; an unknown name lists the known ones."""
    passes = registry()
    if name not in passes:
        raise RecipeError(f"unknown pass {name!r}; known passes: {', '.join(passes)}")
    return passes[name]


def make_config(pass_name: str, config_cls: type[PassConfig], values: dict[str, Any]) -> PassConfig:
    """Validate `values` into `config_cls`, turning pydantic's report into one line naming the field."""
    try:
        return config_cls(**values)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(x) for x in err.get("loc", ())) or "config"
        raise RecipeError(f"pass {pass_name}: field {loc!r}: {err.get('msg')} (got {err.get('input')!r})") from None
    except ValueError as e:
        raise RecipeError(f"pass {pass_name}: {e}") from None


def build_pass(name: str, values: dict[str, Any] | None = None) -> Pass:
    """Instantiate the registered pass `name` with validated config `values`."""
    cls = get_pass(name)
    return cls(make_config(name, cls.Config, dict(values or {})))
