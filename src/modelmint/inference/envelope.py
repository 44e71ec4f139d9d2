"""The OpenAI envelope around backend output: ids, object names, chunks, embeddings encoding."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import orjson

from modelmint.serving.types import Usage

__all__ = ["Envelope", "encode_embedding", "sse"]


def sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


class Envelope:
    """id, object, created and model of one chat or completion answer."""

    def __init__(self, request_id: str, model: str, kind: str) -> None:
        chat = kind == "chat"
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id.removeprefix("req_")
        self.object = "chat.completion" if chat else "text_completion"
        self.chunk_object = "chat.completion.chunk" if chat else "text_completion"
        self.model = model
        self.created = int(time.time())

    def full(
        self, choices: list[dict[str, Any]], usage: Usage, fingerprint: str | None
    ) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
            "usage": usage.to_openai(),
            "system_fingerprint": fingerprint,
        }

    def chunk(self, choices: list[dict[str, Any]], include_usage: bool) -> bytes:
        payload: dict[str, Any] = {
            "id": self.id,
            "object": self.chunk_object,
            "created": self.created,
            "model": self.model,
            "choices": choices,
        }
        if include_usage:
            payload["usage"] = None
        return sse(payload)

    def usage_chunk(self, usage: Usage) -> bytes:
        return sse(
            {
                "id": self.id,
                "object": self.chunk_object,
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage.to_openai(),
            }
        )


def encode_embedding(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        # OpenAI's base64 format: little-endian float32, as the SDK decodes it.
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode()
    return vector
