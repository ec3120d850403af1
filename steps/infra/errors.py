"""The error a user can act on, and any error as one short line."""

from __future__ import annotations


class StepError(Exception):
    """A failure the user can act on; its message is printed as the single error line."""


def one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
