"""What local engines honour of a request: ``response_format`` as a grammar, ``n`` as choices."""

from __future__ import annotations

from typing import Any

import pytest

from modelmint.errors import InvalidRequest
from modelmint.serving.llama_requests import choice_count, output_grammar
from modelmint.serving.types import SamplingParams, TextRequest


def request(response_format: Any) -> TextRequest:
    extra = {} if response_format is None else {"response_format": response_format}
    return TextRequest(kind="chat", sampling=SamplingParams(), messages=[], extra=extra)


def schema_format(schema: Any) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}


def test_free_text_has_no_grammar() -> None:
    assert output_grammar(request(None)) is None
    assert output_grammar(request({"type": "text"})) is None


def test_json_object_and_json_schema_become_grammars() -> None:
    assert "root ::=" in (output_grammar(request({"type": "json_object"})) or "")
    grammar = output_grammar(
        request(schema_format({"type": "object", "properties": {"ok": {"type": "boolean"}}}))
    )
    assert grammar is not None and '"\\"ok\\""' in grammar


def test_a_property_named_like_a_keyword_is_not_a_keyword() -> None:
    schema = {"type": "object", "properties": {"minimum": {"type": "integer"}}}
    assert output_grammar(request(schema_format(schema))) is not None


@pytest.mark.parametrize(
    ("schema", "named"),
    [
        ({"type": "integer", "maximum": 3}, "maximum"),
        ({"type": "object", "properties": {"n": {"type": "number", "minimum": 0}}}, "minimum"),
        ({"type": "array", "items": {"type": "string"}, "uniqueItems": True}, "uniqueItems"),
        ({"anyOf": [{"type": "string"}, {"not": {"type": "null"}}]}, "not"),
        ({"$defs": {"a": {"type": "integer", "multipleOf": 2}}, "$ref": "#/$defs/a"}, "multipleOf"),
    ],
)
def test_a_keyword_the_grammar_cannot_enforce_is_refused_by_name(
    schema: dict[str, Any], named: str
) -> None:
    with pytest.raises(InvalidRequest, match=named) as refused:
        output_grammar(request(schema_format(schema)))
    assert refused.value.param == "response_format"


@pytest.mark.parametrize(
    "response_format",
    ["json", {"type": "xml"}, {"type": "json_schema"}, schema_format({"$ref": "#/missing"})],
)
def test_what_cannot_be_followed_is_a_400_on_response_format(response_format: Any) -> None:
    with pytest.raises(InvalidRequest) as refused:
        output_grammar(request(response_format))
    assert refused.value.param == "response_format"


@pytest.mark.parametrize(("n", "slots"), [(0, 8), (9, 8), (True, 8), ("2", 8), (2, 1)])
def test_choices_beyond_the_slots_or_not_a_count_are_a_400_on_n(n: Any, slots: int) -> None:
    asked = TextRequest(kind="chat", sampling=SamplingParams(), extra={"n": n})
    with pytest.raises(InvalidRequest) as refused:
        choice_count(asked, slots)
    assert refused.value.param == "n"


def test_choices_within_the_slots_are_counted() -> None:
    assert choice_count(request(None), 8) == 1
    asked = TextRequest(kind="chat", sampling=SamplingParams(), extra={"n": 8})
    assert choice_count(asked, 8) == 8
