"""Tools (``tools``, ``tool_choice``) on a local model that has no tool-call format of its own.

The way llama-server's "generic" format does it: the tools are described in a system
message, a grammar built from their parameter schemas holds the answer to one JSON
object, and that object is read back into OpenAI's shape::

    {"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    {"response": "It is sunny in Paris."}

``tool_choice`` decides which of the two the grammar allows: ``"auto"`` (the default
with tools) either; ``"required"`` one or more calls, exactly one with
``parallel_tool_calls: false``; ``{"type": "function", "function": {"name": X}}``
exactly one call of X. ``"none"`` offers no tool: the tools are not described and the
answer is free text, so the model cannot call one, as with OpenAI.

Earlier turns come back as text any chat template takes: an assistant message's
``tool_calls`` as the same JSON object the model answers with, and the ``role: "tool"``
results that follow it as one user message of ``{"tool_response": ...}`` objects (user,
not tool: many templates allow only user and assistant turns).
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from modelmint.errors import InvalidRequest
from modelmint.ids import new_id
from modelmint.serving.chat_template import message_text
from modelmint.serving.json_grammar import schema_grammar, unenforced_keywords
from modelmint.serving.types import TextRequest

__all__ = [
    "Tool",
    "ToolUse",
    "answer_schema",
    "conversation",
    "fold_call_delta",
    "openai_tool_call",
    "read_answer",
    "tool_grammar",
    "tool_use",
]

# OpenAI's rule for function names.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
# The arguments of a function that declares no parameters: an object, as OpenAI sends.
_NO_PARAMETERS: dict[str, Any] = {"type": "object", "properties": {}}


@dataclass(frozen=True, slots=True)
class Tool:
    """One function the model may call."""

    name: str
    description: str
    parameters: dict[str, Any]  # as the client sent it: shown to the model
    # The parameters schema with its ``$defs`` moved out (to the answer schema's root,
    # under names of this tool) and its references pointed there.
    arguments: dict[str, Any]
    definitions: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolUse:
    """How a request's answer must use its tools."""

    tools: tuple[Tool, ...]  # the ones the model may call
    # "auto": a call or a text response; "required": calls only (a named choice too).
    mode: Literal["auto", "required"]
    parallel: bool  # more than one call allowed in one answer
    named: bool = False  # tool_choice named the one tool in ``tools``


def tool_use(request: TextRequest) -> ToolUse | None:
    """What ``tools``, ``tool_choice`` and ``parallel_tool_calls`` ask of the answer, None
    when it is free text; the 400 naming the parameter that cannot be honoured."""
    extra = request.extra
    given = extra.get("tools")
    choice = extra.get("tool_choice")
    parallel = extra.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidRequest(
            "parallel_tool_calls must be true or false", param="parallel_tool_calls"
        )
    if given is not None and request.kind != "chat":
        raise InvalidRequest("tools are for chat completions", param="tools")
    if given is None:
        if choice not in (None, "none"):
            raise InvalidRequest("tool_choice needs tools to choose from", param="tool_choice")
        return None
    tools = _tools(given)
    if choice is None or choice == "auto":
        use = ToolUse(tools, "auto", parallel is not False)
    elif choice == "none":
        return None
    elif choice == "required":
        use = ToolUse(tools, "required", parallel is not False)
    else:
        use = ToolUse((_named(choice, tools),), "required", parallel=False, named=True)
    if extra.get("response_format") not in (None, {"type": "text"}):
        raise InvalidRequest(
            "this model cannot follow response_format and call tools in one answer; "
            "send one of the two (or tool_choice: none)",
            param="response_format",
        )
    if extra.get("logprobs"):
        raise InvalidRequest(
            "this model gives no logprobs for an answer that may call tools", param="logprobs"
        )
    return use


def _tools(given: Any) -> tuple[Tool, ...]:
    if not isinstance(given, list) or not given:
        raise InvalidRequest("tools must be a non-empty list of tools", param="tools")
    tools: dict[str, Tool] = {}
    for index, item in enumerate(given):
        where = f"tools[{index}]"
        kind = item.get("type") if isinstance(item, dict) else None
        if kind != "function":
            raise InvalidRequest(
                f"{where} has type {kind!r}; this model calls tools of type 'function' only",
                param="tools",
            )
        tool = _tool(item.get("function"), where)
        if tool.name in tools:
            raise InvalidRequest(f"{where}: two tools are named {tool.name!r}", param="tools")
        tools[tool.name] = tool
    return tuple(tools.values())


