"""Identifiers for stored things: a kind prefix and an unguessable random part."""

from __future__ import annotations

import secrets

__all__ = ["new_id"]


def new_id(prefix: str) -> str:
    """A sortable-enough, unguessable id such as ``org_3f9a...``; the prefix names the kind."""
    return f"{prefix}_{secrets.token_hex(12)}"
