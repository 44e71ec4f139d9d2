"""What both llama.cpp engines do alike: refuse what they cannot honour, turn a request
into prompt tokens within the context window, and turn engine events into OpenAI deltas.

Engines post events ``("token", text)`` (one sampled token and the text it released),
``("text", text)`` (held-back text released at the end, costing no token),
``("end", finish_reason)`` and ``("error", exception)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

from modelmint.errors import ContextLengthExceeded, InvalidRequest
from modelmint.serving.chat_template import ChatTemplate
from modelmint.serving.types import Generation, StreamDelta, TextRequest, Usage

__all__ = ["UNSUPPORTED", "Event", "collect", "deltas", "prompt_tokens"]

# OpenAI request fields a local engine cannot honour; refusing them beats silently ignoring.
UNSUPPORTED = (
    "tools", "functions", "tool_choice", "logprobs", "top_logprobs", "logit_bias", "echo",
    "suffix", "best_of",
)  # fmt: skip

Event = tuple[str, Any]
# (text, add_bos, parse_special) -> token ids
Tokenize = Callable[[bytes, bool, bool], list[int]]


def prompt_tokens(
    request: TextRequest, *, template: ChatTemplate | None, tokenize: Tokenize, n_ctx: int
) -> tuple[list[int], int]:
    """The prompt's tokens and the max_tokens to generate, or the 400 that says why not."""
    for name in UNSUPPORTED:
        if request.extra.get(name) not in (None, False, [], {}):
            raise InvalidRequest(f"{name!r} is not supported by this model", param=name)
    if request.extra.get("n", 1) != 1:
        raise InvalidRequest("this model returns one choice per request (n=1)", param="n")
    response_format = request.extra.get("response_format") or {}
    if response_format.get("type", "text") != "text":
        raise InvalidRequest("only text response_format is supported", param="response_format")
    if request.kind == "chat":
        if template is None:
            raise InvalidRequest("this model has no chat template; use /v1/completions")
        tokens = tokenize(template.render(request.messages).encode(), True, True)
    else:
        tokens = tokenize(request.prompt.encode(), True, False)
    room = n_ctx - len(tokens)
    max_tokens = request.sampling.max_tokens
    if max_tokens is None:
        max_tokens = room
    if room <= 0 or max_tokens > room:
        raise ContextLengthExceeded(
            f"this model's context window is {n_ctx} tokens; the prompt has "
            f"{len(tokens)} and max_tokens asks for {max_tokens}",
            param="max_tokens" if room > 0 else "messages",
        )
    return tokens, max_tokens


async def deltas(
    events: asyncio.Queue[Event], chat: bool, usage: Usage
) -> AsyncIterator[StreamDelta]:
    """OpenAI deltas from an engine's events, counting output tokens into ``usage``.

    The chat role chunk waits for the engine's first event: a request refused while
    queued (deadline, shutdown) then fails before anything was sent, so the client
    gets a real HTTP error status instead of a 200 stream that breaks.
    """
    role_sent = not chat
    while True:
        kind, value = await events.get()
        if not role_sent and kind != "error":
            role_sent = True
            role = {"role": "assistant", "content": ""}
            yield StreamDelta(
                [{"index": 0, "delta": role, "finish_reason": None, "logprobs": None}]
            )
        if kind in ("token", "text"):
            usage.output_tokens += kind == "token"
            if value:
                yield StreamDelta([piece(chat, value, None)])
        elif kind == "end":
            yield StreamDelta([piece(chat, "", value)])
            return
        else:  # "error"
            raise value


async def collect(pieces: AsyncIterator[StreamDelta], kind: str, usage: Usage) -> Generation:
    """A whole answer from a stream of deltas."""
    text: list[str] = []
    finish: str | None = None
    async for delta in pieces:
        choice = delta.choices[0]
        part = choice["delta"].get("content") if "delta" in choice else choice.get("text")
        text.append(part or "")
        finish = choice.get("finish_reason") or finish
    content = "".join(text)
    answer: dict[str, Any]
    if kind == "chat":
        message = {"role": "assistant", "content": content}
        answer = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
    else:
        answer = {"index": 0, "text": content, "finish_reason": finish, "logprobs": None}
    return Generation(choices=[answer], usage=usage)


def piece(chat: bool, text: str, finish: str | None) -> dict[str, Any]:
    if chat:
        delta = {"content": text} if text or finish is None else {}
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
    return {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
