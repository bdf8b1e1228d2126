"""Fidelity: how far a stage's outputs are from the baseline's (max/mean abs error, per-sample cosine), and gates.

`ref` and `out` are paired lists of arrays (for example the first output of each eval feed, or every
output of one run). Each array's first axis is the batch: cosine is taken per sample row with the other
axes flattened, in float64. A 0-d or 1-d array counts as one row.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgeopt.errors import InputError, RecipeError


def _rows(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim <= 1:
        return a.reshape(1, -1)
    return a.reshape(a.shape[0], -1)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair (float64). Two zero rows count as identical (1.0); one zero row gives 0.0."""
    a, b = _rows(a), _rows(b)
    dot = (a * b).sum(1)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    denom = na * nb
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), 0.0)
    cos = np.where((na == 0) & (nb == 0), 1.0, cos)
    nan = np.isnan(dot) | np.isnan(denom)
    return np.clip(np.where(nan, np.nan, cos), -1.0, 1.0)


def compare(ref: list[np.ndarray], out: list[np.ndarray], threshold: float | None = None) -> dict[str, float]:
    """Fidelity of `out` against `ref`: max_abs, mean_abs (over all elements), mean_cosine and min_cosine
    (over sample rows) and n (the number of rows compared). With `threshold` (models whose outputs are
    probabilities turned into decisions, e.g. a VAD's speech/non-speech per frame) also decision_agreement: the
    share of output elements on the same side of the threshold in both.

    NaN anywhere makes the numbers NaN (a gate then fails). A length or shape mismatch raises InputError.
    """
    if isinstance(ref, np.ndarray):
        ref = [ref]
    if isinstance(out, np.ndarray):
        out = [out]
    if len(ref) != len(out):
        raise InputError(f"fidelity: {len(ref)} reference outputs but {len(out)} outputs to compare")
    if not ref:
        raise InputError("fidelity: no outputs to compare")
    maxes, abs_sum, n_elems, cos_all, same = [0.0], 0.0, 0, [], 0
    for i, (r, o) in enumerate(zip(ref, out)):
        r, o = np.asarray(r), np.asarray(o)
        if r.shape != o.shape:
            raise InputError(f"fidelity: output {i} has shape {tuple(o.shape)}, the reference has {tuple(r.shape)}")
        diff = np.abs(r.astype(np.float64) - o.astype(np.float64))
        if diff.size:
            maxes.append(float(diff.max()))  # NaN propagates
            abs_sum += float(diff.sum())
            n_elems += diff.size
        cos_all.append(cosine_rows(r, o))
        if threshold is not None:
            same += int(((r > threshold) == (o > threshold)).sum())
    cos = np.concatenate(cos_all)
    if cos.size == 0:
        raise InputError("fidelity: the outputs hold no samples")
    result = {
        "max_abs": float(np.max(maxes)),
        "mean_abs": abs_sum / n_elems if n_elems else 0.0,
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "n": int(cos.size),
    }
    if threshold is not None:
        result["decision_agreement"] = same / n_elems if n_elems else 1.0
    return result


class GateSpec(BaseModel):
    """The fidelity gates a stage must pass (a recipe's `gates:`); None = not gated."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min_cosine: float | None = Field(default=None, ge=-1, le=1)
    mean_cosine: float | None = Field(default=None, ge=-1, le=1)
    max_abs: float | None = Field(default=None, ge=0)
    max_accuracy_drop: float | None = Field(default=None, ge=0, description="percentage points below the baseline")
    min_top1_agreement: float | None = Field(default=None, ge=0, le=1, description="LLMs: next-token top-1 "
                                             "agreement with the fp32 model, teacher-forced on held-out text")
    max_kl: float | None = Field(default=None, ge=0, description="LLMs: mean KL(fp32 || stage) per position, nats")
    min_psnr: float | None = Field(default=None, ge=0, description="diffusion: PSNR (dB) of the stage's images against "
                                   "the baseline's from the same seeds")
    min_ssim: float | None = Field(default=None, ge=-1, le=1,
                                   description="diffusion: SSIM against the baseline's images")
    max_fd_increase: float | None = Field(default=None, ge=0, description="digits diffusion: Fréchet distance rise "
                                          "over the baseline's, as a fraction (0.1 = 10 %)")
    min_decision_agreement: float | None = Field(default=None, ge=0, le=1, description="probability outputs (VAD): "
                                                 "share of frames decided alike at the model's threshold")


# gate name -> (fidelity key, direction): "min" means the value must be >= the limit, "max" <= the limit
_GATES = {"min_cosine": ("min_cosine", "min"), "mean_cosine": ("mean_cosine", "min"), "max_abs": ("max_abs", "max"),
          "max_accuracy_drop": ("accuracy_drop", "max"), "min_top1_agreement": ("top1_agreement", "min"),
          "max_kl": ("kl", "max"), "min_psnr": ("psnr", "min"), "min_ssim": ("ssim", "min"),
          "max_fd_increase": ("fd_increase", "max"), "min_decision_agreement": ("decision_agreement", "min")}


def _gate_limits(gates: Any) -> dict[str, float]:
    if gates is None:
        return {}
    if not isinstance(gates, GateSpec):
        try:
            gates = GateSpec.model_validate(dict(gates))
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err.get("loc", ())) or "gates"
            raise RecipeError(f"gates: field {loc!r}: {err.get('msg')}") from None
    return {k: v for k, v in gates.model_dump().items() if v is not None}


def gate(fidelity: dict[str, float] | None, gates: Any) -> tuple[bool, str]:
    """Check `fidelity` against `gates` (GateSpec or a dict of min_cosine, mean_cosine, max_abs).

    Returns (passed, why): why names every check, failed ones first, e.g.
    "min_cosine 0.9712 < 0.99; max_abs 0.0031 <= 0.01". A gated value that was not measured, or is NaN, fails.
    """
    limits = _gate_limits(gates)
    if not limits:
        return True, "no gates"
    failed, ok = [], []
    fidelity = fidelity or {}
    for name, limit in limits.items():
        key, direction = _GATES[name]
        value = fidelity.get(key)
        if value is None:
            failed.append(f"{key} not measured (gate {name} {limit:g})")
            continue
        value = float(value)
        if direction == "min":
            passed = value >= limit  # False for NaN
            (ok if passed else failed).append(f"{key} {value:.6g} {'>=' if passed else '<'} {limit:g}")
        else:
            passed = value <= limit
            (ok if passed else failed).append(f"{key} {value:.6g} {'<=' if passed else '>'} {limit:g}")
    return not failed, "; ".join(failed + ok)
