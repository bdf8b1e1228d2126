"""Stage and Ledger records: one Stage per pipeline step, saved as versioned JSON that reports read."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeopt.errors import InputError
from edgeopt.measure.latency import LatencyStats

SCHEMA_VERSION = 3
# versions this edgeopt reads: 1 lacks the optional `llm` stage field (added in 2), 1 and 2 the optional `diffusion`
# field (added in 3), so they load as they are
READABLE_VERSIONS = (1, 2, 3)


class Latency(LatencyStats):
    """Latency of one inference in milliseconds, over `n` timed runs after warm-up (the stats fields of
    `LatencyStats`; its samples are not recorded), and what it was measured on."""

    runtime: str
    threads: int
    batch: int = 1
    shapes: dict[str, list[int]] = Field(default_factory=dict)


class Energy(BaseModel):
    """Energy of one inference in millijoules, with how it was obtained (always named)."""

    value: float
    method: str


class Gate(BaseModel):
    passed: bool
    why: str = ""


class Stage(BaseModel):
    """Everything measured about one step of a pipeline."""

    model_config = ConfigDict(extra="allow")

    name: str
    pass_: str | None = Field(default=None, alias="pass")
    parent: str | None = None  # the stage whose model this one transformed
    config: dict[str, Any] = Field(default_factory=dict)
    status: str = "done"  # done | failed | skipped
    artifact: dict[str, Any] | None = None
    params: int | None = None
    flops: int | None = None
    latency_ms: Latency | None = None
    peak_rss_mb: float | None = None
    energy_mj: Energy | None = None
    fidelity: dict[str, float] | None = None
    accuracy: dict[str, float] | None = None
    gate: Gate | None = None
    duration_s: float = 0.0
    notes: dict[str, Any] = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    error: str | None = None
    # an LLM stage's figures (edgeopt.llm.measure): prompt_tokens, ttft_ms, prefill_tok_s, decode_tok_s,
    # decode_ms_p50/p90, decode_tokens, top1_agreement, kl, ppl, ppl_ref, answer, bandwidth_pct, runtime, ...
    llm: dict[str, Any] | None = None
    # a diffusion stage's figures (edgeopt.diffusion.stages): whole_run_ms, unet_step_ms, text_encoder_ms,
    # vae_decode_ms (medians over interleaved rounds), tensor_peak_mb, weights_mb, psnr, ssim, accuracy, fd, images, ...
    diffusion: dict[str, Any] | None = None
    versions: dict[str, str] = Field(default_factory=dict)
    cache_key: str | None = None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, mode="json")


class Ledger(BaseModel):
    """The record of a whole run: recipe, target, environment and the stages in order."""

    schema_version: int = SCHEMA_VERSION
    recipe: dict[str, Any] = Field(default_factory=dict)
    target: dict[str, Any] = Field(default_factory=dict)
    environment: dict[str, Any] = Field(default_factory=dict)
    stages: list[Stage] = Field(default_factory=list)
    best: str | None = None
    search: dict[str, Any] | None = None  # the candidate search: trials, front, families (edgeopt.search)

    def stage(self, name: str) -> Stage | None:
        return next((s for s in self.stages if s.name == name), None)

    def put(self, stage: Stage) -> None:
        """Add `stage`, replacing an earlier record of the same name."""
        for i, s in enumerate(self.stages):
            if s.name == stage.name:
                self.stages[i] = stage
                return
        self.stages.append(stage)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "recipe": self.recipe,
            "target": self.target,
            "environment": self.environment,
            "best": self.best,
            "stages": [s.to_json() for s in self.stages],
            **({"search": self.search} if self.search is not None else {}),
        }

    def save(self, path: str | Path) -> None:
        """Write atomically (temp file + rename) so a reader never sees a half-written ledger."""
        write_text_atomic(Path(path), json.dumps(self.to_json(), indent=2, default=str))

    @classmethod
    def load(cls, path: str | Path) -> Ledger:
        """Read a ledger; a missing, corrupt or partial file gets a one-line error naming file and field."""
        path = Path(path)
        if path.is_dir():
            path = path / "ledger.json"
        if not path.exists():
            raise InputError(f"{path}: no such ledger file")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise InputError(f"{path}: not valid JSON ({e.__class__.__name__} at {getattr(e, 'pos', '?')})") from None
        if not isinstance(data, dict):
            raise InputError(f"{path}: a ledger is a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version is None:
            raise InputError(f"{path}: field 'schema_version' is missing")
        if version not in READABLE_VERSIONS:
            raise InputError(
                f"{path}: ledger schema version {version} is not supported (this edgeopt reads "
                f"{', '.join(map(str, READABLE_VERSIONS))})"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ()))
            raise InputError(f"{path}: field {loc!r}: {err.get('msg')}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; an output file follows the umask like any other
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
