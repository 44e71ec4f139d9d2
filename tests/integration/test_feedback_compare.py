"""Comparing versions after a feedback round, against a real database: versions trained
by the real recipe, usage written by the metering store, ratings recorded as customers
give them.

The round the README walks through: version 1 trained on the original data, version 2
on that data plus the feedback rows (``add_data``), version 3 on the feedback rows
alone. Their registered metrics come from three different test splits; ``compare``
must also measure all three on one shared set of held-out rows, keep every interval
within its scale, and blame a version only for its own failures.
"""

from __future__ import annotations

import csv
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sklearn import datasets
from sqlalchemy import select

from modelmint import accounts
from modelmint.charging.settlement import Charger
from modelmint.clock import utcnow
from modelmint.feedback.compare import compare_versions
from modelmint.feedback.feedback import FeedbackGiven, record_feedback
from modelmint.metering import UsageEvent
from modelmint.metering.store import UsageStore
from modelmint.registry.versions import TrainedVersion, register_trained
from modelmint.storage import Database
from modelmint.storage.tables import ModelVersion
from modelmint.training.recipes.tabular import TabularClassifier
from modelmint.training.runs import TrainRequest, TrainResult, train

TARGET = "diagnosis"
# Small and quick: the test is about which rows each version saw, not how well it learns.
PARAMS: dict[str, Any] = {
    "target": TARGET, "epochs": 8, "baseline": False, "importance_repeats": 1,
}  # fmt: skip
FEEDBACK_FROM_TRAIN, FEEDBACK_FROM_TEST = 32, 8


