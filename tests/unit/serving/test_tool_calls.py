"""Tools on local models: validating the request, rendering the prompt, the answer's grammar,
and reading the answer back into OpenAI's tool-call shape, streamed and whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from modelmint.errors import InvalidRequest
from modelmint.serving.chat_template import ChatTemplate
from modelmint.serving.llama_requests import collect, output_grammar, prompt_tokens
from modelmint.serving.tool_call_stream import _decodable, tool_call_deltas
from modelmint.serving.tool_calls import (
    answer_schema,
    conversation,
    read_answer,
    tool_grammar,
    tool_use,
)
from modelmint.serving.types import SamplingParams, StreamDelta, TextRequest, Usage

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time"}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def chat(kind: str = "chat", **extra: Any) -> TextRequest:
    return TextRequest(
        kind=kind,  # type: ignore[arg-type]
        sampling=SamplingParams(),
        messages=list(ASK),
        extra=extra,
    )


# -- the request ---------------------------------------------------------------------


def test_no_tools_or_tool_choice_none_is_free_text() -> None:
    assert tool_use(chat()) is None
    assert tool_use(chat(tool_choice="none")) is None
    assert tool_use(chat(tools=[WEATHER], tool_choice="none")) is None
    assert output_grammar(chat(tools=[WEATHER], tool_choice="none")) is None


def test_tool_choice_picks_the_mode() -> None:
    auto = tool_use(chat(tools=[WEATHER, TIME]))
    assert auto is not None and auto.mode == "auto" and auto.parallel
    required = tool_use(chat(tools=[WEATHER, TIME], tool_choice="required"))
    assert required is not None and required.mode == "required"
    single = tool_use(
        chat(tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False)
    )
    assert single is not None and not single.parallel
    named = tool_use(
        chat(
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_time"}},
        )
    )
    assert named is not None and named.named and not named.parallel
    assert [t.name for t in named.tools] == ["get_time"]


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        ({"tools": [{"type": "retrieval"}]}, "tools", "'function' only"),
        ({"tools": []}, "tools", "non-empty"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools", "name"),
        ({"tools": [TIME, TIME]}, "tools", "two tools"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "not in tools",
        ),
        ({"tools": [WEATHER], "tool_choice": "always"}, "tool_choice", "must be"),
        ({"tool_choice": "required"}, "tool_choice", "needs tools"),
        ({"tools": [WEATHER], "parallel_tool_calls": "yes"}, "parallel_tool_calls", "true"),
        (
            {"tools": [WEATHER], "response_format": {"type": "json_object"}},
            "response_format",
            "one of the two",
        ),
        ({"tools": [WEATHER], "logprobs": True}, "logprobs", "logprobs"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_the_parameter(
    extra: dict[str, Any], param: str, words: str
) -> None:
    with pytest.raises(InvalidRequest, match=words) as refused:
        tool_use(chat(**extra))
    assert refused.value.param == param


def test_parameters_the_grammar_cannot_enforce_are_refused() -> None:
    bounded = {
        "type": "function",
        "function": {
            "name": "f",
            "parameters": {
                "type": "object",
                "properties": {"n": {"type": "integer", "minimum": 1}},
            },
        },
    }
    with pytest.raises(InvalidRequest, match="minimum") as refused:
        tool_use(chat(tools=[bounded]))
    assert refused.value.param == "tools"
    remote = {
        "type": "function",
        "function": {"name": "f", "parameters": {"$ref": "https://example.com/s.json"}},
    }
    with pytest.raises(InvalidRequest, match=r"\$defs only"):
        tool_use(chat(tools=[remote]))


def test_tools_are_for_chat_and_functions_stay_refused() -> None:
    with pytest.raises(InvalidRequest) as refused:
        tool_use(chat("completion", tools=[WEATHER]))
    assert refused.value.param == "tools"
    with pytest.raises(InvalidRequest) as old:
        prompt_tokens(
            chat(functions=[{"name": "f"}]), template=None, tokenize=lambda *_: [], n_ctx=64
        )
    assert old.value.param == "functions"


# -- the grammar ---------------------------------------------------------------------


def test_the_answer_schema_follows_tool_choice() -> None:
    required = tool_use(chat(tools=[WEATHER], tool_choice="required", parallel_tool_calls=False))
    assert required is not None
    schema = answer_schema(required)
    assert list(schema["properties"]) == ["tool_calls"]
    calls = schema["properties"]["tool_calls"]
    assert calls["minItems"] == 1 and calls["maxItems"] == 1
    # name before arguments: the model picks the function first
    assert list(calls["items"]["properties"]) == ["name", "arguments"]
    assert calls["items"]["properties"]["name"] == {"const": "get_weather"}
    auto = tool_use(chat(tools=[WEATHER, TIME]))
    assert auto is not None
    either = answer_schema(auto)["anyOf"]
    assert [list(s["properties"]) for s in either] == [["tool_calls"], ["response"]]
    assert "maxItems" not in either[0]["properties"]["tool_calls"]
    assert len(either[0]["properties"]["tool_calls"]["items"]["anyOf"]) == 2


def test_definitions_of_each_tool_move_to_the_root_under_its_name() -> None:
    nested = {
        "type": "function",
        "function": {
            "name": "book",
            "parameters": {
                "type": "object",
                "properties": {"guest": {"$ref": "#/$defs/Person"}},
                "$defs": {"Person": {"type": "object", "properties": {"name": {"type": "string"}}}},
            },
        },
    }
    use = tool_use(chat(tools=[nested], tool_choice="required"))
    assert use is not None
    schema = answer_schema(use)
    assert set(schema["$defs"]) == {"book--Person"}
    arguments = schema["properties"]["tool_calls"]["items"]["properties"]["arguments"]
    assert arguments["properties"]["guest"] == {"$ref": "#/$defs/book--Person"}
    assert "$defs" not in arguments
    assert "root ::=" in tool_grammar(use)


def test_the_grammar_is_the_tool_grammar_when_tools_are_offered() -> None:
    grammar = output_grammar(chat(tools=[WEATHER], tool_choice="required"))
    assert grammar is not None and "get_weather" in grammar and "tool_calls" in grammar


# -- the prompt ----------------------------------------------------------------------

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}<|im_start|>assistant\n"
)


def test_without_tools_the_messages_are_unchanged() -> None:
    assert conversation(ASK, None) == ASK


def test_the_tools_are_described_in_the_system_message() -> None:
    use = tool_use(chat(tools=[WEATHER], tool_choice="required"))
    turns = conversation([{"role": "system", "content": "Be brief."}, *ASK], use)
    assert [t["role"] for t in turns] == ["system", "user"]
    assert turns[0]["content"].startswith("Be brief.\n\n")
    assert '"name":"get_weather"' in turns[0]["content"]
    assert '"city"' in turns[0]["content"]
    inserted = conversation(ASK, use)
    assert [t["role"] for t in inserted] == ["system", "user"]


def test_earlier_calls_and_their_results_become_text_turns() -> None:
    messages = [
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {
                    "id": "call_2",
                    "type": "function",
                    "function": {"name": "get_time", "arguments": "{}"},
                },
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": [{"type": "text", "text": "noon"}]},
    ]
    turns = conversation(messages, None)
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert orjson.loads(turns[1]["content"]) == {
        "tool_calls": [
            {"name": "get_weather", "arguments": {"city": "Paris"}},
            {"name": "get_time", "arguments": {}},
        ]
    }
    results = [orjson.loads(line) for line in turns[2]["content"].splitlines()]
    assert results == [
        {
            "tool_response": {
                "tool_call_id": "call_1",
                "name": "get_weather",
                "content": "sunny, 21 C",
            }
        },
        {"tool_response": {"tool_call_id": "call_2", "name": "get_time", "content": "noon"}},
    ]
    rendered = ChatTemplate(CHATML).render(turns)
    assert "<|im_start|>tool" not in rendered and "sunny, 21 C" in rendered


def test_a_tool_result_needs_its_call_id() -> None:
    with pytest.raises(InvalidRequest, match="tool_call_id") as refused:
        conversation([*ASK, {"role": "tool", "content": "x"}], None)
    assert refused.value.param == "messages"


# -- reading the answer --------------------------------------------------------------


def test_a_whole_answer_reads_as_calls_or_content() -> None:
    content, calls = read_answer(
        '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
    ) or (None, [])
    assert content is None and len(calls) == 1
    [call] = calls
    assert call["id"].startswith("call_") and call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert read_answer('{"response": "Hello"}') == ("Hello", [])
    assert read_answer('{"tool_calls": [{"name": "get_weat') is None


def _chunk(index: int, delta: dict[str, Any], finish: str | None = None) -> StreamDelta:
    return StreamDelta(
        [{"index": index, "delta": delta, "finish_reason": finish, "logprobs": None}]
    )


async def engine_stream(pieces: list[str], finish: str, n: int = 1) -> AsyncIterator[StreamDelta]:
    """What an engine streams: a role delta, content deltas and a finish, per choice."""
    for index in range(n):
        yield _chunk(index, {"role": "assistant", "content": ""})
    for piece in pieces:
        for index in range(n):
            yield _chunk(index, {"content": piece})
    for index in range(n):
        yield _chunk(index, {}, finish)


def shaped(pieces: list[str], finish: str, n: int = 1, **extra: Any) -> list[dict[str, Any]]:
    use = tool_use(chat(tools=[WEATHER, TIME], **extra))
    assert use is not None

    async def run() -> list[dict[str, Any]]:
        return [
            c
            async for d in tool_call_deltas(engine_stream(pieces, finish, n), use)
            for c in d.choices
        ]

    return asyncio.run(run())


CALL_PIECES = [
    '{"tool',
    '_calls": [{"name": "get_',
    'weather", "arguments": {"city": "Pa',
    'ris"}}]}',
]


def test_a_streamed_call_comes_as_openai_tool_call_deltas() -> None:
    out = shaped(CALL_PIECES, "stop", tool_choice="required")
    assert out[0]["delta"] == {"role": "assistant", "content": ""}
    opening, arguments, end = out[1:]
    [entry] = opening["delta"]["tool_calls"]
    assert entry["index"] == 0 and entry["id"].startswith("call_") and entry["type"] == "function"
    assert entry["function"] == {"name": "get_weather", "arguments": ""}
    [more] = arguments["delta"]["tool_calls"]
    assert more["index"] == 0 and orjson.loads(more["function"]["arguments"]) == {"city": "Paris"}
    assert end["delta"] == {} and end["finish_reason"] == "tool_calls"


def test_a_call_cut_short_has_no_tool_calls_and_keeps_its_text() -> None:
    out = shaped(CALL_PIECES[:2], "length")
    assert all("tool_calls" not in c["delta"] for c in out)
    assert "".join(c["delta"].get("content", "") for c in out[1:]) == "".join(CALL_PIECES[:2])
    assert out[-1]["finish_reason"] == "length"


def test_an_auto_text_response_streams_as_content_while_written() -> None:
    pieces = ['{"resp', 'onse": "Hel', "lo \\", '"Ada\\"', " \\ud83d", '\\ude00 \\u00e9"}']
    out = shaped(pieces, "stop")
    texts = [c["delta"].get("content") for c in out[1:-1]]
    assert texts[0] == "Hel"  # sent before the answer ends
    assert "".join(t or "" for t in texts) == 'Hello "Ada" \U0001f600 é'
    assert out[-1]["finish_reason"] == "stop"


def test_choices_are_read_apart_and_collected_with_their_calls() -> None:
    async def run() -> Any:
        use = tool_use(chat(tools=[WEATHER, TIME], tool_choice="required"))
        assert use is not None
        return await collect(
            tool_call_deltas(engine_stream(CALL_PIECES, "stop", 2), use), "chat", Usage()
        )

    generation = asyncio.run(run())
    assert [c["index"] for c in generation.choices] == [0, 1]
    for choice in generation.choices:
        assert choice["finish_reason"] == "tool_calls"
        message = choice["message"]
        assert message["content"] is None
        [call] = message["tool_calls"]
        assert call["function"]["name"] == "get_weather"
        assert orjson.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_collect_without_tool_calls_keeps_the_old_shape() -> None:
    generation = asyncio.run(collect(engine_stream(["Hi"], "stop"), "chat", Usage()))
    assert generation.choices[0]["message"] == {"role": "assistant", "content": "Hi"}


@pytest.mark.parametrize(
    ("body", "final", "kept"),
    [
        ('abc"}', False, "abc"),
        ("ab\\", False, "ab"),
        ("ab\\u00", False, "ab"),
        ("ab\\ud83d", False, "ab"),
        ("ab\\ud83d\\ude00x", False, "ab\\ud83d\\ude00x"),
        ("ab\\ud83dxy", False, "ab\\ud83dxy"),
        ("ab\\ud83d", True, "ab\\ud83d"),
    ],
)
def test_only_whole_escapes_are_decoded(body: str, final: bool, kept: str) -> None:
    assert _decodable(body, final=final) == kept
