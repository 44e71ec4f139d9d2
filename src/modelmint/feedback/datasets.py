"""Versioned training datasets built from rated, captured requests.

    feedback (score, correction) + request_samples (redacted input and output)
    -> rows (a corrected label or output replaces the model's) -> deduplicated
    -> <home>/datasets/NAME/vN/data.{csv,jsonl} + a FeedbackDataset row

Classifiers of feature rows get a CSV (one column per feature plus the target),
recommenders a CSV of implicit interactions (``user,item``), text classifiers and
chat models JSONL, each in the shape its training recipe reads. A
dataset records the request ids it came from; ``resolve_dataset`` turns
``dataset:NAME@VERSION`` back into its file for ``modelmint train``.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from modelmint.errors import NotFound
from modelmint.storage.db import Database
from modelmint.storage.tables import (
    Feedback,
    FeedbackDataset,
    ModelVersion,
    RegisteredModel,
    RequestSample,
)
from modelmint.training.recipe import DataError
from modelmint.training.splits import data_hash

__all__ = [
    "BuildOptions",
    "Row",
    "build_from_feedback",
    "dataset_resolver",
    "list_datasets",
    "resolve_dataset",
    "rows_from_feedback",
]

# Without --min-score, an uncorrected answer becomes a training row only when the rating
# said it was good: thumbs up, 4+ stars, a positive number. Corrected answers always do.
_GOOD = {"thumbs": 1.0, "stars": 4.0, "numeric": 0.0}


@dataclass(frozen=True, slots=True)
class BuildOptions:
    # The public name the requests were sent to, or the registered model's name (then
    # the feedback on every one of its versions, whatever name served them).
    model: str
    name: str | None = None  # dataset name; default: the model's
    min_score: float | None = None
    since: datetime | None = None
    target: str = "label"  # the label column of classifier datasets


@dataclass(frozen=True, slots=True)
class Row:
    """One training example and the request it came from."""

    request_id: str
    record: dict[str, Any]


def _keeps(feedback: Feedback, min_score: float | None) -> bool:
    if feedback.corrected_label or feedback.corrected_output:
        return True
    if feedback.score is None:
        return False
    if min_score is not None:
        return feedback.score >= min_score
    threshold = _GOOD.get(feedback.score_kind)
    return threshold is not None and (
        feedback.score > threshold
        if feedback.score_kind == "numeric"
        else feedback.score >= threshold
    )


def _about(model: str) -> ColumnElement[bool]:
    """Feedback on ``model``: served under that public name, or answered by a version of
    the registered model of that name (the two names differ once it is deployed ``--as``
    another)."""
    versions = (
        select(ModelVersion.id)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(RegisteredModel.name == model)
    )
    return or_(Feedback.model == model, Feedback.model_version_id.in_(versions))


def _pairs(session: Session, options: BuildOptions) -> Iterator[tuple[Feedback, RequestSample]]:
    query = (
        select(Feedback, RequestSample)
        .join(RequestSample, RequestSample.request_id == Feedback.request_id)
        .where(_about(options.model))
        .order_by(Feedback.updated_at, Feedback.request_id)
    )
    if options.since is not None:
        query = query.where(Feedback.updated_at >= options.since)
    for feedback, sample in session.execute(query).all():
        if _keeps(feedback, options.min_score):
            yield feedback, sample


def _classification_rows(feedback: Feedback, sample: RequestSample, target: str) -> Iterator[Row]:
    items = orjson.loads(sample.request_text)
    results = orjson.loads(sample.response_text)
    if not isinstance(items, list) or not isinstance(results, list):
        return
    for item, result in zip(items, results, strict=False):
        label = feedback.corrected_label or (result or {}).get("label")
        if label is None:
            continue
        features = dict(item) if isinstance(item, dict) else {"text": item}
        features.pop(target, None)
        yield Row(feedback.request_id, {**features, target: str(label)})


def _chat_rows(feedback: Feedback, sample: RequestSample) -> Iterator[Row]:
    messages = orjson.loads(sample.request_text)
    answer = feedback.corrected_output or _first_answer(orjson.loads(sample.response_text))
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not answer:
        return
    yield Row(
        feedback.request_id, {"messages": [*messages, {"role": "assistant", "content": answer}]}
    )


def _recommendation_rows(feedback: Feedback, sample: RequestSample) -> Iterator[Row]:
    """An implicit interaction (``user,item``): the item the user chose, named by the
    correction, or else the top recommendation of a well-rated answer."""
    query = orjson.loads(sample.request_text)
    answer = orjson.loads(sample.response_text)
    if not isinstance(query, dict) or not isinstance(answer, dict) or "user" not in query:
        return
    item = feedback.corrected_label
    if item is None:
        shown = answer.get("items") or []
        item = shown[0].get("item") if shown and isinstance(shown[0], dict) else None
    if item is not None:
        yield Row(feedback.request_id, {"user": str(query["user"]), "item": str(item)})


def _first_answer(response: Any) -> str | None:
    if isinstance(response, str):
        return response
    if isinstance(response, list) and response and isinstance(response[0], dict):
        choice = response[0]
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else choice.get("text")
        return content if isinstance(content, str) else None
    return None


def rows_from_feedback(session: Session, options: BuildOptions) -> list[Row]:
    """The deduplicated training rows of a model's rated samples (first one kept)."""
    seen: set[bytes] = set()
    rows: list[Row] = []
    for feedback, sample in _pairs(session, options):
        if sample.endpoint == "classifications":
            produced: Iterable[Row] = _classification_rows(feedback, sample, options.target)
        elif sample.endpoint in ("chat.completions", "completions"):
            produced = _chat_rows(feedback, sample)
        elif sample.endpoint == "recommendations":
            produced = _recommendation_rows(feedback, sample)
        else:
            continue
        for row in produced:
            key = orjson.dumps(row.record, option=orjson.OPT_SORT_KEYS)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    return rows


