"""Classifier datasets from rated samples: corrections replace predictions, poorly rated
uncorrected answers are left out, duplicates are written once, versions count up."""

from __future__ import annotations

import csv
from datetime import timedelta
from pathlib import Path

import orjson
import pytest
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.clock import utcnow
from modelmint.errors import NotFound
from modelmint.feedback.datasets import (
    BuildOptions,
    build_from_feedback,
    dataset_resolver,
    resolve_dataset,
)
from modelmint.feedback.feedback import FeedbackGiven, feedback_summary, record_feedback
from modelmint.registry.versions import TrainedVersion, register_trained
from modelmint.storage import Database
from modelmint.storage.tables import Feedback, Organization, RequestSample, UsageRecord
from modelmint.training.recipe import DataError


def _served(
    session: Session,
    org_id: str,
    request_id: str,
    features: dict[str, float],
    label: str,
    *,
    model: str = "clf",
    version_id: str = "ver-1",
    captured: bool = True,
) -> None:
    now = utcnow()
    session.add(
        UsageRecord(
            id=request_id, created_at=now, organization_id=org_id, api_key_id="k",
            model=model, model_version_id=version_id, endpoint="classifications",
            status_code=200,
        )
    )  # fmt: skip
    if not captured:
        session.flush()
        return
    session.add(
        RequestSample(
            request_id=request_id, organization_id=org_id, api_key_id="k", model=model,
            model_version_id=version_id, endpoint="classifications",
            request_text=orjson.dumps([features]).decode(),
            response_text=orjson.dumps([{"label": label, "scores": {label: 0.9}}]).decode(),
            redactions={}, created_at=now, expires_at=now + timedelta(days=1),
        )
    )  # fmt: skip
    session.flush()


def _rate(session: Session, org_id: str, request_id: str, **given: object) -> None:
    record_feedback(session, org_id, "k", FeedbackGiven(request_id=request_id, **given))  # type: ignore[arg-type]


def test_a_csv_dataset_takes_corrections_and_good_answers_once(
    sqlite_database: Database, tmp_path: Path
) -> None:
    with sqlite_database.session() as session:
        org = accounts.ensure_org(session, "acme").id
        _served(session, org, "r1", {"a": 1.0, "b": 2.0}, "yes")
        _served(session, org, "r2", {"a": 1.0, "b": 2.0}, "yes")  # duplicate of r1
        _served(session, org, "r3", {"a": 3.0, "b": 4.0}, "yes")
        _served(session, org, "r4", {"a": 5.0, "b": 6.0}, "no")
        _rate(session, org, "r1", score=5)
        _rate(session, org, "r2", score=4)
        _rate(session, org, "r3", score=1, corrected_label="no")
        _rate(session, org, "r4", score=2)  # poor and uncorrected: left out
        first = build_from_feedback(session, tmp_path, BuildOptions(model="clf", target="y"))
        second = build_from_feedback(session, tmp_path, BuildOptions(model="clf", target="y"))
        strict = build_from_feedback(
            session, tmp_path, BuildOptions(model="clf", name="strict", min_score=5, target="y")
        )
        summary = feedback_summary(session, "ver-1")

    assert (first.format, first.rows, first.version, second.version) == ("csv", 2, 1, 2)
    assert first.request_ids == ["r1", "r3"] and first.data_hash == second.data_hash
    assert Path(first.path) == tmp_path / "datasets" / "clf" / "v1" / "data.csv"
    with open(first.path) as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"a": "1.0", "b": "2.0", "y": "yes"}, {"a": "3.0", "b": "4.0", "y": "no"}]
    assert strict.request_ids == ["r1", "r3"]  # 5 stars, and the correction
    assert summary.volume == 4 and summary.mean_score == pytest.approx(3.0)
    assert summary.corrections == [("no", 1)] and summary.scale == "1-5"


