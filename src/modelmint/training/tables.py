"""Read a CSV into a checked table for classification, and fit its preprocessing.

Loading refuses what cannot be trained on with a DataError that names the file,
the column and, for a bad value, the line: no target column, an empty file, a
non-numeric value in a numeric feature, a target with one class. What can be
repaired is repaired and counted: exact duplicate rows are dropped, missing
values are kept as missing (NaN / None) and imputed later from the training
split only (``fit_preprocessing``), so the test split never leaks into the
statistics the model is trained with.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from numpy.typing import NDArray

from modelmint.serving.predictors.tabular import TabularPreprocessing
from modelmint.training.recipe import DataError

__all__ = [
    "MISSING_TOKENS",
    "Table",
    "concat_tables",
    "fit_preprocessing",
    "read_table",
    "sort_labels",
]

# Cell spellings that mean "no value" in CSVs exported by spreadsheets, R and pandas.
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


@dataclass(frozen=True, slots=True)
class Table:
    """Rows of a classification table; ``y`` indexes ``labels``.

    ``numeric`` holds NaN and ``categorical`` holds None where a value is missing.
    ``groups`` (one value per row, or None) is kept apart from the features: it
    only slices the metrics, so a model cannot learn from it.
    """

    source: str
    target: str
    feature_order: tuple[str, ...]
    numeric_columns: tuple[str, ...]
    categorical_columns: tuple[str, ...]
    numeric: NDArray[np.float64]
    categorical: NDArray[np.object_]
    y: NDArray[np.int64]
    labels: tuple[str, ...]
    group_column: str | None = None
    groups: NDArray[np.object_] | None = None
    duplicates_dropped: int = 0
    missing: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.y)

    def take(self, indices: NDArray[np.int64]) -> Table:
        """The rows at ``indices``, in that order (labels stay those of the whole file)."""
        return replace(
            self,
            numeric=self.numeric[indices],
            categorical=self.categorical[indices],
            y=self.y[indices],
            groups=None if self.groups is None else self.groups[indices],
        )

    def with_permuted(self, column: str, order: NDArray[np.int64]) -> Table:
        """A copy where ``column``'s values are reordered by ``order`` (for permutation
        importance); every other column stays in place."""
        if column in self.numeric_columns:
            numeric = self.numeric.copy()
            j = self.numeric_columns.index(column)
            numeric[:, j] = numeric[order, j]
            return replace(self, numeric=numeric)
        categorical = self.categorical.copy()
        j = self.categorical_columns.index(column)
        categorical[:, j] = categorical[order, j]
        return replace(self, categorical=categorical)

    def inputs(self) -> list[dict[str, Any]]:
        """Each row's features as a client sends them to the served model (a missing
        value as null)."""
        rows = []
        for numbers, categories in zip(
            self.numeric.tolist(), self.categorical.tolist(), strict=True
        ):
            values: dict[str, Any] = {
                name: None if math.isnan(value) else value
                for name, value in zip(self.numeric_columns, numbers, strict=True)
            }
            values.update(zip(self.categorical_columns, categories, strict=True))
            rows.append({name: values[name] for name in self.feature_order})
        return rows

    def summary(self) -> dict[str, Any]:
        """What loading found, for reports and model cards (JSON-serialisable)."""
        counts = np.bincount(self.y, minlength=len(self.labels))
        return {
            "source": self.source,
            "rows": len(self),
            "target": self.target,
            "features": list(self.feature_order),
            "categorical": list(self.categorical_columns),
            "group": self.group_column,
            "class_counts": {label: int(n) for label, n in zip(self.labels, counts, strict=True)},
            "duplicates_dropped": self.duplicates_dropped,
            "missing_values": dict(self.missing),
        }


def concat_tables(first: Table, more: Table) -> Table:
    """``more``'s rows after ``first``'s, in ``first``'s column order and class indices.

    The two must have the same feature columns (in any order, each numeric or categorical
    in both) and ``more`` no class that ``first`` lacks: the held-out parts of ``first``
    were cut with ``first``'s classes, and a model cannot be tested on a class it never
    had a test row of."""
    if set(more.feature_order) != set(first.feature_order):
        missing = [c for c in first.feature_order if c not in more.feature_order]
        extra = [c for c in more.feature_order if c not in first.feature_order]
        raise DataError(
            f"{more.source}: its feature columns differ from {first.source}'s "
            f"(missing: {', '.join(missing) or '-'}; extra: {', '.join(extra) or '-'})"
        )
    if set(more.categorical_columns) != set(first.categorical_columns):
        raise DataError(
            f"{more.source}: categorical columns {', '.join(more.categorical_columns) or '-'} "
            f"differ from {first.source}'s ({', '.join(first.categorical_columns) or '-'})"
        )
    unknown = sorted(set(more.labels) - set(first.labels))
    if unknown:
        raise DataError(
            f"{more.source}: classes {', '.join(unknown)} are not among {first.source}'s "
            f"({', '.join(first.labels)})"
        )
    if (first.groups is None) != (more.groups is None):
        raise DataError(f"{more.source}: give both sources the group column or neither")
    numeric = more.numeric[:, [more.numeric_columns.index(c) for c in first.numeric_columns]]
    categorical = more.categorical[
        :, [more.categorical_columns.index(c) for c in first.categorical_columns]
    ]
    index = {label: i for i, label in enumerate(first.labels)}
    y = np.asarray([index[more.labels[v]] for v in more.y.tolist()], dtype=np.int64)
    groups = None
    if first.groups is not None and more.groups is not None:
        groups = np.concatenate([first.groups, more.groups])
    return replace(
        first,
        numeric=np.concatenate([first.numeric, numeric]),
        categorical=np.concatenate([first.categorical, categorical]),
        y=np.concatenate([first.y, y]),
        groups=groups,
    )


def sort_labels(values: set[str]) -> tuple[str, ...]:
    """Class names in a stable order: numerically when they are all numbers
    ("2" before "10"), else alphabetically."""
    try:
        return tuple(sorted(values, key=float))
    except ValueError:
        return tuple(sorted(values))


def _is_missing(cell: str) -> bool:
    return cell.strip().lower() in MISSING_TOKENS


@dataclass(frozen=True, slots=True)
class _Raw:
    header: tuple[str, ...]
    rows: list[tuple[str, ...]]
    lines: list[int]  # the file line each row started on, for error messages
    duplicates: int


def _read_rows(path: Path) -> _Raw:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return _parse(path, handle)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc.reason} at byte {exc.start}") from exc


def _parse(path: Path, handle: TextIO) -> _Raw:
    reader = csv.reader(handle)
    line = 1
    try:
        header_row = next(reader, None)
        while header_row is not None and not any(cell.strip() for cell in header_row):
            header_row = next(reader, None)
        if header_row is None:
            raise DataError(f"{path} is empty: expected a header row and data rows")
        header = tuple(cell.strip() for cell in header_row)
        _check_header(path, header)
        rows: list[tuple[str, ...]] = []
        lines: list[int] = []
        seen: set[tuple[str, ...]] = set()
        duplicates = 0
        start = reader.line_num + 1
        for row in reader:
            line = start
            start = reader.line_num + 1
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != len(header):
                raise DataError(
                    f"{path}, line {line}: {len(row)} fields where the header has {len(header)}"
                )
            key = tuple(row)
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            rows.append(key)
            lines.append(line)
    except csv.Error as exc:
        raise DataError(f"{path}, line {line}: unreadable CSV ({exc})") from exc
    if not rows:
        raise DataError(f"{path} has a header but no data rows")
    return _Raw(header, rows, lines, duplicates)


def _check_header(path: Path, header: tuple[str, ...]) -> None:
    if "" in header:
        raise DataError(f"{path}: column {header.index('') + 1} of the header has no name")
    repeated = sorted(name for name, n in Counter(header).items() if n > 1)
    if repeated:
        raise DataError(f"{path}: column names appear more than once: {', '.join(repeated)}")


def _require(path: Path, header: tuple[str, ...], names: Sequence[str], role: str) -> None:
    absent = [name for name in names if name not in header]
    if absent:
        raise DataError(
            f"{path} has no {role} column {', '.join(repr(n) for n in absent)}; "
            f"columns found: {', '.join(header)}"
        )


def _numeric_column(raw: _Raw, path: Path, name: str) -> tuple[NDArray[np.float64], int]:
    j = raw.header.index(name)
    values = np.empty(len(raw.rows))
    missing = 0
    for i, row in enumerate(raw.rows):
        cell = row[j]
        if _is_missing(cell):
            values[i] = math.nan
            missing += 1
            continue
        try:
            value = float(cell)
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise DataError(
                f"{path}, line {raw.lines[i]}, column {name!r}: {cell!r} is not a number; "
                "if the column holds categories, declare it categorical"
            )
        values[i] = value
    return values, missing


def _categorical_column(raw: _Raw, name: str) -> tuple[list[str | None], int]:
    j = raw.header.index(name)
    values: list[str | None] = [None if _is_missing(r[j]) else r[j].strip() for r in raw.rows]
    return values, sum(v is None for v in values)


def _target(
    raw: _Raw, path: Path, target: str, min_classes: int
) -> tuple[NDArray[np.int64], tuple[str, ...]]:
    j = raw.header.index(target)
    names: list[str] = []
    for i, row in enumerate(raw.rows):
        if _is_missing(row[j]):
            raise DataError(f"{path}, line {raw.lines[i]}: target {target!r} has no value")
        names.append(row[j].strip())
    labels = sort_labels(set(names))
    if len(labels) < min_classes:
        raise DataError(
            f"{path}: target {target!r} has a single class ({labels[0]!r}); "
            "a classifier needs at least two"
        )
    index = {label: i for i, label in enumerate(labels)}
    return np.asarray([index[n] for n in names], dtype=np.int64), labels


def read_table(
    path: Path,
    *,
    target: str,
    categorical: Sequence[str] = (),
    group: str | None = None,
    min_classes: int = 2,
) -> Table:
    """Load and check ``path``. Every column but the target and the group column is a
    feature: numeric unless named in ``categorical``. A classifier's training data needs
    two classes; rows added to it (``min_classes=1``) may all hold one."""
    raw = _read_rows(path)
    _require(path, raw.header, [target], "target")
    _require(path, raw.header, list(categorical), "categorical")
    if group is not None:
        _require(path, raw.header, [group], "group")
    features = tuple(name for name in raw.header if name not in (target, group))
    if not features:
        raise DataError(f"{path} has no feature columns besides the target {target!r}")
    numeric_names = tuple(name for name in features if name not in categorical)
    categorical_names = tuple(name for name in features if name in categorical)
    missing: dict[str, int] = {}
    numeric = np.empty((len(raw.rows), len(numeric_names)))
    for j, name in enumerate(numeric_names):
        numeric[:, j], missing[name] = _numeric_column(raw, path, name)
    categories = np.empty((len(raw.rows), len(categorical_names)), dtype=object)
    for j, name in enumerate(categorical_names):
        categories[:, j], missing[name] = _categorical_column(raw, name)
    empty = [name for name in features if missing[name] == len(raw.rows)]
    if empty:
        raise DataError(f"{path}: column(s) {', '.join(empty)} have no values at all")
    y, labels = _target(raw, path, target, min_classes)
    groups = None
    if group is not None:
        g = raw.header.index(group)
        groups = np.asarray([row[g].strip() for row in raw.rows], dtype=object)
    return Table(
        source=str(path),
        target=target,
        feature_order=features,
        numeric_columns=numeric_names,
        categorical_columns=categorical_names,
        numeric=numeric,
        categorical=categories,
        y=y,
        labels=labels,
        group_column=group,
        groups=groups,
        duplicates_dropped=raw.duplicates,
        missing={name: n for name, n in missing.items() if n},
    )


def _most_frequent(values: Sequence[object]) -> tuple[tuple[str, ...], str]:
    counts = Counter(str(v) for v in values if v is not None)
    vocabulary = tuple(sorted(counts))
    # Ties go to the alphabetically first category, so the choice is reproducible.
    fill = min(vocabulary, key=lambda v: (-counts[v], v)) if vocabulary else ""
    return vocabulary, fill


def fit_preprocessing(train: Table) -> TabularPreprocessing:
    """Medians, means/stds and vocabularies from ``train`` only."""
    medians, means, stds = [], [], []
    for j in range(len(train.numeric_columns)):
        column = train.numeric[:, j]
        present = column[~np.isnan(column)]
        median = float(np.median(present)) if len(present) else 0.0
        filled = np.where(np.isnan(column), median, column)
        std = float(filled.std())
        medians.append(median)
        means.append(float(filled.mean()))
        stds.append(std if std > 1e-12 else 1.0)  # a constant column must not divide by 0
    vocabularies, fills = [], []
    for j in range(len(train.categorical_columns)):
        vocabulary, fill = _most_frequent(train.categorical[:, j].tolist())
        vocabularies.append(vocabulary)
        fills.append(fill)
    return TabularPreprocessing(
        feature_order=train.feature_order,
        numeric=train.numeric_columns,
        medians=tuple(medians),
        means=tuple(means),
        stds=tuple(stds),
        categorical=train.categorical_columns,
        vocabularies=tuple(vocabularies),
        most_frequent=tuple(fills),
        labels=train.labels,
    )
