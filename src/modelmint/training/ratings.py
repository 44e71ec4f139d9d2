"""Ratings and interaction files for the recommender: reading, checking, subsetting.

A ratings file is a CSV with a header naming at least a user and an item column,
usually a rating and sometimes a timestamp (``user,item,rating[,timestamp]``);
other columns are ignored. Ids are kept as strings, so ``007`` and ``7`` are two
users. Every problem stops with a DataError naming the file, the column or the
line, because a recommender trained on a silently mangled file looks fine and
recommends nonsense.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

from modelmint.training.recipe import DataError

if TYPE_CHECKING:
    import _csv

__all__ = ["Columns", "Ratings", "read_ratings"]


@dataclass(frozen=True, slots=True)
class Columns:
    """The header names to read; ``rating=None`` reads interactions without ratings."""

    user: str = "user"
    item: str = "item"
    rating: str | None = "rating"
    timestamp: str = "timestamp"


@dataclass(frozen=True, slots=True)
class Ratings:
    """One row per (user, item) pair, in file order.

    ``ratings`` is all ones for interaction files without a rating column;
    ``duplicates`` counts the rows dropped because a later row rated the same pair.
    """

    source: str
    users: NDArray[np.str_]
    items: NDArray[np.str_]
    ratings: NDArray[np.float64]
    has_ratings: bool = True
    duplicates: int = 0

    def __len__(self) -> int:
        return len(self.users)

    def take(self, indices: NDArray[np.int64]) -> Ratings:
        return Ratings(
            self.source,
            self.users[indices],
            self.items[indices],
            self.ratings[indices],
            self.has_ratings,
            0,
        )


def read_ratings(
    path: Path,
    *,
    columns: Columns = Columns(),
    require_rating: bool = True,
    rating_scale: tuple[float, float] | None = None,
    min_rows: int = 1,
) -> Ratings:
    """Read and check a ratings CSV.

    With ``require_rating`` the rating column must exist; otherwise it is read when
    present (and checked the same way) and every row counts as one interaction.
    A pair rated twice keeps its latest row: by timestamp when the file has one,
    else the one further down the file.
    """
    name = path.name
    if not path.is_file():
        raise DataError(f"ratings file {path} does not exist")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = csv.reader(handle)
        try:
            header = _header(rows, name)
            positions = _positions(header, columns, require_rating, name)
            parsed = list(_parse(rows, positions, rating_scale, name, len(header)))
        except UnicodeDecodeError as exc:
            raise DataError(f"{name} is not UTF-8 text (byte {exc.start}): {exc.reason}") from None
        except csv.Error as exc:
            raise DataError(f"{name} line {rows.line_num} is not valid CSV: {exc}") from None
    ratings = _deduplicated(parsed, name, has_ratings=positions[2] is not None)
    if len(ratings) < max(min_rows, 1):
        repeated = f" ({ratings.duplicates} repeated pairs dropped)" if ratings.duplicates else ""
        raise DataError(
            f"{name} has {len(ratings)} rating rows{repeated}; the recommender needs at "
            f"least {max(min_rows, 1)}"
        )
    return ratings


# (line, user, item, rating, timestamp) of one checked row.
_Row = tuple[int, str, str, float, float]


def _header(rows: Iterator[list[str]], name: str) -> list[str]:
    for header in rows:
        if any(cell.strip() for cell in header):
            return [cell.strip() for cell in header]
    raise DataError(f"{name} is empty: expected a header line such as user,item,rating")


def _positions(
    header: Sequence[str], columns: Columns, require_rating: bool, name: str
) -> tuple[int, int, int | None, int | None]:
    """Where the user, item, rating and timestamp columns are in ``header``."""
    wanted = [columns.user, columns.item]
    if require_rating and columns.rating is not None:
        wanted.append(columns.rating)
    missing = [column for column in wanted if column not in header]
    if missing:
        raise DataError(
            f"{name} has no column {', '.join(repr(c) for c in missing)} "
            f"(its first line, the header, reads: {', '.join(header)}); expected "
            f"{columns.user},{columns.item},{columns.rating or 'rating'}[,{columns.timestamp}]"
        )
    rating = header.index(columns.rating) if columns.rating in header else None
    timestamp = header.index(columns.timestamp) if columns.timestamp in header else None
    return header.index(columns.user), header.index(columns.item), rating, timestamp


def _parse(
    rows: _csv.Reader,
    positions: tuple[int, int, int | None, int | None],
    rating_scale: tuple[float, float] | None,
    name: str,
    width: int,
) -> Iterator[_Row]:
    user_at, item_at, rating_at, time_at = positions
    for cells in rows:
        if not any(cell.strip() for cell in cells):
            continue  # blank lines (a trailing newline too) are not rows
        line = rows.line_num
        if len(cells) < width:
            raise DataError(f"{name} line {line} has {len(cells)} fields; the header has {width}")
        user, item = cells[user_at].strip(), cells[item_at].strip()
        if not user or not item:
            column = "user" if not user else "item"
            raise DataError(f"{name} line {line}: the {column} id is empty")
        rating = 1.0 if rating_at is None else _rating(cells[rating_at], rating_scale, name, line)
        when = float(line) if time_at is None else _timestamp(cells[time_at], name, line)
        yield line, user, item, rating, when


def _rating(text: str, scale: tuple[float, float] | None, name: str, line: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{name} line {line}: rating {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{name} line {line}: rating {text.strip()!r} is not a finite number")
    if scale is not None and not scale[0] <= value <= scale[1]:
        raise DataError(
            f"{name} line {line}: rating {value:g} is outside rating_scale "
            f"{scale[0]:g}..{scale[1]:g}"
        )
    return value


def _timestamp(text: str, name: str, line: int) -> float:
    """Seconds: a number as written (Unix time), or an ISO 8601 date converted."""
    text = text.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise DataError(
            f"{name} line {line}: timestamp {text!r} is neither a number nor an ISO 8601 date"
        ) from None


def _deduplicated(parsed: list[_Row], name: str, *, has_ratings: bool) -> Ratings:
    latest: dict[tuple[str, str], _Row] = {}
    for row in parsed:
        key = (row[1], row[2])
        kept = latest.get(key)
        # Ties in time go to the later line, like a file of appended corrections.
        if kept is None or (row[4], row[0]) >= (kept[4], kept[0]):
            latest[key] = row
    rows = sorted(latest.values())  # back into file order
    return Ratings(
        source=name,
        users=np.array([row[1] for row in rows], dtype=np.str_),
        items=np.array([row[2] for row in rows], dtype=np.str_),
        ratings=np.array([row[3] for row in rows], dtype=np.float64),
        has_ratings=has_ratings,
        duplicates=len(parsed) - len(rows),
    )
