"""Apply Alembic migrations programmatically, so `modelmint up` and tests share one path."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import text

from modelmint.storage.db import Database

__all__ = ["alembic_config", "migrate"]

MIGRATIONS = Path(__file__).parent / "migrations"
# Any constant works: it only has to be the same in every process of a cluster.
_PG_LOCK_KEY = 0x6D6D6967


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(database: Database) -> None:
    """Bring the schema to the newest revision; safe when several processes start at once."""
    with database.connect() as connection, connection.begin():
        if not database.is_sqlite:
            # Serialise concurrent starts of gateway replicas on one PostgreSQL.
            connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
        config = alembic_config(database.url.render_as_string(hide_password=False))
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
