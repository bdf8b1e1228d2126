"""One rule and one message per kernel argument, for the library, the benchmarks and the pass configs alike."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from edgeopt.errors import RecipeError
from edgeopt.kernels.checks import ArgumentError, ErrorBudget, PositiveInt, error_budget, one_of, pos_int, pos_ints


def test_argument_errors_are_recipe_and_value_errors():
    assert issubclass(ArgumentError, RecipeError) and issubclass(ArgumentError, ValueError)
    for bad in (0, 1.0, -1e-5, float("nan"), True, "x"):
        with pytest.raises(ArgumentError, match="budget: a relative error budget must be in"):
            error_budget(bad, "budget")
    assert error_budget(1e-5) == 1e-5


def test_integers_and_choices():
    assert pos_int(3, "runs") == 3 and pos_ints("4, 8", "sizes") == (4, 8) and pos_ints((2,), "c") == (2,)
    for bad in (0, True, 1.5):
        with pytest.raises(ArgumentError, match="runs: must be an integer >= 1"):
            pos_int(bad, "runs")
    with pytest.raises(ArgumentError, match="sizes: empty"):
        pos_ints("", "sizes")
    with pytest.raises(ArgumentError, match="sizes: expected positive integers"):
        pos_ints("4,x", "sizes")
    assert one_of("2,4", (2, 4, 6), "tiles", "tile") == (2, 4)
    with pytest.raises(ArgumentError, match="tiles: unknown tile 5; known: 2, 4, 6"):
        one_of([2, 5], (2, 4, 6), "tiles", "tile")
    with pytest.raises(ArgumentError, match="impls: empty; known: a, b"):
        one_of("", ("a", "b"), "impls", "implementation")


def test_pydantic_fields_use_the_same_checks_and_name_the_field():
    class Config(BaseModel):
        runs: PositiveInt = 5
        threads: PositiveInt | None = None
        max_rel_error: ErrorBudget = 1e-4

    assert Config(threads=2).threads == 2 and Config().threads is None
    with pytest.raises(ValidationError, match="max_rel_error: a relative error budget must be in"):
        Config(max_rel_error=1.0)
    with pytest.raises(ValidationError, match="runs: must be an integer >= 1"):
        Config(runs=0)
