"""The errors of training: data that cannot be trained on, a recipe used before ``fit``.

A module of their own, below ``recipe`` and the helpers it uses (``splits``), so that
those helpers can raise them without importing the recipe back.
"""

from __future__ import annotations

from modelmint.errors import Conflict, InvalidRequest

__all__ = ["DataError", "NotFittedError"]


class DataError(InvalidRequest):
    """The data (or a parameter) cannot be trained on; the message names the problem
    and where it is. The CLI prints it and exits with code 2."""

    code = "invalid_data"


class NotFittedError(Conflict):
    code = "not_fitted"