def _tool(function: Any, where: str) -> Tool:
    if not isinstance(function, dict):
        raise InvalidRequest(f"{where}.function must be an object", param="tools")
    name = function.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidRequest(
            f"{where}.function.name must be 1-64 letters, digits, '_' or '-'", param="tools"
        )
    description = function.get("description", "")
    if not isinstance(description, str):
        raise InvalidRequest(f"{where}.function.description must be a string", param="tools")
    parameters = function.get("parameters", _NO_PARAMETERS)
    if not isinstance(parameters, dict):
        raise InvalidRequest(
            f"{where}.function.parameters must be a JSON Schema object", param="tools"
        )
    unenforced = sorted(unenforced_keywords(parameters))
    if unenforced:
        raise InvalidRequest(
            f"{where}.function.parameters uses {', '.join(unenforced)}, which a local "
            "model's grammar cannot enforce; leave it out or check the arguments yourself",
            param="tools",
        )
    prefix = f"{name}--"
    definitions = {
        prefix + key: _pointed(value, prefix, where)
        for section in ("$defs", "definitions")
        for key, value in (parameters.get(section) or {}).items()
    }
    arguments = _pointed(
        {k: v for k, v in parameters.items() if k not in ("$defs", "definitions")}, prefix, where
    )
    return Tool(name, description, parameters, arguments, definitions)


