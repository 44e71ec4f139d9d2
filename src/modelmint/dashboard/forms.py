"""HTML form bodies (``application/x-www-form-urlencoded``) read without extra packages.

Starlette's form parser needs ``python-multipart``; dashboard forms are small
URL-encoded bodies, which the standard library decodes. A field sent twice keeps
its last value, as a browser never sends a single-valued field twice.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from urllib.parse import parse_qsl

from modelmint.errors import InvalidRequest, PayloadTooLarge

__all__ = ["FORM_CONTENT_TYPE", "MAX_FORM_BYTES", "Form", "parse_form"]

FORM_CONTENT_TYPE = "application/x-www-form-urlencoded"
# The largest form is a pasted price book (a few KB); a megabyte leaves ample room.
MAX_FORM_BYTES = 1024 * 1024
_MAX_FIELDS = 200


class Form(Mapping[str, str]):
    """The decoded fields of one form post."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        self._fields = dict(fields)

    def __getitem__(self, name: str) -> str:
        return self._fields[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def text(self, name: str, default: str = "") -> str:
        """The field with surrounding whitespace removed, or ``default`` when absent."""
        return self._fields.get(name, default).strip()

    def optional(self, name: str) -> str | None:
        """The stripped field, or None when it is absent or blank."""
        return self.text(name) or None

    def integer(self, name: str, *, minimum: int = 1) -> int | None:
        """A whole number field (blank is None); anything else is an ``InvalidRequest``."""
        value = self.optional(name)
        if value is None:
            return None
        if not value.isdigit() or int(value) < minimum:
            raise InvalidRequest(f"{name} must be a whole number of at least {minimum}", param=name)
        return int(value)


def parse_form(content_type: str | None, body: bytes) -> Form:
    """The fields of a URL-encoded body; other encodings are refused with a clear error."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type != FORM_CONTENT_TYPE:
        raise InvalidRequest(f"forms must be sent as {FORM_CONTENT_TYPE}", param="content-type")
    if len(body) > MAX_FORM_BYTES:
        raise PayloadTooLarge(f"form larger than {MAX_FORM_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest("form body is not UTF-8") from None
    try:
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=_MAX_FIELDS)
    except ValueError:
        raise InvalidRequest(f"a form has at most {_MAX_FIELDS} fields") from None
    return Form(dict(pairs))
