"""Relational storage: engine and sessions, tables, migrations.

SQLite (WAL) by default, PostgreSQL in production; the same tables and the
same Alembic migrations serve both.
"""

from modelmint.storage.db import Database
from modelmint.storage.migrate import migrate

__all__ = ["Database", "migrate"]
