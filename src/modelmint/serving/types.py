"""The shapes that cross the boundary between the gateway and a backend.

Choices travel as OpenAI-shaped dicts so that a remote upstream's extras (tool
calls, logprobs) pass through untouched; the gateway only adds the envelope.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "EmbeddingResult",
    "Generation",
    "Prediction",
    "SamplingParams",
    "StreamDelta",
    "TextRequest",
    "Usage",
]


@dataclass(slots=True)
class Usage:
    """Token counts of one request. Mutable: a stream updates it as tokens are sent."""

    input_tokens: int = 0
    output_tokens: int = 0
    # True when counted by our tokenizer because the upstream reported nothing.
    estimated: bool = False
    # Engine busy time charged to this request (local engines; 0 for remote upstreams),
    # the measured input of its serving cost.
    engine_ms: float = 0.0

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def to_openai(self) -> dict[str, int]:
        return {
            "prompt_tokens": self.input_tokens,
            "completion_tokens": self.output_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class TextRequest:
    """A chat or completion request, already validated by the gateway."""

    kind: Literal["chat", "completion"]
    sampling: SamplingParams
    messages: list[dict[str, Any]] = field(default_factory=list)
    prompt: str = ""
    # OpenAI fields ModelMint does not interpret (tools, response_format, n, ...); a
    # remote upstream receives them, a local engine refuses the ones it cannot honour.
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Generation:
    """A finished, non-streamed answer: OpenAI choice dicts plus exact usage."""

    choices: list[dict[str, Any]]
    usage: Usage
    system_fingerprint: str | None = None


@dataclass(slots=True)
class StreamDelta:
    """One streamed step: OpenAI chunk choices (delta form for chat, text for completions)."""

    choices: list[dict[str, Any]]


@dataclass(slots=True)
class EmbeddingResult:
    vectors: list[list[float]]
    usage: Usage


@dataclass(slots=True)
class Prediction:
    """Answers of a classifier or recommender: one JSON-ready result per input, in order."""

    results: list[Any]
    usage: Usage
