"""The one reading of wall-clock time, timezone-aware UTC, so every module agrees on "now"."""

from __future__ import annotations

from datetime import UTC, datetime

__all__ = ["utcnow"]


def utcnow() -> datetime:
    return datetime.now(UTC)
