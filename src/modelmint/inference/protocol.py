"""Request bodies of the OpenAI-compatible API, validated at the door.

Unknown fields are kept (``extra="allow"``): a remote upstream may understand
them, and a local engine refuses by name the ones it cannot honour.
"""

from __future__ import annotations

from typing import Any, Literal, Required, cast

from pydantic import BaseModel, ConfigDict, Field, field_validator
from typing_extensions import TypedDict

from modelmint.serving.types import SamplingParams

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "ClassificationRequest",
    "CompletionRequest",
    "EmbeddingRequest",
    "RecommendationRequest",
    "StreamOptions",
]

_MAX_STOPS = 4
# Token counts beyond this fit no model's context; bounding them keeps engines' C types safe.
_INT32 = 2**31 - 1


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _TextRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    # Integer parameters are strict here and below: a JSON integer, as OpenAI's API takes
    # them, never "20" or true, which pydantic would otherwise turn into numbers.
    max_tokens: int | None = Field(default=None, ge=1, le=_INT32, strict=True)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1, strict=True)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > _MAX_STOPS:
            raise ValueError(f"at most {_MAX_STOPS} stop sequences")
        return value

    def sampling(self, max_tokens: int | None) -> SamplingParams:
        stop = self.stop
        stops = (stop,) if isinstance(stop, str) else tuple(stop or ())
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=stops,
            seed=self.seed,
        )

    def passthrough(self) -> dict[str, Any]:
        """Fields we do not interpret, for upstreams that do."""
        return dict(self.model_extra or {})

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ContentPart(TypedDict, total=False):
    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    type: Required[str]
    text: str


class ChatMessage(TypedDict, total=False):
    """A message, validated but kept as the client's own dict: extra keys such as
    ``tool_calls`` pass through to an upstream, and no copy is made per request."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    role: Required[Literal["system", "developer", "user", "assistant", "tool", "function"]]
    content: str | list[ContentPart] | None
    name: str


class ChatCompletionRequest(_TextRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=_INT32, strict=True)

    @property
    def effective_max_tokens(self) -> int | None:
        # The newer field wins: it is what current OpenAI clients send.
        return self.max_completion_tokens or self.max_tokens

    def message_dicts(self) -> list[dict[str, Any]]:
        return cast(list[dict[str, Any]], self.messages)


class CompletionRequest(_TextRequest):
    prompt: str | list[str]
    # OpenAI's documented default.
    max_tokens: int | None = Field(default=16, ge=1, le=_INT32, strict=True)

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("send one prompt per request (a string or a list of one string)")
        return value

    @property
    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=200)
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(default=None, ge=1, le=_INT32, strict=True)
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        texts = [value] if isinstance(value, str) else value
        if any(text == "" for text in texts):
            raise ValueError("input must not contain empty strings")
        return value

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


# One input of a classifier: a text, a row of named features, or {"image": base64}.
ClassificationInput = str | dict[str, Any]


class ClassificationRequest(BaseModel):
    """``POST /v1/classifications``: one input or a list, answered in order."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    input: ClassificationInput | list[ClassificationInput]
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _non_empty(
        cls, value: ClassificationInput | list[ClassificationInput]
    ) -> ClassificationInput | list[ClassificationInput]:
        if isinstance(value, list) and not value:
            raise ValueError("input must not be an empty list")
        return value

    @property
    def items(self) -> list[ClassificationInput]:
        return list(self.input) if isinstance(self.input, list) else [self.input]


class RecommendationRequest(BaseModel):
    """``POST /v1/recommendations``: the top ``k`` items for one user."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=200)
    user: str = Field(min_length=1, max_length=200)
    k: int = Field(default=10, ge=1, le=100, strict=True)
    exclude: list[str] = Field(default_factory=list, max_length=10_000)
