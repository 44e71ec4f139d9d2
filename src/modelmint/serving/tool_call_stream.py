"""Answers that may call tools, turned from the grammar's JSON into OpenAI's shape, streamed
as each local engine streams them.

A call is sent once its JSON has closed, as OpenAI's stream would send it: one delta
naming the call (``index``, ``id``, ``type``, ``function.name``, empty arguments), one
with its arguments, and ``finish_reason: "tool_calls"``. A text response of
``tool_choice: "auto"`` (``{"response": "..."}``) streams as ``content`` while it is
written. An answer cut short by ``max_tokens`` (``finish_reason: "length"``), or by a
stop sequence, before its JSON closed carries no tool calls: what was generated comes
back as ``content`` (for a text response: the text written so far).

Usage stays the engine's count of what it generated, whatever the shape of the answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from modelmint.serving.tool_calls import ToolUse, read_answer, tool_use
from modelmint.serving.types import StreamDelta, TextRequest

__all__ = ["answer_shape", "tool_call_deltas"]

# How an "auto" answer that responds with text starts, up to its string's first character.
_RESPONSE_START = re.compile(r'\s*\{\s*"response"\s*:\s*"')
_CALLS_START = re.compile(r'\s*\{\s*"tool_calls"')


def answer_shape(
    request: TextRequest, pieces: AsyncIterator[StreamDelta]
) -> AsyncIterator[StreamDelta]:
    """The engine's deltas as the request asked for them: unchanged for free text (the
    very same iterator, so plain requests pay nothing), OpenAI tool calls when the request
    offers tools."""
    use = tool_use(request)
    if use is None:
        return pieces
    return _closing(pieces, tool_call_deltas(pieces, use))


async def _closing(
    pieces: AsyncIterator[StreamDelta], shaped: AsyncIterator[StreamDelta]
) -> AsyncIterator[StreamDelta]:
    try:
        async for delta in shaped:
            yield delta
    finally:
        # A consumer gone mid-answer closes the engine's stream too, freeing its slot.
        close = getattr(pieces, "aclose", None)
        if close is not None:
            await close()


async def tool_call_deltas(
    pieces: AsyncIterator[StreamDelta], use: ToolUse
) -> AsyncIterator[StreamDelta]:
    """The engine's chat deltas of answers under ``use``'s grammar, in OpenAI's tool-call
    shape; each choice (``n``) read on its own."""
    readers: dict[int, _AnswerReader] = {}
    async for delta in pieces:
        for choice in delta.choices:
            reader = readers.setdefault(choice["index"], _AnswerReader(choice["index"], use))
            for out in reader.feed(choice):
                yield StreamDelta([out])


@dataclass(slots=True)
class _AnswerReader:
    """One choice's answer, read as its deltas arrive."""

    index: int
    use: ToolUse
    raw: list[str] = field(default_factory=list)  # the answer's JSON text so far
    # "calls" (held until the JSON closes), "response" (streamed), or undecided (None).
    kind: str | None = None
    sent: int = 0  # characters of the response text already sent

    def __post_init__(self) -> None:
        if self.use.mode == "required":
            self.kind = "calls"

    def feed(self, choice: dict[str, Any]) -> list[dict[str, Any]]:
        delta = choice.get("delta", {})
        finish = choice.get("finish_reason")
        if "role" in delta:  # the opening delta goes out as it is
            return [choice]
        self.raw.append(delta.get("content") or "")
        out = []
        if self.kind is None:
            self._decide()
        if self.kind == "response":
            text = self._response_text(final=finish is not None)
            if text:
                out.append(self._delta({"content": text}))
        if finish is not None:
            out.extend(self._finish(finish))
        return out

    def _decide(self) -> None:
        text = "".join(self.raw)
        if _RESPONSE_START.match(text):
            self.kind = "response"
        elif _CALLS_START.match(text):
            self.kind = "calls"

    def _response_text(self, *, final: bool) -> str:
        """The response text written since the last call, unescaped."""
        raw = "".join(self.raw)
        start = _RESPONSE_START.match(raw)
        assert start is not None
        body = _decodable(raw[start.end() :], final=final)
        try:
            text = str(json.loads(f'"{body}"')).encode("utf-8", "replace").decode()
        except ValueError:  # not JSON string text after all: sent whole at the end
            return ""
        new, self.sent = text[self.sent :], len(text)
        return new

    def _finish(self, finish: str) -> list[dict[str, Any]]:
        raw = "".join(self.raw)
        if self.kind == "response":
            return [self._delta({}, finish)]
        answer = read_answer(raw) if finish == "stop" else None
        if answer is None or not answer[1]:
            # Cut short before the JSON closed (or something unforeseen): no call, and
            # what was generated is not hidden.
            content = answer[0] if answer is not None else raw
            out = [self._delta({"content": content})] if content else []
            return [*out, self._delta({}, finish)]
        out = []
        for position, call in enumerate(answer[1]):
            function = call["function"]
            opening = {
                "index": position,
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": ""},
            }
            arguments = {"index": position, "function": {"arguments": function["arguments"]}}
            out.append(self._delta({"tool_calls": [opening]}))
            out.append(self._delta({"tool_calls": [arguments]}))
        return [*out, self._delta({}, "tool_calls")]

    def _delta(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {"index": self.index, "delta": delta, "finish_reason": finish, "logprobs": None}


def _decodable(body: str, *, final: bool) -> str:
    """The start of a JSON string's body (after its opening quote) that decodes as it is:
    up to its closing quote, else without an escape still being written (nor half a
    surrogate pair, whose halves must go out together). ``final``: nothing more comes,
    so an unfinished escape is dropped."""
    i, n, safe = 0, len(body), 0
    while i < n:
        char = body[i]
        if char == '"':
            return body[:i]
        if char != "\\":
            i += 1
        elif body[i + 1 : i + 2] != "u":
            i += 2
        elif 0xD800 <= _hex(body[i + 2 : i + 6]) < 0xDC00:  # a high surrogate
            if body[i + 6 : i + 8] == "\\u":
                i += 12
            elif i + 8 <= n or final:
                i += 6  # a lone half: decoded as a replacement character
            else:
                break  # its pair may be on its way
        else:
            i += 6
        if i > n:
            break
        safe = i
    return body[:safe]


def _hex(digits: str) -> int:
    try:
        return int(digits, 16) if len(digits) == 4 else -1
    except ValueError:
        return -1
