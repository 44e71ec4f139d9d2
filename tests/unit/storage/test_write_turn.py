"""WriteTurn: writers of several processes (and threads) queue for SQLite's write lock."""

from __future__ import annotations

import fcntl
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from modelmint.storage import Database
from modelmint.storage.write_turn import WriteTurn

# How long a waiter is watched to show it does not get the turn while it is held. A
# working turn never lets it through; a broken one lets it through at once.
HELD_S = 0.3
GUARD_S = 10  # never reached when the turn works

CHILD = """
import sys
from modelmint.storage.write_turn import WriteTurn
turn = WriteTurn(sys.argv[1])
print("waiting", flush=True)
with turn():
    print("got it", flush=True)
"""


class _Lines:
    """A process's lines of output as they come, read by a thread of their own."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self._lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        assert process.stdout is not None
        stdout = process.stdout
        threading.Thread(
            target=lambda: [self._lines.put(x.strip()) for x in stdout], daemon=True
        ).start()

    def next(self, timeout: float) -> str | None:
        """The next line, or None if none comes within ``timeout``."""
        try:
            return self._lines.get(timeout=timeout)
        except queue.Empty:
            return None


def test_another_process_waits_for_the_turn_and_gets_it_once_released(tmp_path: Path) -> None:
    database = str(tmp_path / "modelmint.db")
    turn = WriteTurn(database)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with turn():
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, database], stdout=subprocess.PIPE, text=True, env=env
        )
        lines = _Lines(child)
        try:
            assert lines.next(GUARD_S) == "waiting"
            assert lines.next(HELD_S) is None  # still waiting: the turn is ours
        except BaseException:
            child.kill()
            raise
    try:
        assert lines.next(GUARD_S) == "got it"
        assert child.wait(GUARD_S) == 0
    finally:
        child.kill()
    turn.close()


def test_threads_of_one_process_take_turns(tmp_path: Path) -> None:
    turn = WriteTurn(str(tmp_path / "modelmint.db"))
    got = threading.Event()

    def second() -> None:
        with turn():
            got.set()

    with turn():
        thread = threading.Thread(target=second)
        thread.start()
        assert not got.wait(HELD_S)
    assert got.wait(GUARD_S)
    thread.join()
    turn.close()


def test_a_forked_child_opens_its_own_file(tmp_path: Path) -> None:
    """A child sharing its parent's open file would share its lock: both would write
    at once."""
    turn = WriteTurn(str(tmp_path / "modelmint.db"))
    read, write = os.pipe()
    with turn():
        pid = os.fork()
        if pid == 0:  # the child, while the parent holds the turn: can it take it?
            try:
                fcntl.flock(turn._file(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.write(write, b"took")
            except BlockingIOError:
                os.write(write, b"wait")
            finally:
                os._exit(0)
        os.waitpid(pid, 0)
    answer = os.read(read, 4)
    os.close(read)
    os.close(write)
    turn.close()
    assert answer == b"wait"


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:"])
def test_a_database_in_memory_has_no_turn_to_take(url: str) -> None:
    database = Database(url)
    with database.write_turn():
        pass
    assert database._turn is None
    database.dispose()


def test_a_sqlite_file_keeps_its_turn_beside_it(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'modelmint.db'}")
    with database.write_turn():
        assert (tmp_path / "modelmint.db.write-turn").exists()
    database.dispose()
