"""``n`` > 1 on the bundled local model, through the official openai SDK against a real
`modelmint up`: one sequence per choice, decoded side by side, every choice metered."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from tests.e2e.conftest import LiveServer

CHAT_MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "Name three rivers."}]


def test_greedy_choices_are_the_single_answer_n_times_and_usage_sums_them(
    live: LiveServer, client: OpenAI
) -> None:
    one = client.chat.completions.create(
        model=CHAT_MODEL, messages=ASK, max_tokens=12, temperature=0
    )
    three = client.chat.completions.create(
        model=CHAT_MODEL, messages=ASK, max_tokens=12, temperature=0, n=3
    )
    assert [c.index for c in three.choices] == [0, 1, 2]
    assert {c.message.content for c in three.choices} == {one.choices[0].message.content}
    assert one.usage is not None and three.usage is not None
    assert three.usage.prompt_tokens == one.usage.prompt_tokens  # the prompt counts once
    assert three.usage.completion_tokens == 3 * one.usage.completion_tokens
    row = live.usage_row_of(three.id)
    assert row is not None and row["output_tokens"] == three.usage.completion_tokens


def test_sampled_choices_differ_and_stream_with_their_indexes(
    live: LiveServer, client: OpenAI
) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=ASK,
        max_tokens=16,
        temperature=1.0,
        seed=11,
        n=2,
        stream=True,
        stream_options={"include_usage": True},
    )
    texts: dict[int, str] = {0: "", 1: ""}
    finished: dict[int, str] = {}
    usage = None
    request_id = None
    for chunk in stream:
        request_id = chunk.id
        usage = chunk.usage or usage
        for choice in chunk.choices:
            texts[choice.index] += choice.delta.content or ""
            if choice.finish_reason:
                finished[choice.index] = choice.finish_reason
    assert set(finished) == {0, 1} and all(texts.values())
    assert texts[0] != texts[1]  # own seeds: two different answers
    assert usage is not None and request_id is not None
    row = live.usage_row_of(request_id)
    assert row is not None and row["output_tokens"] == usage.completion_tokens >= 2


def test_more_choices_than_slots_is_a_400_naming_n(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=CHAT_MODEL, messages=ASK, max_tokens=4, n=64)
    assert refused.value.body["param"] == "n"  # type: ignore[index]
