"""Loading a classification CSV: what is refused, what is repaired, and that the
preprocessing statistics come from the training rows only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from modelmint.training.recipe import DataError
from modelmint.training.tables import concat_tables, fit_preprocessing, read_table, sort_labels


def write(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_reads_numeric_and_categorical_features_and_keeps_the_group_apart(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "age,plan,region,churned\n30,basic,north,no\n41,pro,south,yes\n25,basic,south,no\n",
    )

    table = read_table(path, target="churned", categorical=["plan"], group="region")

    assert table.feature_order == ("age", "plan")
    assert table.numeric_columns == ("age",)
    assert table.categorical_columns == ("plan",)
    assert table.numeric[:, 0].tolist() == [30.0, 41.0, 25.0]
    assert table.categorical[:, 0].tolist() == ["basic", "pro", "basic"]
    assert table.labels == ("no", "yes")
    assert table.y.tolist() == [0, 1, 0]
    assert table.groups is not None and table.groups.tolist() == ["north", "south", "south"]


def test_missing_target_column_names_it_and_the_columns_found(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b\n1,2\n3,4\n")

    with pytest.raises(DataError, match=r"no target column 'label'.*columns found: a, b"):
        read_table(path, target="label")


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_empty_file_is_refused(tmp_path: Path, text: str) -> None:
    with pytest.raises(DataError, match="is empty"):
        read_table(write(tmp_path, text), target="y")


def test_header_only_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="header but no data rows"):
        read_table(write(tmp_path, "x,y\n"), target="y")


def test_non_numeric_value_names_column_line_and_value(tmp_path: Path) -> None:
    path = write(tmp_path, "x,colour,y\n1,red,a\n2,blue,b\n")

    with pytest.raises(DataError, match=r"line 2, column 'colour': 'red' is not a number"):
        read_table(path, target="y")
    table = read_table(path, target="y", categorical=["colour"])
    assert table.categorical[:, 0].tolist() == ["red", "blue"]


def test_line_numbers_count_quoted_newlines(tmp_path: Path) -> None:
    path = write(tmp_path, 'note,x,y\n"two\nlines",1,a\nok,oops,b\n')

    with pytest.raises(DataError, match=r"line 4, column 'x': 'oops'"):
        read_table(path, target="y", categorical=["note"])


def test_missing_values_are_counted_per_column_and_kept_as_missing(tmp_path: Path) -> None:
    path = write(tmp_path, "x,z,c,y\n1,,a,p\nNA,2,,q\n3,?,b,p\n4,5,b,q\n")

    table = read_table(path, target="y", categorical=["c"])

    assert table.missing == {"x": 1, "z": 2, "c": 1}
    assert np.isnan(table.numeric[1, 0]) and np.isnan(table.numeric[0, 1])
    assert table.categorical[1, 0] is None
    assert table.summary()["missing_values"] == {"x": 1, "z": 2, "c": 1}


def test_exact_duplicate_rows_are_dropped_and_counted(tmp_path: Path) -> None:
    path = write(tmp_path, "x,y\n1,a\n1,a\n2,b\n1,a\n1,b\n")

    table = read_table(path, target="y")

    assert len(table) == 3
    assert table.duplicates_dropped == 2
    assert table.numeric[:, 0].tolist() == [1.0, 2.0, 1.0]


def test_single_class_target_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"target 'y' has a single class \('a'\)"):
        read_table(write(tmp_path, "x,y\n1,a\n2,a\n"), target="y")


def test_row_without_target_value_names_its_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"line 3: target 'y' has no value"):
        read_table(write(tmp_path, "x,y\n1,a\n2,\n3,b\n"), target="y")


def test_ragged_row_and_unknown_declared_columns_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "x,y\n1,a\n2\n")
    with pytest.raises(DataError, match="line 3: 1 fields where the header has 2"):
        read_table(path, target="y")
    good = write(tmp_path, "x,y\n1,a\n2,b\n", "good.csv")
    with pytest.raises(DataError, match="no categorical column 'colour'"):
        read_table(good, target="y", categorical=["colour"])
    with pytest.raises(DataError, match="no group column 'region'"):
        read_table(good, target="y", group="region")


def test_column_without_any_value_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"column\(s\) z have no values"):
        read_table(write(tmp_path, "x,z,y\n1,,a\n2,,b\n"), target="y")


def test_numeric_labels_sort_by_value() -> None:
    assert sort_labels({"10", "2", "1"}) == ("1", "2", "10")
    assert sort_labels({"b", "a", "10"}) == ("10", "a", "b")


def test_preprocessing_statistics_come_from_the_training_rows_only(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "x,c,y\n1,a,p\n3,a,q\n,b,p\n5,,q\n1000,z,p\n",
    )
    table = read_table(path, target="y", categorical=["c"])
    train = table.take(np.array([0, 1, 2, 3], dtype=np.int64))

    prep = fit_preprocessing(train)

    assert prep.medians == (3.0,)  # median of 1, 3, 5: the 1000 of the other split is unseen
    filled = np.array([1.0, 3.0, 3.0, 5.0])
    assert prep.means[0] == pytest.approx(filled.mean())
    assert prep.stds[0] == pytest.approx(filled.std())
    assert prep.vocabularies == (("a", "b"),)
    assert prep.most_frequent == ("a",)
    x = prep.transform(table.numeric, table.categorical)
    # missing x -> median -> standardised value of 3; missing c -> "a"; unseen "z" -> zeros
    assert x[2, 0] == pytest.approx((3.0 - filled.mean()) / filled.std())
    assert x[3, 1:].tolist() == [1.0, 0.0]
    assert x[4, 1:].tolist() == [0.0, 0.0]
    assert x.dtype == np.float32


def test_rows_read_back_as_the_inputs_a_client_sends(tmp_path: Path) -> None:
    path = write(tmp_path, "age,plan,churned\n30,basic,no\n,pro,yes\n41,,no\n")
    table = read_table(path, target="churned", categorical=["plan"])
    assert table.inputs() == [
        {"age": 30.0, "plan": "basic"},
        {"age": None, "plan": "pro"},
        {"age": 41.0, "plan": None},
    ]


def test_added_rows_take_the_first_tables_columns_and_class_numbers(tmp_path: Path) -> None:
    first = read_table(write(tmp_path, "a,b,y\n1,2,no\n3,4,yes\n", "first.csv"), target="y")
    # Columns in another order and a single class (feedback may correct every answer
    # the same way): "yes" must keep first's number.
    more = read_table(write(tmp_path, "b,y,a\n6,yes,5\n", "more.csv"), target="y", min_classes=1)

    both = concat_tables(first, more)

    assert both.inputs() == [{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}, {"a": 5.0, "b": 6.0}]
    assert [both.labels[i] for i in both.y] == ["no", "yes", "yes"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [("a,c,y\n1,2,no\n", "missing: b; extra: c"), ("a,b,y\n1,2,maybe\n", "classes maybe")],
)
def test_added_rows_with_other_features_or_classes_are_refused(
    tmp_path: Path, text: str, problem: str
) -> None:
    first = read_table(write(tmp_path, "a,b,y\n1,2,no\n3,4,yes\n", "first.csv"), target="y")
    more = read_table(write(tmp_path, text, "more.csv"), target="y", min_classes=1)
    with pytest.raises(DataError, match=problem):
        concat_tables(first, more)
