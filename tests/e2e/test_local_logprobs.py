"""``logprobs`` / ``top_logprobs`` on the bundled local model, through the official openai
SDK against a real `modelmint up`: the model's own log-probabilities of each token it
sampled, with the most likely alternatives, on chat and completions, streamed or not."""

from __future__ import annotations

import math

import openai
import pytest
from openai import OpenAI

CHAT_MODEL = "smollm2-135m-instruct"
ASK = [{"role": "user", "content": "Name a fruit."}]


def test_greedy_chat_tokens_are_their_own_top_alternative(client: OpenAI) -> None:
    reply = client.chat.completions.create(
        model=CHAT_MODEL, messages=ASK, max_tokens=10, temperature=0, logprobs=True, top_logprobs=3
    )
    [choice] = reply.choices
    assert choice.logprobs is not None and choice.logprobs.content
    entries = choice.logprobs.content
    assert "".join(e.token for e in entries).startswith(choice.message.content or "")
    for entry in entries:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode())
        top = entry.top_logprobs
        assert len(top) == 3
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        # Greedy: what was sampled is the most likely token, at the same probability.
        assert top[0].token == entry.token and math.isclose(top[0].logprob, entry.logprob)
    assert sum(math.exp(t.logprob) for t in entries[0].top_logprobs) <= 1.0 + 1e-6
    assert reply.usage is not None and len(entries) <= reply.usage.completion_tokens


def test_streamed_chat_chunks_carry_their_tokens_logprobs(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=ASK, max_tokens=8, temperature=0, logprobs=True, stream=True
    )
    entries = [
        entry
        for chunk in stream
        for choice in chunk.choices
        if choice.logprobs and choice.logprobs.content
        for entry in choice.logprobs.content
    ]
    assert entries and all(e.logprob <= 0 and e.top_logprobs == [] for e in entries)


def test_completion_logprobs_come_in_the_legacy_lists(client: OpenAI) -> None:
    reply = client.completions.create(
        model=CHAT_MODEL, prompt="The capital of France is", max_tokens=6, temperature=0, logprobs=2
    )
    [choice] = reply.choices
    lists = choice.logprobs
    assert lists is not None and lists.tokens and lists.token_logprobs and lists.top_logprobs
    assert len(lists.tokens) == len(lists.token_logprobs) == len(lists.top_logprobs)
    assert lists.text_offset == [
        sum(len(t) for t in lists.tokens[:i]) for i in range(len(lists.tokens))
    ]
    assert all(len(alternatives) <= 2 for alternatives in lists.top_logprobs)
    assert "".join(lists.tokens).startswith(choice.text)


def test_more_alternatives_than_openai_allows_is_a_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model=CHAT_MODEL, messages=ASK, max_tokens=4, logprobs=True, top_logprobs=21
        )
    assert refused.value.body["param"] == "top_logprobs"  # type: ignore[index]