def _registered(session: Session, name: str) -> str:
    trained = TrainedVersion(
        name=name, task="classification", recipe="tabular-classifier", format="torch",
        artifact_uri=f"/artifacts/{name}", params={}, metrics={}, data_hash="sha256:x",
        lineage={"data": f"{name}.csv"},
    )  # fmt: skip
    return register_trained(session, trained).id


def test_a_dataset_is_built_from_the_registered_name_as_from_the_served_one(
    sqlite_database: Database, tmp_path: Path
) -> None:
    """The README builds from the registered name (``cancer``); the requests were sent
    to the name it is deployed as (``cancer-api``). Both name the same feedback."""
    with sqlite_database.session() as session:
        org = accounts.ensure_org(session, "acme").id
        version_id = _registered(session, "cancer")
        for i, label in enumerate(["benign", "malignant"]):
            _served(
                session, org, f"r{i}", {"a": float(i)}, label,
                model="cancer-api", version_id=version_id,
            )  # fmt: skip
            _rate(session, org, f"r{i}", score=True)
        by_registered = build_from_feedback(session, tmp_path, BuildOptions(model="cancer"))
        by_served = build_from_feedback(session, tmp_path, BuildOptions(model="cancer-api"))
    assert by_registered.request_ids == by_served.request_ids == ["r0", "r1"]
    assert by_registered.data_hash == by_served.data_hash


def test_an_empty_build_says_what_is_missing(sqlite_database: Database, tmp_path: Path) -> None:
    with sqlite_database.session() as session:
        org = accounts.ensure_org(session, "acme").id
        _served(session, org, "r1", {"a": 1.0}, "yes", model="risk-api", captured=False)
        _rate(session, org, "r1", score=True)
        with pytest.raises(DataError) as unknown:
            build_from_feedback(session, tmp_path, BuildOptions(model="nobody"))
        with pytest.raises(DataError) as uncaptured:
            build_from_feedback(session, tmp_path, BuildOptions(model="risk-api"))
    assert "risk-api" in unknown.value.message  # the names that do have feedback
    assert "1 rated requests" in uncaptured.value.message
    assert "capture" in uncaptured.value.message


def test_feedback_on_another_organisations_request_is_not_found(
    sqlite_database: Database,
) -> None:
    with sqlite_database.session() as session:
        mine = accounts.ensure_org(session, "mine").id
        theirs = accounts.ensure_org(session, "theirs").id
        _served(session, theirs, "r1", {"a": 1.0}, "yes")
        with pytest.raises(NotFound):
            _rate(session, mine, "r1", score=True)
        with pytest.raises(NotFound):
            _rate(session, mine, "missing", score=True)


def test_datasets_resolve_by_version_and_refuse_unknown_ones(
    sqlite_database: Database, tmp_path: Path
) -> None:
    with sqlite_database.session() as session:
        org = accounts.ensure_org(session, "acme").id
        _served(session, org, "r1", {"a": 1.0}, "yes")
        _rate(session, org, "r1", score=True)
        built = build_from_feedback(session, tmp_path, BuildOptions(model="clf"))
        with pytest.raises(NotFound):
            resolve_dataset(session, "dataset:clf@9")
        with pytest.raises(DataError):
            resolve_dataset(session, "dataset:clf@latest")
        with pytest.raises(DataError):
            build_from_feedback(session, tmp_path, BuildOptions(model="nothing-rated"))
    resolve = dataset_resolver(sqlite_database)
    assert resolve("dataset:clf@1") == built.path
    assert resolve("data.csv") == "data.csv"


def test_deleting_an_organisation_deletes_its_samples_and_feedback(
    sqlite_database: Database,
) -> None:
    with sqlite_database.session() as session:
        org = accounts.ensure_org(session, "leaving")
        _served(session, org.id, "r1", {"a": 1.0}, "yes")
        _rate(session, org.id, "r1", score=True)
    with sqlite_database.session() as session:
        session.delete(session.get(Organization, org.id))
    with sqlite_database.session() as session:
        assert session.get(RequestSample, "r1") is None
        assert session.get(Feedback, "r1") is None
