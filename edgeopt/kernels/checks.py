"""Argument checks of the kernels, their micro-benchmarks and the kernel passes: one rule and one message each.

Every entry point validates through here: the tuner (`kernels.winograd.tune_layer` / `tune_model`), the
micro-benchmarks (`edgeopt.measure.kernels`, the CLI's `winograd` and `kernels` commands) and the pass configs
(`edgeopt.passes.kernels._common.KernelSwapConfig`, whose pydantic fields use the same checks through the
`PositiveInt` / `ErrorBudget` types). A failure is an `ArgumentError`: one line naming the field, both a
RecipeError (the CLI prints it and exits 2) and a ValueError (what a library caller expects).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, Sequence

from pydantic import AfterValidator

from edgeopt.errors import RecipeError


class ArgumentError(RecipeError, ValueError):
    """A bad argument of a kernel, benchmark or kernel pass: one line naming the field."""


def split(values: str | Sequence[Any]) -> tuple[Any, ...]:
    """A comma-separated string (as the CLI passes lists) or a sequence, as a tuple."""
    if isinstance(values, str):
        return tuple(v.strip() for v in values.split(",") if v.strip())
    return tuple(values)


def pos_int(value: Any, name: str = "value") -> int:
    """An integer >= 1 (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ArgumentError(f"{name}: must be an integer >= 1, got {value!r}")
    return value


def pos_ints(values: str | Sequence[Any], name: str) -> tuple[int, ...]:
    """A non-empty list of integers >= 1, from a sequence or a comma-separated string."""
    values = split(values)
    if any(isinstance(v, str) and not v.isdigit() for v in values):
        raise ArgumentError(f"{name}: expected positive integers separated by commas, got {','.join(map(str, values))!r}")
    values = tuple(int(v) if isinstance(v, str) else v for v in values)
    if not values:
        raise ArgumentError(f"{name}: empty")
    return tuple(pos_int(v, name) for v in values)


def error_budget(value: Any, name: str = "error_budget") -> float:
    """A relative-error budget: a finite number in (0, 1)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 < value < 1
    if not ok:
        raise ArgumentError(f"{name}: a relative error budget must be in (0, 1), got {value!r}")
    return float(value)


def one_of(values: str | Sequence[Any], known: Sequence[Any], name: str, what: str) -> tuple[Any, ...]:
    """A non-empty selection of `known` (a sequence or a comma-separated string; digits become ints when
    `known` holds ints); an unknown entry names itself and lists the known ones."""
    values = split(values)
    if all(isinstance(k, int) for k in known):
        values = tuple(int(v) if isinstance(v, str) and v.isdigit() else v for v in values)
    if not values:
        raise ArgumentError(f"{name}: empty; known: {', '.join(map(str, known))}")
    for v in values:
        if v not in known:
            raise ArgumentError(f"{name}: unknown {what} {v!r}; known: {', '.join(map(str, known))}")
    return values


# pydantic field types of the kernel pass configs: the same checks, the field's own name in the message
def _field(check: Callable[[Any, str], Any]) -> AfterValidator:
    return AfterValidator(lambda value, info: value if value is None else check(value, info.field_name))


PositiveInt = Annotated[int, _field(pos_int)]
ErrorBudget = Annotated[float, _field(error_budget)]

__all__ = ["ArgumentError", "split", "pos_int", "pos_ints", "error_budget", "one_of", "PositiveInt", "ErrorBudget"]
