"""SampleRecorder's thread when its database fails."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from modelmint.feedback.samples import SampleRecorder
from modelmint.storage import Database


def test_a_failing_database_is_retried_at_the_refresh_interval_not_in_a_busy_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Not migrated: every refresh and purge fails ("no such table").
    database = Database(f"sqlite:///{tmp_path / 'empty.db'}")
    recorder = SampleRecorder(database, refresh_s=0.2, purge_every_s=0.2)
    with caplog.at_level(logging.ERROR, logger="modelmint.feedback.samples"):
        recorder.start()
        time.sleep(1.0)
        recorder.close()
    failures = [r for r in caplog.records if r.message == "storing captured samples failed"]
    # About one a refresh interval (5 in the second); a busy loop logs thousands.
    assert 1 <= len(failures) <= 10
    database.dispose()
