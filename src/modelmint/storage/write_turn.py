"""Turns at SQLite's one write lock, for writers in several processes.

SQLite lets one connection write at a time. A writer that finds the lock taken does
not queue for it: its busy handler sleeps and tries again, sleeping longer each time
(1, 2, 5, 10 ... 100 ms). With two gateway workers each committing a batch every
millisecond or so, the loser of a race sleeps through dozens of the winner's
commits, and its requests wait with it (hundreds of ms at p99, and the throughput of
whoever happens to win).

A ``WriteTurn`` queues instead: the hot writers of every process (the metering
writer) take an ``flock`` on a file beside the database before they begin, and the
kernel wakes the next one the moment the holder lets go. Threads of one process
queue on a lock of their own first, since an ``flock`` belongs to the open file, not
the thread. Writers that do not take a turn are still safe: SQLite's own lock
decides, and they wait in its busy handler as before.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["WriteTurn"]


class WriteTurn:
    """One process's place in the queue for the SQLite database at ``database``."""

    def __init__(self, database: str) -> None:
        self.path = f"{database}.write-turn"
        self._threads = threading.Lock()
        self._fd: int | None = None
        self._pid = 0

    @contextmanager
    def __call__(self) -> Iterator[None]:
        """Hold the turn for the block: wait until no other writer holds it."""
        with self._threads:
            fd = self._file()
            fcntl.flock(fd, fcntl.LOCK_EX)  # releases the GIL while it waits
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _file(self) -> int:
        # A forked child shares its parent's open file, and with it the lock: it opens
        # its own.
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None
