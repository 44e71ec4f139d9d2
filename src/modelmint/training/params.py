"""Hyperparameters from the command line (``--param epochs=20``), typed by the recipe.

Each value is converted to the type of the parameter's default in the recipe's
``__init__``: a typo like ``epochs=2O`` stops with a message instead of training
with a string.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable
from typing import Any

from modelmint.training.recipe import DataError, Recipe

__all__ = ["parse_params"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_params(recipe: type[Recipe[Any]], pairs: Iterable[str]) -> dict[str, Any]:
    defaults = {
        p.name: p.default
        for p in inspect.signature(recipe.__init__).parameters.values()
        if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise DataError(f"--param takes KEY=VALUE, got {pair!r}")
        if key not in defaults:
            raise DataError(
                f"{recipe.name} has no parameter {key!r}; it has: {', '.join(sorted(defaults))}"
            )
        params[key] = _convert(key, text.strip(), defaults[key])
    return params


def _convert(key: str, text: str, default: Any) -> Any:
    if text.lower() in ("none", "null") and (default is None or default is inspect.Parameter.empty):
        return None
    try:
        if isinstance(default, bool):
            lowered = text.lower()
            if lowered not in _TRUE | _FALSE:
                raise ValueError("expected true or false")
            return lowered in _TRUE
        if isinstance(default, int):
            return int(text)
        if isinstance(default, float):
            return float(text)
        if isinstance(default, tuple | list):
            items = [item.strip() for item in text.split(",") if item.strip()]
            element = default[0] if default else ""
            converted = [_convert(key, item, element) for item in items]
            return type(default)(converted)
        if isinstance(default, str):
            return text
        # No usable default (None): a number or JSON if it parses, else the text itself.
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    except ValueError as exc:
        raise DataError(f"parameter {key}={text!r} is not valid: {exc}") from None
