"""SQLite WAL checkpoints off the request path.

In WAL mode SQLite copies the log back into the database file (a checkpoint, with an
fsync) inside whichever commit finds the log past ``wal_autocheckpoint`` pages (1000).
On the gateway that commit is the usage writer's, and every request waiting for its
batch waits for the checkpoint too: tens to hundreds of milliseconds on a slow disk,
the stalls a soak run shows as latency spikes. ``WalCheckpointer`` runs a passive
checkpoint on its own thread and connection every ``every_s`` seconds, so the log is
copied back before it reaches the threshold and the writer's commits stay short. A
passive checkpoint never waits for the writer or blocks it; what it cannot copy yet
is copied by the next one. Other databases have no such step: the class is a no-op
for them.
"""

from __future__ import annotations

import logging
import threading

from sqlalchemy import text

from modelmint.storage.db import Database

__all__ = ["WalCheckpointer"]

log = logging.getLogger(__name__)


class WalCheckpointer:
    def __init__(self, database: Database, *, every_s: float = 0.5) -> None:
        self._db = database
        self._every_s = every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # (busy, log frames, frames copied) of the last checkpoint, for tests and logs.
        self.last: tuple[int, int, int] | None = None
        self.runs = 0

    @property
    def running(self) -> bool:
        return self._thread is not None

    def start(self) -> None:
        if not self._db.is_sqlite or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def checkpoint(self) -> tuple[int, int, int]:
        """One passive checkpoint: (1 if it could not finish, frames in the log, copied)."""
        with self._db.engine.connect() as connection:
            row = connection.execute(text("PRAGMA wal_checkpoint(PASSIVE)")).one()
        self.runs += 1
        self.last = (int(row[0]), int(row[1]), int(row[2]))
        return self.last

    def _run(self) -> None:
        while not self._stop.wait(self._every_s):
            try:
                self.checkpoint()
            except Exception as exc:  # a locked or missing file: the next round retries
                log.warning("background checkpoint failed: %s", exc)
