"""What a streamed answer said, put back together in the shape of a non-streamed one.

Sample capture stores answers as the ``choices`` of a full response. A stream sends
them as deltas; ``Transcript`` appends each delta's text (and folds its tool calls) into
its choice so a captured stream reads exactly like the same answer given in one piece,
and datasets built from samples need not care how the customer asked.
"""

from __future__ import annotations

from typing import Any

from modelmint.serving.tool_calls import fold_call_delta

__all__ = ["Transcript"]


class Transcript:
    def __init__(self, chat: bool) -> None:
        self._chat = chat
        self._texts: dict[int, list[str]] = {}
        self._finish: dict[int, str | None] = {}
        self._calls: dict[int, dict[int, dict[str, Any]]] = {}  # choice -> call index -> call

    def add(self, choices: list[dict[str, Any]]) -> None:
        for choice in choices:
            index = int(choice.get("index", 0))
            parts = self._texts.setdefault(index, [])
            delta = choice.get("delta") or {}
            text = delta.get("content") if self._chat else choice.get("text")
            for entry in delta.get("tool_calls") or ():
                fold_call_delta(self._calls.setdefault(index, {}), entry)
            if isinstance(text, str) and text:
                parts.append(text)
            if choice.get("finish_reason"):
                self._finish[index] = choice["finish_reason"]
            else:
                self._finish.setdefault(index, None)

    def choices(self, ending: str | None = None) -> list[dict[str, Any]]:
        """The full-response choices; ``ending`` names why a cut stream stopped."""
        out: list[dict[str, Any]] = []
        for index in sorted(self._texts):
            text = "".join(self._texts[index])
            finish = self._finish.get(index) or ending
            if self._chat:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if index in self._calls:
                    calls = self._calls[index]
                    message = {**message, "content": text or None}
                    message["tool_calls"] = [calls[i] for i in sorted(calls)]
                out.append({"index": index, "message": message, "finish_reason": finish})
            else:
                out.append({"index": index, "text": text, "finish_reason": finish})
        return out
