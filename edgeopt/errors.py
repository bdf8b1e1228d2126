"""The one family of errors a user sees: each carries a one-line message naming the problem."""

from __future__ import annotations


class EdgeoptError(Exception):
    """Base of every error edgeopt reports to a user as one line (the CLI prints it and exits non-zero)."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class InputError(EdgeoptError):
    """A model, data or ledger file is missing, unreadable, corrupt or does not fit."""


class RecipeError(EdgeoptError):
    """A recipe or pass configuration is invalid."""


class PassError(EdgeoptError):
    """A pass failed while running; its stage is marked failed in the ledger."""

    exit_code = 3


def first_line(e: BaseException, limit: int = 300) -> str:
    """The line of an exception's message that says what went wrong: the first one, or, when it only
    introduces the next (C++ runtimes: "Exception from src/…cpp:224:" then "Check '…' failed at …:" then the
    reason), the first line that does not end with a colon."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return e.__class__.__name__
    for ln in lines:
        if not ln.endswith(":"):
            return ln[:limit]
    return lines[0][:limit]
