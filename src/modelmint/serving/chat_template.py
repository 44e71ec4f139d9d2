"""Render chat messages into a prompt with the model's own Jinja chat template."""

from __future__ import annotations

from typing import Any

from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from modelmint.errors import InvalidRequest

__all__ = ["ChatTemplate", "message_text"]


def message_text(message: dict[str, Any]) -> str:
    """The text of a message whose content is a string or a list of text parts."""
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise InvalidRequest(
                f"content part of type {part.get('type')!r} is not supported by this model",
                param="messages",
            )
        parts.append(str(part.get("text", "")))
    return "".join(parts)


class ChatTemplate:
    """A compiled chat template; the template text comes from the model file, so it runs
    sandboxed."""

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "") -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

        def raise_exception(message: str) -> None:
            raise InvalidRequest(f"chat template refused the messages: {message}")

        env.globals["raise_exception"] = raise_exception
        self._template = env.from_string(source)
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: list[dict[str, Any]]) -> str:
        plain = [{"role": m["role"], "content": message_text(m)} for m in messages]
        try:
            return self._template.render(
                messages=plain,
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except (TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
            # The template is the model's code running on the client's messages: whatever
            # it trips on (a sandbox limit, a bad operand) is a refusal, not a server fault.
            raise InvalidRequest(f"cannot apply the chat template: {exc}") from exc
