"""What every command shares: settings, the database, and one way to print and fail."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from sqlalchemy.orm import Session

from modelmint.config import Settings
from modelmint.storage import Database, migrate

__all__ = ["console", "err_console", "open_database", "session_scope", "settings"]

console = Console()
err_console = Console(stderr=True)


def settings() -> Settings:
    return Settings()


def open_database(config: Settings | None = None) -> Database:
    """The configured database, migrated to the newest schema."""
    database = (config or settings()).database()
    migrate(database)
    return database


@contextmanager
def session_scope() -> Iterator[Session]:
    database = open_database()
    try:
        with database.session() as session:
            yield session
    finally:
        database.dispose()
