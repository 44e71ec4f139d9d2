"""What every command shares: settings, the database, and one way to print and fail."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from modelmint.config import Settings
from modelmint.storage import Database, migrate

__all__ = ["console", "err_console", "open_database", "session_scope", "settings"]

# Off a terminal a table is measured against no width at all: wide enough for anything.
_UNBOUNDED = 1_000_000


class CliConsole(Console):
    """A Rich console that never cuts a table short when its output is not a terminal.

    Piped to a file or to grep, Rich assumes 80 columns (or $COLUMNS) and squeezes a
    table into them, cropping cells with an ellipsis: the ids and URLs a script wants
    are lost. There a table is printed as wide as its content; everything else (rules,
    Markdown, progress) keeps the usual width.
    """

    def print(self, *objects: Any, **kwargs: Any) -> None:
        tables = [o for o in objects if isinstance(o, Table)]
        if self.is_terminal or not tables:
            super().print(*objects, **kwargs)
            return
        unbounded = self.options.update_width(_UNBOUNDED)
        needed = max(self.measure(t, options=unbounded).maximum for t in tables)
        width = self.width
        if needed <= width:
            super().print(*objects, **kwargs)
            return
        # print() never renders wider than the console, so the console widens for it.
        self.width = needed
        try:
            super().print(*objects, **kwargs)
        finally:
            self.width = width


console = CliConsole()
err_console = Console(stderr=True)


def settings() -> Settings:
    return Settings()


def open_database(config: Settings | None = None) -> Database:
    """The configured database, migrated to the newest schema."""
    database = Database.from_settings(config or settings())
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
