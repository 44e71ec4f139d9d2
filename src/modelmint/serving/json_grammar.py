"""JSON Schema to llama.cpp grammar (GBNF), for answers a local model must shape:
``response_format`` json_schema and the tool calls of ``tools``.

Only schemas the grammar can enforce are accepted: one that leans on a keyword
llama.cpp's converter skips would be followed loosely, so an answer could break it.
"""

from __future__ import annotations

import functools
from typing import Any

from modelmint.errors import InvalidRequest

__all__ = ["schema_grammar", "unenforced_keywords"]

# JSON Schema keywords llama.cpp's converter ignores: a schema using one would be
# followed loosely, so an answer could break it. Refused rather than half kept.
_UNENFORCED = frozenset(
    {
        "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf",
        "uniqueItems", "minProperties", "maxProperties", "patternProperties",
        "propertyNames", "dependentRequired", "dependentSchemas", "not", "if", "then",
        "else", "contains", "minContains", "maxContains",
    }
)  # fmt: skip
# Where a schema holds further schemas: keyword -> how (one, a list, a name->schema map).
_SUBSCHEMAS = {
    "items": "one", "additionalProperties": "one", "prefixItems": "list", "anyOf": "list",
    "oneOf": "list", "allOf": "list", "properties": "map", "$defs": "map", "definitions": "map",
}  # fmt: skip


def unenforced_keywords(schema: Any) -> set[str]:
    """The keywords the grammar cannot enforce used anywhere in ``schema``."""
    if not isinstance(schema, dict):
        return set()
    found = set(_UNENFORCED.intersection(schema))
    for keyword, shape in _SUBSCHEMAS.items():
        inner = schema.get(keyword)
        if shape == "one":
            found |= unenforced_keywords(inner)
        elif shape == "list" and isinstance(inner, list):
            for item in inner:
                found |= unenforced_keywords(item)
        elif shape == "map" and isinstance(inner, dict):
            for item in inner.values():
                found |= unenforced_keywords(item)
    return found


@functools.lru_cache(maxsize=256)
def schema_grammar(schema: str, source: str, param: str) -> str:
    """The GBNF grammar of the JSON text ``schema``, by llama.cpp's own converter; objects
    keep the property order the schema lists. A schema it cannot express is a 400 that
    names ``source`` (what the schema is) and ``param`` (the request field it came from)."""
    # Imported here: llama_cpp loads its shared library on import.
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        return str(json_schema_to_gbnf(schema))
    except Exception as exc:  # the converter raises bare errors on what it cannot express
        raise InvalidRequest(f"{source} cannot be followed: {exc}", param=param) from None
