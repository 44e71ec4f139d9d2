"""Log-probabilities of sampled tokens (OpenAI's ``logprobs``), read from a decode's logits.

A chat request asks with ``logprobs: true`` and ``top_logprobs`` (0-20 alternatives per
token); a completion with ``logprobs`` (0-5). The probabilities are the model's own
(softmax of the raw logits), before temperature, penalties or a grammar shape the
sampling, as OpenAI reports them. Shapes: chat choices carry ``{"content": [entry...]}``
with ``entry = {token, logprob, bytes, top_logprobs}``; completions the legacy lists
(``tokens``, ``token_logprobs``, ``top_logprobs`` as dicts, ``text_offset``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelmint.errors import InvalidRequest
from modelmint.serving.types import TextRequest

__all__ = ["chunk", "entry", "joined", "wanted"]

_MAX_TOP = {"chat": 20, "completion": 5}  # OpenAI's own limits


def wanted(request: TextRequest) -> int:
    """How many alternatives per token the request wants with its logprobs (0 for none
    but the sampled token's own), -1 for no logprobs; the 400 naming the parameter for a
    value OpenAI would refuse."""
    extra = request.extra
    if request.kind == "chat":
        on, top = extra.get("logprobs"), extra.get("top_logprobs")
        if on is not None and not isinstance(on, bool):
            raise InvalidRequest("logprobs must be true or false", param="logprobs")
        if top is not None:
            _check_count(top, "top_logprobs", _MAX_TOP["chat"])
            if not on:
                raise InvalidRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        return int(top or 0) if on else -1
    count = extra.get("logprobs")
    if count is None:
        return -1
    _check_count(count, "logprobs", _MAX_TOP["completion"])
    return int(count)


def _check_count(value: Any, name: str, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= most:
        raise InvalidRequest(f"{name} must be a whole number from 0 to {most}", param=name)


def entry(
    logits: NDArray[np.float32], token: int, top: int, piece: Callable[[int], bytes]
) -> dict[str, Any]:
    """The sampled ``token``'s entry, with the ``top`` most likely tokens beside it."""
    shifted = logits.astype(np.float64) - float(logits.max())
    norm = float(np.log(np.exp(shifted).sum()))

    def one(token_id: int) -> dict[str, Any]:
        raw = piece(token_id)
        return {
            "token": raw.decode("utf-8", errors="replace"),
            "logprob": float(shifted[token_id]) - norm,
            "bytes": list(raw),
        }

    result = one(token)
    alternatives: list[dict[str, Any]] = []
    if top:
        best = np.argpartition(-shifted, top - 1)[:top]
        best = best[np.argsort(-shifted[best], kind="stable")]
        alternatives = [one(int(i)) for i in best]
    result["top_logprobs"] = alternatives
    return result


def chunk(chat: bool, entries: Sequence[dict[str, Any]], offset: int) -> dict[str, Any]:
    """A choice's ``logprobs`` for ``entries``, the first at text offset ``offset``."""
    if chat:
        return {"content": list(entries), "refusal": None}
    offsets, at = [], offset
    for item in entries:
        offsets.append(at)
        at += len(item["token"])
    return {
        "tokens": [item["token"] for item in entries],
        "token_logprobs": [item["logprob"] for item in entries],
        "top_logprobs": [
            {alt["token"]: alt["logprob"] for alt in item["top_logprobs"]} for item in entries
        ],
        "text_offset": offsets,
    }


def joined(chat: bool, parts: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """One choice's ``logprobs`` from its streamed chunks, None if there were none."""
    if not parts:
        return None
    if chat:
        return {"content": [e for part in parts for e in part["content"]], "refusal": None}
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    return {key: [value for part in parts for value in part[key]] for key in keys}
