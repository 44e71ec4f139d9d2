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

import orjson

from modelmint.errors import ContextLengthExceeded, InvalidRequest
from modelmint.serving.chat_template import ChatTemplate
from modelmint.serving.json_grammar import schema_grammar, unenforced_keywords
from modelmint.serving.logprobs import chunk, joined
from modelmint.serving.tool_calls import conversation, fold_call_delta, tool_grammar, tool_use
from modelmint.serving.types import Generation, StreamDelta, TextRequest, Usage

__all__ = [
    "UNSUPPORTED",
    "Event",
    "choice_count",
    "collect",
    "deltas",
    "merged",
    "output_grammar",
    "prompt_tokens",
]

# OpenAI request fields a local engine cannot honour; refusing them beats silently ignoring.
UNSUPPORTED = ("functions", "function_call", "logit_bias", "echo", "suffix", "best_of")

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
    if request.kind == "chat":
        if template is None:
            raise InvalidRequest("this model has no chat template; use /v1/completions")
        turns = conversation(request.messages, tool_use(request))
        tokens = tokenize(template.render(turns).encode(), True, True)
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


def choice_count(request: TextRequest, limit: int) -> int:
    """How many choices (``n``) the request asks for, at most ``limit`` (the engine's
    slots: the choices are decoded side by side), or the 400 naming ``n``."""
    count = request.extra.get("n")
    if count is None:
        return 1
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InvalidRequest("n must be a whole number of choices, at least 1", param="n")
    if count > limit:
        raise InvalidRequest(
            f"this model decodes at most {limit} choices of one request at once (n <= {limit})",
            param="n",
        )
    return count


def output_grammar(request: TextRequest) -> str | None:
    """The GBNF grammar the answer must follow (``response_format``), or None for free
    text; the 400 naming ``response_format`` for one that cannot be honoured.

    ``json_object`` is any JSON object; ``json_schema`` one valid under its schema,
    converted to a grammar by llama.cpp's own converter (``llama_cpp.llama_grammar``).
    Sampling under the grammar makes every token keep the answer a prefix of a valid
    document, so an answer that ends by itself (``finish_reason: "stop"``) parses and
    validates; one cut short by ``max_tokens`` is a prefix, as with OpenAI.

    With ``tools`` (and a ``tool_choice`` other than "none") the grammar is that of
    the tool-call answer instead (``tool_calls.answer_schema``)."""
    use = tool_use(request)
    if use is not None:
        return tool_grammar(use)
    response_format = request.extra.get("response_format")
    if response_format is None:
        return None
    if not isinstance(response_format, dict):
        raise InvalidRequest("response_format must be an object", param="response_format")
    kind = response_format.get("type", "text")
    if kind == "text":
        return None
    if kind == "json_object":
        return _schema_grammar('{"type": "object"}')
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest(
                "response_format json_schema needs json_schema.schema: a JSON Schema object",
                param="response_format",
            )
        unenforced = sorted(unenforced_keywords(schema))
        if unenforced:
            raise InvalidRequest(
                f"response_format json_schema uses {', '.join(unenforced)}, which a local "
                "model's grammar cannot enforce; leave it out or check the answer yourself",
                param="response_format",
            )
        return _schema_grammar(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS).decode())
    raise InvalidRequest(
        f"response_format type {kind!r} is not one of text, json_object, json_schema",
        param="response_format",
    )


def _schema_grammar(schema: str) -> str:
    return schema_grammar(schema, "response_format json_schema", "response_format")


async def deltas(
    events: asyncio.Queue[Event], chat: bool, usage: Usage
) -> AsyncIterator[StreamDelta]:
    """OpenAI deltas from an engine's events, counting output tokens into ``usage``.

    The chat role chunk waits for the engine's first event: a request refused while
    queued (deadline, shutdown) then fails before anything was sent, so the client
    gets a real HTTP error status instead of a 200 stream that breaks.
    """
    role_sent = not chat
    offset = 0  # characters sent so far (completions' text_offset)
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
            found = None
            if isinstance(value, tuple):  # ("token", (text, its logprobs entry))
                value, found = value
            if found is not None:
                logprobs = chunk(chat, [found], offset)
                yield StreamDelta([piece(chat, value, None, logprobs)])
            elif value:
                yield StreamDelta([piece(chat, value, None)])
            offset += len(value)
        elif kind == "end":
            yield StreamDelta([piece(chat, "", value)])
            return
        else:  # "error"
            raise value


async def collect(pieces: AsyncIterator[StreamDelta], kind: str, usage: Usage) -> Generation:
    """A whole answer (one choice per index) from a stream of deltas; streamed tool-call
    deltas are joined into ``message.tool_calls`` (``content`` then null when empty)."""
    texts: dict[int, list[str]] = {}
    finishes: dict[int, str | None] = {}
    logprobs: dict[int, list[dict[str, Any]]] = {}
    calls: dict[int, dict[int, dict[str, Any]]] = {}
    async for delta in pieces:
        for choice in delta.choices:
            index = choice["index"]
            part = choice["delta"].get("content") if "delta" in choice else choice.get("text")
            texts.setdefault(index, []).append(part or "")
            finishes[index] = choice.get("finish_reason") or finishes.get(index)
            if choice.get("logprobs"):
                logprobs.setdefault(index, []).append(choice["logprobs"])
            for entry in choice.get("delta", {}).get("tool_calls") or ():
                fold_call_delta(calls.setdefault(index, {}), entry)
    chat = kind == "chat"
    answers: list[dict[str, Any]] = []
    for index in sorted(texts):
        content, finish = "".join(texts[index]), finishes[index]
        answer: dict[str, Any] = {"index": index}
        if chat and index in calls:
            answer["message"] = {
                "role": "assistant",
                "content": content or None,
                "tool_calls": [calls[index][i] for i in sorted(calls[index])],
            }
        elif chat:
            answer["message"] = {"role": "assistant", "content": content}
        else:
            answer["text"] = content
        answer["finish_reason"] = finish
        answer["logprobs"] = joined(chat, logprobs.get(index, []))
        answers.append(answer)
    return Generation(choices=answers, usage=usage)


async def merged(streams: list[AsyncIterator[StreamDelta]]) -> AsyncIterator[StreamDelta]:
    """The deltas of several choices' streams as they come, each stream's choices given
    its position as their index. The first failure ends them all."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield delta
        return
    out: asyncio.Queue[StreamDelta | BaseException | None] = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator[StreamDelta]) -> None:
        try:
            async for delta in stream:
                for choice in delta.choices:
                    choice["index"] = index
                out.put_nowait(delta)
        except Exception as exc:
            out.put_nowait(exc)
        else:
            out.put_nowait(None)

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            item = await out.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        # Cancelled mid-stream, each choice's stream closes and frees its slot.
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def piece(
    chat: bool, text: str, finish: str | None, logprobs: dict[str, Any] | None = None
) -> dict[str, Any]:
    if chat:
        delta = {"content": text} if text or finish is None else {}
        return {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": logprobs}
    return {"index": 0, "text": text, "finish_reason": finish, "logprobs": logprobs}
