"""Request bodies of the OpenAI-compatible API: what is refused at the door, what is kept."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import BaseModel, ValidationError

from modelmint.inference.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    RecommendationRequest,
)
from modelmint.serving.types import SamplingParams

USER = [{"role": "user", "content": "hi"}]


def chat(**fields: Any) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate({"model": "m", "messages": USER, **fields})


def error_locations(exc: pytest.ExceptionInfo[ValidationError]) -> list[tuple[Any, ...]]:
    return [tuple(error["loc"]) for error in exc.value.errors()]


def test_a_minimal_chat_request_is_valid() -> None:
    request = chat()
    assert request.message_dicts() == USER
    assert request.effective_max_tokens is None
    assert request.stream is False
    assert request.include_usage is False
    assert request.passthrough() == {}


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"messages": []}, ("messages",)),
        ({"max_tokens": 0}, ("max_tokens",)),
        ({"max_completion_tokens": 0}, ("max_completion_tokens",)),
        ({"stop": ["a", "b", "c", "d", "e"]}, ("stop",)),
        ({"temperature": 2.01}, ("temperature",)),
        ({"temperature": -0.1}, ("temperature",)),
        ({"top_p": 0}, ("top_p",)),
        ({"model": ""}, ("model",)),
        ({"messages": [{"role": "robot", "content": "x"}]}, ("messages", 0, "role")),
        (
            {"messages": [{"role": "user", "content": [{"text": "no type"}]}]},
            ("messages", 0, "content", "list[ContentPart]", 0, "type"),
        ),
    ],
)
def test_chat_validation_rules(fields: dict[str, Any], location: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        chat(**fields)
    assert location in error_locations(caught)


def test_four_stops_and_the_temperature_bounds_are_accepted() -> None:
    request = chat(stop=["a", "b", "c", "d"], temperature=2)
    assert request.sampling(None).stop == ("a", "b", "c", "d")
    assert chat(temperature=0).temperature == 0


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    assert chat(max_tokens=100, max_completion_tokens=7).effective_max_tokens == 7
    assert chat(max_tokens=100).effective_max_tokens == 100
    assert chat(max_completion_tokens=9).effective_max_tokens == 9


def test_sampling_defaults_and_a_single_stop_string() -> None:
    assert chat(stop="END", seed=3).sampling(12) == SamplingParams(
        max_tokens=12, temperature=1.0, top_p=1.0, stop=("END",), seed=3
    )
    assert chat(temperature=0.2, top_p=0.5).sampling(None) == SamplingParams(
        max_tokens=None, temperature=0.2, top_p=0.5, stop=(), seed=None
    )


def test_unknown_fields_are_kept_for_the_upstream() -> None:
    request = chat(tools=[{"type": "function"}], n=2, user="u-1", temperature=0.5)
    assert request.passthrough() == {"tools": [{"type": "function"}], "n": 2, "user": "u-1"}
    request.passthrough()["n"] = 99  # a copy: the request itself is unchanged
    assert request.passthrough()["n"] == 2


def test_include_usage_reads_stream_options() -> None:
    assert chat(stream=True, stream_options={"include_usage": True}).include_usage is True
    assert chat(stream=True, stream_options={}).include_usage is False


def test_message_dicts_are_the_clients_own_dicts_with_extras() -> None:
    request = chat(
        messages=[
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
            {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"},
        ]
    )
    assert request.message_dicts() == [
        {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]},
        {"role": "user", "content": [{"type": "text", "text": "hi"}], "name": "ann"},
    ]


def test_completion_takes_one_prompt() -> None:
    assert CompletionRequest(model="m", prompt="hello").prompt_text == "hello"
    assert CompletionRequest(model="m", prompt=["hello"]).prompt_text == "hello"
    assert CompletionRequest(model="m", prompt="x").max_tokens == 16  # OpenAI's default
    for prompt in (["a", "b"], []):
        with pytest.raises(ValidationError) as caught:
            CompletionRequest(model="m", prompt=prompt)
        assert ("prompt",) in error_locations(caught)


def test_completion_max_tokens_must_be_positive() -> None:
    with pytest.raises(ValidationError) as caught:
        CompletionRequest(model="m", prompt="x", max_tokens=0)
    assert error_locations(caught) == [("max_tokens",)]


def test_embedding_input_forms() -> None:
    assert EmbeddingRequest(model="e", input="one").texts == ["one"]
    assert EmbeddingRequest(model="e", input=["a", "b"]).texts == ["a", "b"]


@pytest.mark.parametrize(
    ("fields", "location"),
    [
        ({"input": []}, ("input",)),
        ({"input": ""}, ("input",)),
        ({"input": ["a", ""]}, ("input",)),
        ({"input": "x", "encoding_format": "int8"}, ("encoding_format",)),
        ({"input": "x", "dimensions": 0}, ("dimensions",)),
    ],
)
def test_embedding_validation_rules(fields: dict[str, Any], location: tuple[Any, ...]) -> None:
    with pytest.raises(ValidationError) as caught:
        EmbeddingRequest.model_validate({"model": "e", **fields})
    assert location in error_locations(caught)


def test_embedding_extra_fields_are_kept() -> None:
    request = EmbeddingRequest.model_validate({"model": "e", "input": "x", "truncate": "END"})
    assert request.model_extra == {"truncate": "END"}


@pytest.mark.parametrize("value", ['"20"', "true", "20.5"])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "seed"])
def test_token_counts_and_seeds_must_be_json_integers(field: str, value: str) -> None:
    body = f'{{"model": "m", "messages": {orjson.dumps(USER).decode()}, "{field}": {value}}}'
    with pytest.raises(ValidationError) as caught:
        ChatCompletionRequest.model_validate_json(body)
    assert error_locations(caught) == [(field,)]


@pytest.mark.parametrize(
    ("model", "body", "field"),
    [
        (CompletionRequest, '{"model": "m", "prompt": "x", "max_tokens": "20"}', "max_tokens"),
        (EmbeddingRequest, '{"model": "e", "input": "x", "dimensions": "8"}', "dimensions"),
        (RecommendationRequest, '{"model": "r", "user": "u", "k": "5"}', "k"),
    ],
)
def test_integer_parameters_of_other_endpoints_refuse_strings_and_booleans(
    model: type[BaseModel], body: str, field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        model.model_validate_json(body)
    assert error_locations(caught) == [(field,)]


def test_json_integers_are_still_accepted() -> None:
    body = '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}'
    assert ChatCompletionRequest.model_validate_json(body).max_tokens == 20
