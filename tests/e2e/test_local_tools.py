"""``tools`` / ``tool_choice`` on the bundled local model, through the official openai SDK
against a real `modelmint up`: tool calls in OpenAI's shape, streamed or whole, their
arguments valid under the tool's schema, results sent back as ``role: "tool"``
messages, the output metered, and what cannot be honoured refused with a 400."""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import LiveServer

CHAT_MODEL = "smollm2-135m-instruct"
WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"timezone": {"type": "string", "maxLength": 40}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TOOLS: Any = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": WEATHER_PARAMETERS,
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The current time in a timezone",
            "parameters": TIME_PARAMETERS,
        },
    },
]
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
ASK: Any = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def valid_calls(message: Any) -> list[Any]:
    """The message's tool calls, each checked against its tool's parameters schema."""
    calls = message.tool_calls or []
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return calls


def test_required_calls_a_tool_with_valid_arguments_and_is_metered(
    live: LiveServer, client: OpenAI
) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=120,
        temperature=0,
    )
    [choice] = reply.choices
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(valid_calls(choice.message)) >= 1
    row = live.usage_row_of(reply.id)
    assert reply.usage is not None and row is not None
    # What was generated (the call's JSON) is what is counted and metered.
    assert row["output_tokens"] == reply.usage.completion_tokens > 0
    assert row["finish_reason"] == "tool_calls"


def test_a_named_function_is_called_exactly_once(client: OpenAI) -> None:
    for temperature in (0.0, 1.0):  # greedy, and sampled: the grammar holds either way
        reply = client.chat.completions.create(
            model=CHAT_MODEL,
            messages=ASK,
            tools=TOOLS,
            tool_choice={"type": "function", "function": {"name": "get_time"}},
            max_tokens=120,
            temperature=temperature,
            seed=5,
        )
        [choice] = reply.choices
        assert choice.finish_reason == "tool_calls"
        [call] = valid_calls(choice.message)
        assert call.function.name == "get_time"


def test_parallel_tool_calls_false_gives_one_call(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Weather in Paris, Rome and Oslo?"}],
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=120,
        temperature=0,
    )
    assert len(valid_calls(reply.choices[0].message)) == 1


def test_auto_answers_with_a_valid_call_or_with_text(client: OpenAI) -> None:
    for messages in (ASK, [{"role": "user", "content": "Say hello to Ada."}]):
        reply = client.chat.completions.create(
            model=CHAT_MODEL, messages=messages, tools=TOOLS, max_tokens=120, temperature=0
        )
        [choice] = reply.choices
        if choice.message.tool_calls:
            assert choice.finish_reason == "tool_calls"
            assert valid_calls(choice.message)
        else:
            assert choice.finish_reason == "stop"
            assert choice.message.content  # the text of {"response": ...}, unwrapped
            assert not choice.message.content.lstrip().startswith('{"response"')


def test_each_of_n_choices_calls_a_tool(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=120,
        temperature=1.0,
        seed=3,
        n=2,
    )
    assert [c.index for c in reply.choices] == [0, 1]
    for choice in reply.choices:
        assert choice.finish_reason == "tool_calls" and valid_calls(choice.message)


def test_tool_choice_none_answers_in_free_text(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL, messages=ASK, tools=TOOLS, tool_choice="none", max_tokens=24
    )
    [choice] = reply.choices
    assert choice.message.tool_calls is None
    assert choice.message.content and choice.finish_reason in ("stop", "length")


def test_a_streamed_call_is_assembled_by_the_sdk_stream_helper(
    live: LiveServer, client: OpenAI
) -> None:
    with client.chat.completions.stream(
        model=CHAT_MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=120,
        temperature=0,
        stream_options={"include_usage": True},
    ) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    [choice] = final.choices
    assert choice.finish_reason == "tool_calls"
    assert valid_calls(choice.message)
    assert final.usage is not None and final.usage.completion_tokens > 0
    row = live.usage_row_of(final.id)
    assert row is not None and row["output_tokens"] == final.usage.completion_tokens


def test_streamed_tool_call_deltas_have_openais_shape(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=120,
        temperature=0,
        stream=True,
    )
    opened: list[Any] = []
    arguments, finish = "", None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            for entry in choice.delta.tool_calls or []:
                assert entry.index == 0
                if entry.id is not None:
                    opened.append(entry)
                arguments += (entry.function and entry.function.arguments) or ""
    [first] = opened
    assert first.type == "function" and first.function is not None
    assert first.function.name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMETERS)
    assert finish == "tool_calls"


def test_an_auto_text_answer_streams_as_content(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Say hello to Ada."}],
        tools=TOOLS,
        max_tokens=120,
        temperature=0,
        stream=True,
    )
    texts, calls, finish = [], 0, None
    for chunk in stream:
        for choice in chunk.choices:
            finish = choice.finish_reason or finish
            calls += len(choice.delta.tool_calls or [])
            texts.append(choice.delta.content or "")
    if calls:
        assert finish == "tool_calls"
    else:
        assert finish == "stop" and "".join(texts)
        assert not "".join(texts).lstrip().startswith("{")


def test_tool_results_go_back_into_the_conversation(client: OpenAI) -> None:
    first = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=120,
        temperature=0,
    )
    message = first.choices[0].message
    [call] = valid_calls(message)
    conversation: Any = [
        *ASK,
        message.model_dump(exclude_none=True),  # the assistant turn, as the SDK gives it
        {"role": "tool", "tool_call_id": call.id, "content": '{"sky": "sunny", "celsius": 21}'},
    ]
    answer = client.chat.completions.create(
        model=CHAT_MODEL, messages=conversation, tools=TOOLS, max_tokens=60, temperature=0
    )
    [choice] = answer.choices
    assert choice.finish_reason in ("stop", "tool_calls", "length")
    assert choice.message.content or valid_calls(choice.message)
    # The results make the prompt longer than the question alone.
    assert first.usage is not None and answer.usage is not None
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens
    # Without tools offered, the same conversation is answered in text.
    plain = client.chat.completions.create(
        model=CHAT_MODEL, messages=conversation, max_tokens=24, temperature=0
    )
    assert plain.choices[0].message.content and plain.choices[0].message.tool_calls is None


def test_a_call_cut_short_by_max_tokens_has_no_tool_calls(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        max_tokens=6,
        temperature=0,
    )
    [choice] = reply.choices
    assert choice.finish_reason == "length"
    assert choice.message.tool_calls is None
    assert choice.message.content  # the unfinished JSON that was generated (and billed)
    assert reply.usage is not None and reply.usage.completion_tokens == 6


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tools": [{"type": "code_interpreter"}]}, "tools"),
        (
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
            "tool_choice",
        ),
        (
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "count",
                            "parameters": {
                                "type": "object",
                                "properties": {"n": {"type": "integer", "minimum": 1}},
                            },
                        },
                    }
                ]
            },
            "tools",
        ),
        ({"functions": [{"name": "f", "parameters": {"type": "object"}}]}, "functions"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_what_a_local_model_cannot_do_is_a_400_naming_the_parameter(
    client: OpenAI, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CHAT_MODEL, messages=ASK, max_tokens=5, **extra)
    assert refused.value.body["param"] == param  # type: ignore[index]


def test_a_tool_message_without_its_call_id_is_a_400(client: OpenAI) -> None:
    messages: Any = [*ASK, {"role": "tool", "content": "sunny"}]
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CHAT_MODEL, messages=messages, max_tokens=5)
    assert refused.value.body["param"] == "messages"  # type: ignore[index]
