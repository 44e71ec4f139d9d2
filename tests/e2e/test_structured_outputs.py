"""Structured outputs on the bundled local model, through the official openai SDK against
a real `modelmint up`: ``response_format`` json_object and json_schema answers always
parse (and validate), streamed or not, also while batched with free-text requests."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import LiveServer

CHAT_MODEL = "smollm2-135m-instruct"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "drinks": {"type": "string", "enum": ["tea", "coffee", "water"]},
        "retired": {"type": "boolean"},
    },
    "required": ["name", "age", "drinks", "retired"],
    "additionalProperties": False,
}
SCHEMA_FORMAT: Any = {
    "type": "json_schema",
    "json_schema": {"name": "person", "schema": PERSON, "strict": True},
}
ASK = [{"role": "user", "content": "Describe a person called Ada as JSON."}]


def test_a_json_object_answer_parses_and_is_metered(live: LiveServer, client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        # The object to write is given: the assertion is about the grammar, not the model.
        # Left to invent one ('a JSON object whose only key is "sea"'), the 135M model's
        # greedy answer looped ("a sailor, a sailor, ...") past max_tokens on one CPU and
        # closed in time on another: llama.cpp's numerics differ between CPU builds.
        messages=[
            {
                "role": "user",
                "content": 'Reply with the JSON object {"sea": "blue"} and nothing else.',
            }
        ],
        response_format={"type": "json_object"},
        max_tokens=300,
        temperature=0,
    )
    [choice] = reply.choices
    assert choice.finish_reason == "stop"
    assert isinstance(json.loads(choice.message.content or ""), dict)
    row = live.usage_row_of(reply.id)
    assert reply.usage is not None and row is not None
    assert row["output_tokens"] == reply.usage.completion_tokens > 0


def test_a_json_schema_answer_validates_against_its_schema(client: OpenAI) -> None:
    for temperature in (0.0, 1.0):  # greedy, and sampled: the grammar holds either way
        reply = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=ASK,
            response_format=SCHEMA_FORMAT,
            max_tokens=200,
            temperature=temperature,
            seed=3,
        )
        [choice] = reply.choices
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.message.content or ""), PERSON)


def test_a_streamed_json_schema_answer_validates(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        response_format=SCHEMA_FORMAT,
        max_tokens=200,
        temperature=0,
        stream=True,
    )
    pieces, finish = [], None
    for chunk in stream:
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert finish == "stop" and len(pieces) > 3  # token by token, not in one piece
    jsonschema.validate(json.loads("".join(pieces)), PERSON)


def test_constrained_and_free_answers_share_a_batch(client: OpenAI) -> None:
    def ask(constrained: bool) -> tuple[bool, str]:
        extra: dict[str, Any] = {"response_format": SCHEMA_FORMAT} if constrained else {}
        reply = client.chat.completions.create(
            model=CHAT_MODEL, messages=ASK, max_tokens=120, temperature=0, **extra
        )
        return constrained, reply.choices[0].message.content or ""

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, [True, False, True, False]))
    for constrained, text in answers:
        if constrained:
            jsonschema.validate(json.loads(text), PERSON)
    free = [text for constrained, text in answers if not constrained]
    assert free[0] == free[1] and free[0]  # greedy free text, untouched by the grammar


@pytest.mark.parametrize(
    "response_format",
    [
        {"type": "yaml"},
        {"type": "json_schema", "json_schema": {"name": "x"}},
        {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nowhere"}}},
        # A bound the grammar cannot hold is refused, not silently dropped.
        {
            "type": "json_schema",
            "json_schema": {
                "name": "x",
                "schema": {
                    "type": "object",
                    "properties": {"n": {"type": "integer", "minimum": 0}},
                },
            },
        },
    ],
)
def test_a_response_format_that_cannot_be_honoured_is_a_400(
    client: OpenAI, response_format: Any
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=ASK, max_tokens=5, response_format=response_format
        )
    assert refused.value.body["param"] == "response_format"  # type: ignore[index]
