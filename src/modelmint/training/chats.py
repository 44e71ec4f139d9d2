"""Chat examples for fine-tuning a chat model: read and check a JSONL file of
conversations, and turn each conversation into token ids whose loss covers only what
the assistant says.

One example per line, in the OpenAI chat shape::

    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}

Encoding renders the conversation with the model's own chat template, piece by
piece: up to each assistant turn with the generation prompt (the text the gateway
sends to the model when a client asks), then that turn itself. Prompt pieces get no
loss; each assistant piece (its words and the end-of-turn marker that stops
generation) does. Tokenizing piece by piece, rather than the whole conversation at
once, cuts tokens exactly where the served model starts generating.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelmint.training.recipe import DataError

__all__ = [
    "IGNORE",
    "ROLES",
    "Chat",
    "Encoded",
    "Message",
    "Render",
    "Tokenize",
    "encode_chat",
    "parse_chat",
    "read_chats",
    "scrub_chat",
]

ROLES = ("system", "user", "assistant")
# The label of a token that carries no loss (torch's cross_entropy ignore_index default).
IGNORE = -100

# render(messages, add_generation_prompt) -> prompt text, as the chat template makes it.
Render = Callable[[list[dict[str, str]], bool], str]
# tokenize(text, add_special_tokens) -> token ids; special tokens in the text stay special.
Tokenize = Callable[[str, bool], list[int]]


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Chat:
    """One conversation and the line of the file it came from (for error messages)."""

    messages: tuple[Message, ...]
    line: int = 0

    def as_dicts(self) -> list[dict[str, str]]:
        return [{"role": m.role, "content": m.content} for m in self.messages]


def scrub_chat(chat: Chat) -> Chat:
    """``chat`` with emails, phone and card numbers and secrets replaced in every message."""
    from modelmint.training.pii import scrub

    return replace(
        chat,
        messages=tuple(replace(m, content=scrub(m.content)[0]) for m in chat.messages),
    )


def _message(raw: Any, where: str, index: int) -> Message:
    if not isinstance(raw, dict):
        raise DataError(f"{where}: message {index} is not an object")
    role = raw.get("role")
    if role not in ROLES:
        raise DataError(
            f"{where}: message {index} has role {role!r}; use one of {', '.join(ROLES)}"
        )
    content = raw.get("content")
    if not isinstance(content, str) or not content.strip():
        raise DataError(f"{where}: message {index} ({role}) has empty or non-text content")
    return Message(role, content)


def _check_turns(messages: Sequence[Message], where: str) -> None:
    """Every assistant turn needs a user turn before it: chat templates (and the gateway)
    only ever prompt the model after a user speaks."""
    if not any(m.role == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message, so nothing to learn from")
    seen_user = False
    for index, message in enumerate(messages):
        if message.role == "system" and index > 0:
            raise DataError(f"{where}: message {index} is a system message after the first")
        if message.role == "assistant" and not seen_user:
            raise DataError(f"{where}: message {index} is an assistant turn before any user turn")
        seen_user = seen_user or message.role == "user"


def parse_chat(text: str, line: int, source: str = "chats") -> Chat:
    """One JSONL line as a checked Chat; DataError naming ``source`` and ``line``."""
    where = f"{source} line {line}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from exc
    if not isinstance(record, dict) or "messages" not in record:
        raise DataError(f'{where}: expected an object with a "messages" list')
    raw = record["messages"]
    if not isinstance(raw, list) or not raw:
        raise DataError(f'{where}: "messages" must be a non-empty list')
    messages = tuple(_message(m, where, i) for i, m in enumerate(raw))
    _check_turns(messages, where)
    return Chat(messages, line)


def read_chats(path: Path) -> list[Chat]:
    """Every conversation in a JSONL file; blank lines are skipped but still counted."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DataError(f"{path} does not exist") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path} cannot be read as UTF-8 text: {exc}") from exc
    chats = [
        parse_chat(line, number, path.name)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip()
    ]
    if not chats:
        raise DataError(f"{path} holds no chat examples")
    return chats


@dataclass(frozen=True, slots=True)
class Encoded:
    """Token ids and, position by position, the id to predict there or IGNORE."""

    input_ids: list[int]
    labels: list[int]

    @property
    def targets(self) -> int:
        """How many tokens carry loss."""
        return sum(label != IGNORE for label in self.labels)


def _pieces(chat: Chat, render: Render) -> list[tuple[str, bool]]:
    """The rendered conversation cut into (text, is_assistant) pieces, in order."""
    messages = chat.as_dicts()
    pieces: list[tuple[str, bool]] = []
    done = ""
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:index], True)
        full = render(messages[: index + 1], False)
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError(
                f"line {chat.line}: the chat template does not render this conversation "
                "turn by turn (an earlier prompt is not a prefix of a later one)"
            )
        pieces += [(prompt[len(done) :], False), (full[len(prompt) :], True)]
        done = full
    return pieces


def encode_chat(chat: Chat, render: Render, tokenize: Tokenize, max_length: int) -> Encoded:
    """Token ids of ``chat`` (at most ``max_length``, cut at the end) with prompt tokens
    masked out of the loss. Messages after the last assistant turn are left out: they
    carry no loss and would only cost compute."""
    ids: list[int] = []
    labels: list[int] = []
    for text, learn in _pieces(chat, render):
        if not text:
            continue
        tokens = tokenize(text, not ids)  # special tokens (BOS) only at the very start
        ids += tokens
        labels += tokens if learn else [IGNORE] * len(tokens)
    # Position t predicts token t+1; the shift happens where the loss is computed.
    return Encoded(ids[:max_length], labels[:max_length])
