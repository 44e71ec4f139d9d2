"""Fixtures shared by every tier: databases (SQLite and PostgreSQL, both real)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from modelmint.storage import Database, migrate
from modelmint.storage.tables import Base

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REDIS_URL = os.environ.get("MODELMINT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get(
    "MODELMINT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def _admin_connect() -> object:
    import psycopg

    url = make_url(POSTGRES_URL)
    return psycopg.connect(
        host=url.host,
        port=url.port or 5432,
        user=url.username,
        dbname=url.database,
        autocommit=True,
        connect_timeout=3,
    )


@contextmanager
def _fresh_postgres() -> Iterator[str]:
    """A new, empty PostgreSQL database, dropped afterwards.

    In CI the server is part of the platform, so its absence fails the run instead of
    skipping the tests that need it.
    """
    try:
        admin = _admin_connect()
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL is required in CI and unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = f"modelmint_test_{secrets.token_hex(4)}"
    admin.execute(f'CREATE DATABASE "{name}"')  # type: ignore[attr-defined]
    url = make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        admin.execute(  # type: ignore[attr-defined]
            f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
        )
        admin.close()  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def postgres_base_url() -> Iterator[str]:
    """One PostgreSQL database for the session's `database` fixture."""
    with _fresh_postgres() as url:
        yield url


@pytest.fixture
def fresh_postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own (for tests that start server processes)."""
    with _fresh_postgres() as url:
        yield url


@pytest.fixture(scope="session")
def _postgres_database(postgres_base_url: str) -> Iterator[Database]:
    database = Database(postgres_base_url)
    migrate(database)
    yield database
    database.dispose()


def _truncate(database: Database) -> None:
    tables = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with database.engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {tables} CASCADE"))


@pytest.fixture(params=["sqlite", "postgres"])
def database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Database]:
    """A migrated, empty database: once on SQLite, once on PostgreSQL."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "modelmint.db"
        db = Database(f"sqlite:///{path}")
        migrate(db)
        yield db
        db.dispose()
    else:
        db = request.getfixturevalue("_postgres_database")
        _truncate(db)
        yield db


@pytest.fixture
def sqlite_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Database]:
    path = tmp_path_factory.mktemp("db") / "modelmint.db"
    db = Database(f"sqlite:///{path}")
    migrate(db)
    yield db
    db.dispose()


@pytest.fixture
def redis_url() -> str:
    """The Redis server; in CI its absence fails the run instead of skipping."""
    from redis import Redis

    try:
        Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis is required in CI and unreachable: {exc}")
        pytest.skip(f"Redis unreachable: {exc}")
    return REDIS_URL


@pytest.fixture(scope="session")
def localstripe(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """One localstripe process for the session (tests make their own customers)."""
    from tests.support.localstripe import LocalStripe

    server = LocalStripe(tmp_path_factory.mktemp("localstripe"))
    try:
        yield server
    finally:
        server.stop()