def _format(rows: list[Row]) -> str:
    record = rows[0].record
    if "messages" in record or set(record) <= {"text", "label"} or "text" in record:
        return "jsonl"
    return "csv"


def _serialise(rows: list[Row], fmt: str, target: str) -> bytes:
    if fmt == "jsonl":
        return b"".join(orjson.dumps(r.record) + b"\n" for r in rows)
    # Features in name order, the target (when there is one) last: the recipes' layout.
    columns = sorted({k for r in rows for k in r.record}, key=lambda k: (k == target, k))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_cell(row.record.get(c)) for c in columns])
    return out.getvalue().encode()


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else orjson.dumps(value).decode()


def build_from_feedback(session: Session, home: Path, options: BuildOptions) -> FeedbackDataset:
    """Write the next version of a dataset from a model's feedback and record it."""
    rows = rows_from_feedback(session, options)
    if not rows:
        raise DataError(_why_empty(session, options))
    name = options.name or options.model
    version = (
        session.scalar(
            select(func.max(FeedbackDataset.version)).where(FeedbackDataset.name == name)
        )
        or 0
    ) + 1
    fmt = _format(rows)
    content = _serialise(rows, fmt, options.target)
    folder = home / "datasets" / name / f"v{version}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"data.{fmt}"
    path.write_bytes(content)
    dataset = FeedbackDataset(
        id=uuid.uuid4().hex,
        name=name,
        version=version,
        source_model=options.model,
        format=fmt,
        path=str(path),
        data_hash=data_hash([content]),
        rows=len(rows),
        request_ids=sorted({r.request_id for r in rows}),
        filters={
            "min_score": options.min_score,
            "since": options.since.isoformat() if options.since else None,
            "target": options.target,
        },
    )
    session.add(dataset)
    session.flush()
    return dataset


def _why_empty(session: Session, options: BuildOptions) -> str:
    """Why no row qualified, as the one thing to do next."""
    model = options.model
    rated = select(Feedback.request_id).where(_about(model))
    if options.since is not None:
        rated = rated.where(Feedback.updated_at >= options.since)
    ratings = session.scalar(select(func.count()).select_from(rated.subquery())) or 0
    if ratings == 0:
        served = sorted(
            set(
                session.scalars(
                    select(Feedback.model).distinct().order_by(Feedback.model).limit(20)
                )
            )
        )
        known = f"; feedback exists for: {', '.join(served)}" if served else ""
        return (
            f"no feedback on {model!r} (a public model name or a registered model name)"
            f"{known}. Send feedback (POST /v1/feedback) first"
        )
    captured = session.scalar(
        select(func.count()).select_from(RequestSample).where(RequestSample.request_id.in_(rated))
    )
    if not captured:
        return (
            f"{ratings} rated requests of {model!r}, but none was captured: enable sample "
            "capture (modelmint samples config) before the requests are served"
        )
    return (
        f"{ratings} rated requests of {model!r} ({captured} captured), but none qualifies: "
        "a row needs a correction or a good rating (thumbs up, 4+ stars, a positive number, "
        "or at least --min-score)"
    )


def list_datasets(session: Session, name: str | None = None) -> list[FeedbackDataset]:
    query = select(FeedbackDataset).order_by(FeedbackDataset.name, FeedbackDataset.version)
    if name is not None:
        query = query.where(FeedbackDataset.name == name)
    return list(session.scalars(query))


def resolve_dataset(session: Session, source: str) -> FeedbackDataset:
    """The dataset a ``dataset:NAME@VERSION`` (or ``NAME@VERSION``, ``NAME``) names."""
    ref = source.removeprefix("dataset:")
    name, _, version_text = ref.partition("@")
    query = select(FeedbackDataset).where(FeedbackDataset.name == name)
    if version_text:
        if not version_text.lstrip("v").isdigit():
            raise DataError(f"{source!r}: a dataset version is a number, e.g. {name}@2")
        query = query.where(FeedbackDataset.version == int(version_text.lstrip("v")))
    found = session.scalar(query.order_by(FeedbackDataset.version.desc()).limit(1))
    if found is None:
        raise NotFound(f"no dataset {ref!r}: see modelmint datasets list")
    if not Path(found.path).is_file():
        raise DataError(f"dataset {ref!r} is recorded but its file {found.path} is missing")
    return found


def dataset_resolver(database: Database) -> Callable[[str], str]:
    """The ``resolve_data`` callback of ``training.runs.train``: datasets to file paths."""

    def resolve(source: str) -> str:
        if not source.startswith("dataset:"):
            return source
        with database.session() as session:
            return resolve_dataset(session, source).path

    return resolve
