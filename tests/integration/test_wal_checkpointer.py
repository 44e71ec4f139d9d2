"""The background WAL checkpointer copies SQLite's log back so that usage commits
never have to (and does nothing on PostgreSQL)."""

from __future__ import annotations

import time
from pathlib import Path

from sqlalchemy import text

from modelmint.storage.db import Database
from modelmint.storage.wal import WalCheckpointer


def _write_rows(database: Database, rows: int) -> None:
    with database.engine.begin() as connection:
        connection.execute(text("CREATE TABLE IF NOT EXISTS filler (id INTEGER, body TEXT)"))
        connection.execute(
            text("INSERT INTO filler VALUES (:id, :body)"),
            [{"id": i, "body": "x" * 500} for i in range(rows)],
        )


def test_a_passive_checkpoint_copies_the_whole_log_back(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'wal.db'}")
    try:
        _write_rows(database, 2000)
        checkpointer = WalCheckpointer(database)

        busy, frames, copied = checkpointer.checkpoint()

        assert busy == 0 and frames > 100 and copied == frames
        # The next write starts the log over, far below the autocheckpoint threshold.
        _write_rows(database, 10)
        assert checkpointer.checkpoint()[1] < 50
    finally:
        database.dispose()


def test_the_thread_checkpoints_while_writes_go_on(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'wal.db'}")
    checkpointer = WalCheckpointer(database, every_s=0.05)
    checkpointer.start()
    try:
        _write_rows(database, 2000)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # a condition polled, not a fixed sleep
            last = checkpointer.last
            if last is not None and last[1] > 100 and last[2] == last[1]:
                break
            time.sleep(0.02)
        else:
            raise AssertionError(f"no complete checkpoint of the log: {checkpointer.last}")
    finally:
        checkpointer.close()
        database.dispose()


def test_postgres_has_nothing_to_checkpoint(postgres_base_url: str) -> None:
    database = Database(postgres_base_url)
    checkpointer = WalCheckpointer(database, every_s=0.01)
    try:
        checkpointer.start()
        assert checkpointer.runs == 0 and not checkpointer.running
    finally:
        checkpointer.close()
        database.dispose()
