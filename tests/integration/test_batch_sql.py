"""storage.batch against a real PostgreSQL: values in the text forms it sends."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from modelmint.storage import Database
from modelmint.storage.batch import text_array

AWKWARD = ["org_1", 'a"b', "c\\d", "x,y", "{}", " spaced ", "NULL", "", "é"]


@pytest.mark.parametrize("values", [AWKWARD, [], ["one"]])
def test_a_text_array_reads_back_as_the_same_strings(
    _postgres_database: Database, values: list[str]
) -> None:
    with _postgres_database.engine.connect() as connection:
        back = connection.execute(text("SELECT CAST(:a AS text[])"), {"a": text_array(values)})
        assert back.scalar_one() == values
