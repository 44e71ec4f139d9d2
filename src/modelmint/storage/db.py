"""Engine and session factory for SQLite or PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from modelmint.errors import InvalidRequest, ServiceUnavailable
from modelmint.storage.write_turn import WriteTurn

if TYPE_CHECKING:
    from modelmint.config import Settings

__all__ = ["Database", "DatabaseUnavailable"]

_SUPPORTED = "sqlite:///PATH or postgresql+psycopg://USER:PASSWORD@HOST:PORT/NAME"


class DatabaseUnavailable(ServiceUnavailable):
    """The database did not let us in: down, unreachable, unknown, or refusing the login."""

    code = "database_unavailable"
    # Like an unreachable payment provider: a service ModelMint depends on, not the input.
    exit_code = 6


SYNCHRONOUS = ("FULL", "NORMAL")


def _sqlite_pragmas(synchronous: str) -> Any:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the single writer. FULL syncs every commit to disk,
        # so it survives a power cut; NORMAL survives the process being killed (the WAL is
        # in the OS's hands) but may lose the last commits on a power cut, for less latency.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.close()

    return apply


class Database:
    """One engine and its session factory, for one database URL."""

    def __init__(self, url: str, *, echo: bool = False, sqlite_synchronous: str = "FULL") -> None:
        if sqlite_synchronous not in SYNCHRONOUS:
            raise ValueError(f"sqlite_synchronous must be one of {SYNCHRONOUS}")
        self.url = _supported_url(url)
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        self._turn: WriteTurn | None = None
        if self.is_sqlite:
            database = self.url.database
            if database and database != ":memory:":
                self._turn = WriteTurn(database)
                try:
                    Path(database).parent.mkdir(parents=True, exist_ok=True)
                except OSError as exc:
                    raise DatabaseUnavailable(
                        f"cannot create the folder of the database {self.shown_url}: "
                        f"{exc.strerror or exc}"
                    ) from None
            kwargs["connect_args"] = {"check_same_thread": False}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        try:
            self.engine: Engine = create_engine(self.url, **kwargs)
        except (NoSuchModuleError, ImportError) as exc:
            raise InvalidRequest(
                f"the database driver of {self.shown_url} is not installed ({exc}); "
                f"use {_SUPPORTED}",
                param="database_url",
            ) from None
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas(sqlite_synchronous))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        """The database ``settings`` name (not yet migrated)."""
        return cls(settings.resolved_database_url, sqlite_synchronous=settings.sqlite_synchronous)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def shown_url(self) -> str:
        """The URL as messages and logs may show it: without its password."""
        return self.url.render_as_string(hide_password=True)

    def connect(self) -> Connection:
        """A connection, or ``DatabaseUnavailable`` saying in one line why there is none."""
        try:
            return self.engine.connect()
        except DBAPIError as exc:
            lines = str(exc.orig).strip().splitlines()
            reason = lines[0] if lines else type(exc.orig).__name__
            raise DatabaseUnavailable(
                f"cannot connect to the database {self.shown_url}: {reason}"
            ) from None

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work: commits when the block ends, rolls back on any error."""
        with self._sessions() as session, session.begin():
            yield session

    def write_turn(self) -> AbstractContextManager[None]:
        """Around a hot write transaction: on a SQLite file, wait for this writer's turn
        among every process's (``storage.write_turn``); elsewhere nothing."""
        return self._turn() if self._turn is not None else nullcontext()

    def dispose(self) -> None:
        self.engine.dispose()
        if self._turn is not None:
            self._turn.close()


def _supported_url(url: str) -> URL:
    """``url`` parsed, if it names a database ModelMint runs on (its migrations and SQL
    are written for SQLite and PostgreSQL only)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # Not echoed: a malformed URL may still hold a password.
        raise InvalidRequest(
            f"the database URL is malformed; use {_SUPPORTED}", param="database_url"
        ) from None
    backend = parsed.get_backend_name()
    if backend in ("postgresql", "postgres") and "+" not in parsed.drivername:
        # A bare postgresql:// means psycopg2 to SQLAlchemy; psycopg 3 is what we install.
        return parsed.set(drivername="postgresql+psycopg")
    if backend not in ("sqlite", "postgresql"):
        shown = parsed.render_as_string(hide_password=True)
        raise InvalidRequest(
            f"unsupported database URL {shown!r}: ModelMint runs on SQLite or PostgreSQL; "
            f"use {_SUPPORTED}",
            param="database_url",
        )
    return parsed
