"""The settings a deployment may carry, checked against its backend when it is deployed.

The gateway reads a deployment's ``config`` only when it starts the backend. A bad
value found there would put a model that cannot run in the place of one that could,
so ``check_settings`` refuses it up front, before the deployment replaces anything.
The serving layer keeps its own checks as a last guard; the two must agree.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping

from modelmint.errors import InvalidRequest

__all__ = ["SETTINGS", "check_settings"]

# (setting name, value) -> None, or InvalidRequest naming the setting.
Check = Callable[[str, object], None]

_ENV_VAR = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _whole(low: int, high: int | None = None) -> Check:
    bounds = f"at least {low}" if high is None else f"between {low} and {high}"

    def check(key: str, value: object) -> None:
        # bool is an int to Python, never to a user who typed `true`.
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            raise InvalidRequest(f"{key} must be a whole number {bounds}, got {value!r}", param=key)

    return check


def _number(low: float, *, strict: bool = False) -> Check:
    bounds = f"above {low:g}" if strict else f"at least {low:g}"

    def check(key: str, value: object) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < low
            or (strict and value == low)
        ):
            raise InvalidRequest(f"{key} must be a number {bounds}, got {value!r}", param=key)

    return check


def _choice(*options: str) -> Check:
    def check(key: str, value: object) -> None:
        if value not in options:
            raise InvalidRequest(
                f"{key} must be one of {', '.join(options)}, got {value!r}", param=key
            )

    return check


def _flag(key: str, value: object) -> None:
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false, got {value!r}", param=key)


def _text(key: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{key} must be a non-empty string", param=key)


def _env_var(key: str, value: object) -> None:
    if not isinstance(value, str) or not _ENV_VAR.fullmatch(value):
        raise InvalidRequest(f"{key} must be an environment variable name", param=key)


# What the dynamic batcher of a local classifier, recommender or embedder reads.
_BATCHING: dict[str, Check] = {
    "max_batch_size": _whole(1),
    "max_wait_ms": _number(0),
    "max_queue": _whole(1),
    "timeout_ms": _number(0, strict=True),
}

# Backend -> the settings it reads. A setting a backend does not read is refused too:
# it would be stored, shown, and silently do nothing.
SETTINGS: dict[str, dict[str, Check]] = {
    "predictor": _BATCHING,
    "sentence_transformer": {**_BATCHING, "threads": _whole(1)},
    "onnx_embedding": {**_BATCHING, "threads": _whole(1), "quantize": _choice("none", "int8")},
    "llama_cpp": {
        "engine": _choice("batched", "single"),
        "slots": _whole(1, 64),
        "context": _whole(256),
        "max_queued": _whole(0),
        "queue_timeout_s": _number(0, strict=True),
        "flash_attn": _flag,
    },
    "openai_remote": {
        "upstream_model": _text,
        "api_key_env": _env_var,
        "timeout_s": _number(0, strict=True),
        "max_retries": _whole(0, 10),
    },
}


def check_settings(backend: str, config: Mapping[str, object]) -> None:
    """Raise ``InvalidRequest`` naming the first setting ``backend`` cannot run with."""
    known = SETTINGS.get(backend)
    if known is None:
        raise InvalidRequest(f"unknown backend {backend!r}; known: {', '.join(SETTINGS)}")
    for key, value in config.items():
        check = known.get(key)
        if check is None:
            accepted = ", ".join(known) or "none"
            raise InvalidRequest(
                f"{key} does not apply to a {backend} deployment (its settings: {accepted})",
                param=key,
            )
        check(key, value)
    if backend == "llama_cpp" and config.get("engine") == "single" and "flash_attn" in config:
        raise InvalidRequest("flash_attn applies to the batched engine only", param="flash_attn")
