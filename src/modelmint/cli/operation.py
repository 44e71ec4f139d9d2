"""One command, one operation: the shape the billing commands share.

A command parses its options and hands ``run_operation`` the call to make. The call
runs in one transaction (committed when it returns, rolled back if it raises), and its
result is printed as JSON with ``--json``, else shown for people by the command's
``show``. An error is not caught here: the ``ModelMintError`` an operation raises
reaches ``cli.main``, which prints it on one line and exits with its code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import orjson
import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.orm import Session

from modelmint.cli.context import console, session_scope

__all__ = ["in_transaction", "run_operation", "say", "show_result", "table_of"]

Result = TypeVar("Result")
Row = Mapping[str, Any]


def _emit_json(data: Any) -> None:
    typer.echo(orjson.dumps(data).decode())


def say(text: str) -> None:
    # Codes and ids are the user's text: never read them as Rich markup.
    console.print(text, markup=False, highlight=False)


def _add_row(table: Table, *cells: object) -> None:
    # Plain Text cells: a reference or code such as "pay[/]1" is data, not Rich markup.
    table.add_row(*(Text("-" if cell is None else str(cell)) for cell in cells))


def table_of(
    headers: Sequence[str], cells: Callable[[Row], Iterable[object]]
) -> Callable[[Iterable[Row]], None]:
    """A ``show`` that prints rows as a table: ``headers``, then ``cells(row)`` per row
    (None shown as "-")."""

    def show(rows: Iterable[Row]) -> None:
        table = Table(*headers)
        for row in rows:
            _add_row(table, *cells(row))
        console.print(table)

    return show


def in_transaction(operation: Callable[[Session], Result]) -> Result:
    """``operation(session)`` in one transaction of the configured database."""
    with session_scope() as session:
        return operation(session)


def show_result(result: Result, as_json: bool, show: Callable[[Result], None]) -> None:
    """Prints ``result`` as JSON if ``as_json``, else with ``show``."""
    if as_json:
        _emit_json(result)
    else:
        show(result)


def run_operation(
    operation: Callable[[Session], Result], as_json: bool, show: Callable[[Result], None]
) -> None:
    """Runs ``operation`` in one transaction, then prints its result: as JSON if
    ``as_json``, else with ``show``."""
    show_result(in_transaction(operation), as_json, show)
