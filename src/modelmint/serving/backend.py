"""The interfaces every inference backend implements, local engine or remote upstream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from modelmint.serving.types import (
    EmbeddingResult,
    Generation,
    Prediction,
    StreamDelta,
    TextRequest,
    Usage,
)

__all__ = ["Backend", "EmbeddingBackend", "PredictionBackend", "TextBackend"]


@runtime_checkable
class Backend(Protocol):
    async def start(self) -> None:
        """Load weights or open connections; the gateway is ready when every start returned."""

    async def close(self) -> None: ...


@runtime_checkable
class TextBackend(Backend, Protocol):
    async def generate(self, request: TextRequest) -> Generation:
        """Run the request to the end and return the whole answer."""

    def stream(self, request: TextRequest, usage: Usage) -> AsyncIterator[StreamDelta]:
        """Yield the answer piece by piece, keeping ``usage`` current after every piece,
        so that a stream cut short is still metered for what was sent."""


@runtime_checkable
class EmbeddingBackend(Backend, Protocol):
    async def embed(self, texts: list[str]) -> EmbeddingResult: ...


@runtime_checkable
class PredictionBackend(Backend, Protocol):
    """A classifier or recommender trained by a recipe."""

    def validate(self, item: Any) -> Any:
        """Check one input before it queues; raise InvalidRequest naming the problem."""

    async def predict(self, items: list[Any]) -> Prediction: ...