def _pointed(schema: Any, prefix: str, where: str) -> Any:
    """``schema`` with its ``$ref``s into its own definitions renamed with ``prefix``:
    the tools' definitions share the root of one answer schema."""
    if isinstance(schema, list):
        return [_pointed(item, prefix, where) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _pointed(value, prefix, where) for key, value in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        for section in ("#/$defs/", "#/definitions/"):
            if ref.startswith(section):
                out["$ref"] = "#/$defs/" + prefix + ref.removeprefix(section)
                break
        else:
            raise InvalidRequest(
                f"{where}.function.parameters refers to {ref!r}; a local model follows "
                "references into the schema's own $defs only",
                param="tools",
            )
    return out


def _named(choice: Any, tools: tuple[Tool, ...]) -> Tool:
    function = choice.get("function") if isinstance(choice, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or name is None:
        raise InvalidRequest(
            'tool_choice must be "none", "auto", "required" or '
            '{"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    for tool in tools:
        if tool.name == name:
            return tool
    raise InvalidRequest(f"tool_choice names {name!r}, which is not in tools", param="tool_choice")


# -- the answer's grammar ------------------------------------------------------------


def answer_schema(use: ToolUse) -> dict[str, Any]:
    """The JSON Schema every answer follows: tool calls (and a text response for "auto").

    ``name`` comes before ``arguments``, so the model picks the function before it
    writes arguments, which the grammar then holds to that function's schema."""
    calls = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, "arguments": tool.arguments},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for tool in use.tools
    ]
    call_list: dict[str, Any] = {
        "type": "array",
        "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
        "minItems": 1,
    }
    if not use.parallel:
        call_list["maxItems"] = 1
    schema = _one_key("tool_calls", call_list)
    if use.mode == "auto":
        schema = {"anyOf": [schema, _one_key("response", {"type": "string"})]}
    definitions = {k: v for tool in use.tools for k, v in tool.definitions.items()}
    if definitions:
        schema["$defs"] = definitions
    return schema


def _one_key(key: str, value: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {key: value},
        "required": [key],
        "additionalProperties": False,
    }


def tool_grammar(use: ToolUse) -> str:
    """The GBNF grammar of ``answer_schema``. Not key-sorted: the order is the point."""
    return schema_grammar(orjson.dumps(answer_schema(use)).decode(), "tools", "tools")


# -- the prompt ----------------------------------------------------------------------


def conversation(messages: list[dict[str, Any]], use: ToolUse | None) -> list[dict[str, Any]]:
    """The messages as turns a plain chat template renders: the tools described in the
    system message, earlier tool calls and their results written as JSON text."""
    turns: list[dict[str, Any]] = []
    results: list[str] = []  # tool results waiting to become one user turn
    names: dict[str, str] = {}  # tool call id -> the function it called
    for index, message in enumerate(messages):
        if message.get("role") == "tool":
            results.append(_result_text(message, index, names))
            continue
        if results:
            turns.append({"role": "user", "content": "\n".join(results)})
            results = []
        if message.get("role") == "assistant" and message.get("tool_calls"):
            turns.append({"role": "assistant", "content": _calls_text(message, index, names)})
        else:
            turns.append(message)
    if results:
        turns.append({"role": "user", "content": "\n".join(results)})
    if use is None:
        return turns
    guide = _instructions(use)
    if turns and turns[0].get("role") == "system":
        turns[0] = {"role": "system", "content": f"{message_text(turns[0])}\n\n{guide}"}
    else:
        turns.insert(0, {"role": "system", "content": guide})
    return turns


def _instructions(use: ToolUse) -> str:
    listed = "\n".join(
        _json({"name": t.name, "description": t.description, "parameters": t.parameters})
        for t in use.tools
    )
    lines = [
        "You can call the following tools. Each is a JSON object with the tool's name, "
        "what it does, and the JSON Schema of its arguments:",
        listed,
        "",
    ]
    call = '{"tool_calls": [{"name": <tool name>, "arguments": <arguments object>}]}'
    if use.named:
        name = use.tools[0].name
        lines.append(
            f'Answer by calling {name}, as one JSON object: {{"tool_calls": [{{"name": '
            f'"{name}", "arguments": <arguments object>}}]}}'
        )
    elif use.mode == "required":
        many = "one or more tools" if use.parallel else "exactly one tool"
        lines.append(f"Answer by calling {many}, as one JSON object: {call}")
    else:
        lines.append(
            f"Answer with one JSON object: {call} to call tools, or "
            '{"response": <your answer as text>} to answer without a tool.'
        )
    return "\n".join(lines)


def _calls_text(message: dict[str, Any], index: int, names: dict[str, str]) -> str:
    """An assistant's earlier tool calls as the JSON the model answers with."""
    calls = message["tool_calls"]
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise InvalidRequest(f"{where} must be a list", param="messages")
    written = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        name = function.get("name") if isinstance(function, dict) else None
        if not isinstance(name, str) or not isinstance(function, dict):
            raise InvalidRequest(f"{where} holds a call without function.name", param="messages")
        arguments = function.get("arguments", "{}")
        with contextlib.suppress(orjson.JSONDecodeError):  # else shown as the string it is
            arguments = orjson.loads(arguments) if isinstance(arguments, str) else arguments
        if isinstance(call.get("id"), str):
            names[call["id"]] = name
        written.append({"name": name, "arguments": arguments})
    text = _json({"tool_calls": written})
    said = message_text(message)
    return f"{said}\n{text}" if said else text


def _result_text(message: dict[str, Any], index: int, names: dict[str, str]) -> str:
    call_id = message.get("tool_call_id")
    if not isinstance(call_id, str):
        raise InvalidRequest(
            f"messages[{index}] has role 'tool' but no tool_call_id", param="messages"
        )
    response: dict[str, Any] = {"tool_call_id": call_id}
    if call_id in names:
        response["name"] = names[call_id]
    response["content"] = message_text(message)
    return _json({"tool_response": response})


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


# -- reading the answer --------------------------------------------------------------


def read_answer(text: str) -> tuple[str | None, list[dict[str, Any]]] | None:
    """``(content, tool_calls)`` in OpenAI's shape from a whole answer, or None when the
    text is not a whole answer (cut short by max_tokens or a stop sequence)."""
    try:
        answer = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(answer, dict):
        return None
    if isinstance(answer.get("response"), str):
        return answer["response"], []
    calls = answer.get("tool_calls")
    if not isinstance(calls, list) or not calls:
        return None
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            return None
        out.append(openai_tool_call(call["name"], call.get("arguments", {})))
    return None, out


def openai_tool_call(name: str, arguments: Any) -> dict[str, Any]:
    """One entry of ``message.tool_calls``; the arguments as a JSON string, as OpenAI's."""
    return {
        "id": new_id("call"),
        "type": "function",
        "function": {"name": name, "arguments": _json(arguments)},
    }


def fold_call_delta(calls: dict[int, dict[str, Any]], entry: dict[str, Any]) -> None:
    """Fold one streamed ``tool_calls`` entry into the call at its index."""
    call = calls.setdefault(
        entry["index"], {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
    )
    call["id"] = entry.get("id") or call["id"]
    function = entry.get("function") or {}
    call["function"]["name"] += function.get("name") or ""
    call["function"]["arguments"] += function.get("arguments") or ""