def _write(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The original data (breast cancer, 569 rows) and a feedback file of 40 corrected
    rows: 32 inputs of version 1's training part and 8 of its test split, as customers
    send inputs that happen to be in the test set."""
    folder = tmp_path_factory.mktemp("cancer")
    bunch = datasets.load_breast_cancer()
    names = [str(n) for n in bunch.feature_names]
    labels = [str(n) for n in bunch.target_names]
    original = _write(
        folder / "cancer.csv",
        [*names, TARGET],
        [[*map(float, x), labels[y]] for x, y in zip(bunch.data, bunch.target, strict=True)],
    )
    recipe = TabularClassifier(**PARAMS)
    splits = recipe.split(recipe.load_data(str(original)))
    chosen = (
        recipe.labelled_inputs(splits.train)[:FEEDBACK_FROM_TRAIN]
        + recipe.labelled_inputs(splits.test)[:FEEDBACK_FROM_TEST]
    )
    feedback = _write(
        folder / "feedback.csv",
        [*names, TARGET],
        [[*(x[n] for n in names), label] for x, label in chosen],
    )
    return original, feedback


def _train(database: Database, home: Path, data: Path, *added: Path) -> TrainResult:
    request = TrainRequest(
        recipe="tabular-classifier",
        data=str(data),
        add_data=tuple(str(p) for p in added),
        params=PARAMS,
        name="cancer",
    )
    return train(request, home=home, database=database)


def test_feedback_rows_join_training_and_every_version_is_measured_on_the_same_rows(
    sqlite_database: Database, tmp_path: Path, data: tuple[Path, Path]
) -> None:
    original, feedback = data
    first = _train(sqlite_database, tmp_path, original)
    merged = _train(sqlite_database, tmp_path, original, feedback)
    alone = _train(sqlite_database, tmp_path, feedback)

    sizes = first.report.split_sizes
    # The merged version was tested on the very rows version 1 was: the test split
    # comes from the original data alone, and the 8 feedback rows repeating test
    # inputs were left out of training.
    assert merged.report.split_sizes == {
        "train": sizes["train"] + FEEDBACK_FROM_TRAIN,
        "val": sizes["val"],
        "test": sizes["test"],
        "added to train": FEEDBACK_FROM_TRAIN,
    }
    assert merged.report.metrics["rows"] == first.report.metrics["rows"] == sizes["test"]
    with sqlite_database.session() as session:
        lineage = session.scalars(
            select(ModelVersion.lineage).where(ModelVersion.version == merged.version)
        ).one()
    assert lineage["added_data"] == [str(feedback)]
    assert (lineage["added_rows"], lineage["added_rows_left_out"]) == (
        FEEDBACK_FROM_TRAIN, FEEDBACK_FROM_TEST,
    )  # fmt: skip
    # Trained on feedback alone, version 3 was tested on a handful of rows: its
    # registered numbers cannot stand beside the others'.
    assert alone.report.split_sizes["test"] < 10

    with sqlite_database.session() as session:
        comparison = compare_versions(session, "cancer", [1, 2, 3], held_out=True)
    held = comparison.held_out
    assert held is not None, comparison.held_out_note
    assert [s.version for s in held.scores] == [1, 2, 3]
    # Version 1's test rows, less those version 3 trained or validated on (feedback
    # rows that repeat test inputs); version 2 left all of them out of its training.
    assert held.rows + held.left_out == sizes["test"]
    assert 0 < held.left_out <= FEEDBACK_FROM_TEST
    assert held.unchecked == ()
    for scores in held.scores:
        assert scores.accuracy_low is not None and scores.accuracy_high is not None
        assert 0.0 <= scores.accuracy_low <= scores.accuracy <= scores.accuracy_high <= 1.0


def _events(org: str, version_id: str, statuses: dict[int, int]) -> list[UsageEvent]:
    return [
        UsageEvent(
            id=f"req_{version_id[:8]}_{status}_{i}",
            created_at=utcnow(),
            organization_id=org,
            api_key_id="k",
            model="risk-api",
            endpoint="classifications",
            status_code=status,
            latency_ms=12,
            model_version_id=version_id,
        )
        for status, count in statuses.items()
        for i in range(count)
    ]


def _register(database: Database, count: int) -> list[str]:
    with database.session() as session:
        return [
            register_trained(
                session,
                TrainedVersion(
                    name="risk", task="classification", recipe="tabular-classifier",
                    format="torch", artifact_uri="/artifacts/risk", params={}, metrics={},
                    data_hash="sha256:x", lineage={"data": "credit.csv"},
                ),
            ).id
            for _ in range(count)
        ]  # fmt: skip


def test_only_the_models_own_failures_count_as_errors_and_intervals_stay_on_the_scale(
    database: Database,
) -> None:
    first, second = _register(database, 2)
    with database.session() as session:
        org = accounts.ensure_org(session, "acme").id
    # Version 1 failed once itself; version 2 never did, but callers sent it ten
    # requests it had to refuse (bad input).
    events = _events(org, first, {200: 20, 500: 1}) + _events(org, second, {200: 20, 400: 10})
    store = UsageStore(database, Charger())
    try:
        assert store.write(events) == len(events)
    finally:
        store.close()
    with database.session() as session:
        for event in events:
            if event.status_code == 200:  # all thumbs up but one per version
                up = not event.id.endswith("_0")
                record_feedback(session, org, "k", FeedbackGiven(request_id=event.id, score=up))

    with database.session() as session:
        comparison = compare_versions(session, "risk", [1, 2])
    one, two = comparison.versions
    assert (one.errors, one.client_errors) == (1, 0)
    assert (two.errors, two.client_errors) == (0, 10)
    assert one.error_rate == Decimal("0.0476") and two.error_rate == Decimal("0.0000")
    # Money per 1k requests still spreads over every request served, refused ones too.
    assert two.per_1k(Decimal(30)) == Decimal("1000.000000")
    # Users rated both alike; the candidate failed less: nothing to roll back for.
    assert comparison.recommendation.action == "keep"
    # 19 up of 20: the normal approximation alone would reach 1.048.
    assert one.score.high == two.score.high == 1.0
    assert one.score.mean == two.score.mean == 0.95
