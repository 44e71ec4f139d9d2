"""storage.batch against a real PostgreSQL: values in the text forms it sends."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from modelmint.storage import Database
from modelmint.storage.batch import BET_LOST, COMMIT, Statement, bet_checked, run, text_array

AWKWARD = ["org_1", 'a"b', "c\\d", "x,y", "{}", " spaced ", "NULL", "", "é"]


@pytest.mark.parametrize("values", [AWKWARD, [], ["one"]])
def test_a_text_array_reads_back_as_the_same_strings(
    _postgres_database: Database, values: list[str]
) -> None:
    with _postgres_database.engine.connect() as connection:
        back = connection.execute(text("SELECT CAST(:a AS text[])"), {"a": text_array(values)})
        assert back.scalar_one() == values


def test_a_bet_checked_statement_commits_in_its_round_trip_or_fails_whole(
    _postgres_database: Database,
) -> None:
    """``bet_checked`` with ``COMMIT`` in the same round trip: a held bet is committed
    by it; a lost one fails with ``BET_LOST`` and leaves nothing behind."""
    table = "bet_probe"
    with _postgres_database.engine.connect() as connection:
        connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
        connection.execute(text(f"CREATE TABLE {table} (id text PRIMARY KEY)"))
        connection.commit()
        raw = connection.connection.driver_connection
        insert = (
            f"INSERT INTO {table} SELECT unnest(%s::text[]) ON CONFLICT DO NOTHING RETURNING id"
        )
        statement = bet_checked([f"inserted AS ({insert})"], "(SELECT count(*) FROM inserted) = %s")

        [rows, _] = run(raw, False, [Statement(statement, ("{a,b}", 2)), COMMIT])
        assert sorted(rows) == [("a",), ("b",)]
        assert raw.info.transaction_status == 0  # idle: committed, no round trip left

        with pytest.raises(Exception) as lost:  # "b" is stored already: 1 of 2 inserted
            run(raw, False, [Statement(statement, ("{b,c}", 2)), COMMIT])
        assert getattr(lost.value, "sqlstate", None) == BET_LOST
        raw.rollback()
        stored = connection.execute(text(f"SELECT id FROM {table} ORDER BY id")).scalars().all()
        assert stored == ["a", "b"]
        connection.execute(text(f"DROP TABLE {table}"))
        connection.commit()
