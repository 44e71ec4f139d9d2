"""Model versions as the factory produces them: lineage, references and aliases.

A reference names one version: ``NAME`` (the newest), ``NAME@3`` (version 3) or
``NAME@production`` (whatever the alias points at). Aliases move between versions;
every move is appended to ``model_alias_moves``, so "what was in production on
the 3rd?" always has an answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest, NotFound
from modelmint.ids import new_id
from modelmint.registry.catalog import add_version, ensure_model
from modelmint.storage.tables import ModelAlias, ModelAliasMove, ModelVersion, RegisteredModel

__all__ = [
    "AliasMove",
    "TrainedVersion",
    "VersionRef",
    "alias_history",
    "aliases_of",
    "list_versions",
    "move_alias",
    "parse_ref",
    "register_trained",
    "resolve",
]

_ALIAS = re.compile(r"[a-z][a-z0-9_-]{0,59}")


@dataclass(frozen=True, slots=True)
class VersionRef:
    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}@{self.version}"
        return f"{self.name}@{self.alias}" if self.alias else self.name


@dataclass(frozen=True, slots=True)
class TrainedVersion:
    """What a training run hands the registry."""

    name: str
    task: str
    recipe: str
    format: str
    artifact_uri: str
    params: dict[str, Any]
    metrics: dict[str, Any]
    data_hash: str
    lineage: dict[str, Any]
    card: str = ""
    parent: VersionRef | None = None


@dataclass(frozen=True, slots=True)
class AliasMove:
    alias: str
    from_version: int | None
    to_version: int
    moved_at: datetime
    note: str


def parse_ref(text: str) -> VersionRef:
    name, sep, tail = text.partition("@")
    if not name or (sep and not tail):
        raise InvalidRequest(
            f"invalid model reference {text!r}: use NAME, NAME@VERSION or NAME@ALIAS",
            param="model",
        )
    if not sep:
        return VersionRef(name)
    if tail.isdigit():
        return VersionRef(name, version=int(tail))
    return VersionRef(name, alias=_check_alias(tail))


def _check_alias(alias: str) -> str:
    if not _ALIAS.fullmatch(alias):
        raise InvalidRequest(
            f"invalid alias {alias!r}: lower-case letters, digits, - and _, starting with a letter",
            param="alias",
        )
    return alias


def _model(session: Session, name: str) -> RegisteredModel:
    model = session.scalar(select(RegisteredModel).where(RegisteredModel.name == name))
    if model is None:
        raise NotFound(f"no registered model named {name!r}", param="model")
    return model


def resolve(session: Session, ref: VersionRef | str) -> tuple[RegisteredModel, ModelVersion]:
    """The model and the one version ``ref`` names."""
    if isinstance(ref, str):
        ref = parse_ref(ref)
    model = _model(session, ref.name)
    query = select(ModelVersion).where(ModelVersion.model_id == model.id)
    if ref.version is not None:
        version = session.scalar(query.where(ModelVersion.version == ref.version))
    elif ref.alias is not None:
        pointer = session.get(ModelAlias, (model.id, ref.alias))
        if pointer is None:
            raise NotFound(f"model {ref.name!r} has no alias {ref.alias!r}", param="model")
        version = session.get(ModelVersion, pointer.model_version_id)
    else:
        version = session.scalar(query.order_by(ModelVersion.version.desc()).limit(1))
    if version is None:
        raise NotFound(f"no version {ref} is registered", param="model")
    return model, version


def register_trained(session: Session, trained: TrainedVersion) -> ModelVersion:
    """Register a trained artifact as the next version of its model."""
    parent_id = None
    if trained.parent is not None:
        parent_id = resolve(session, trained.parent)[1].id
    model = ensure_model(session, trained.name, trained.task)
    version = add_version(
        session,
        model,
        format=trained.format,
        artifact_uri=trained.artifact_uri,
        params=trained.params,
        metrics=trained.metrics,
    )
    version.recipe = trained.recipe
    version.data_hash = trained.data_hash
    version.lineage = trained.lineage
    version.card = trained.card
    version.parent_version_id = parent_id
    session.flush()
    return version


def next_version_number(session: Session, name: str) -> int:
    """The number the next registered version of ``name`` will get (1 for a new model)."""
    model = session.scalar(select(RegisteredModel).where(RegisteredModel.name == name))
    if model is None:
        return 1
    versions = session.scalars(
        select(ModelVersion.version).where(ModelVersion.model_id == model.id)
    ).all()
    return max(versions, default=0) + 1


def list_versions(session: Session, name: str) -> list[ModelVersion]:
    model = _model(session, name)
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id == model.id)
            .order_by(ModelVersion.version)
        )
    )


def aliases_of(session: Session, name: str) -> dict[str, int]:
    """Alias -> version number for one model."""
    model = _model(session, name)
    rows = session.execute(
        select(ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, ModelAlias.model_version_id == ModelVersion.id)
        .where(ModelAlias.model_id == model.id)
        .order_by(ModelAlias.alias)
    ).all()
    return {alias: version for alias, version in rows}


def move_alias(session: Session, ref: VersionRef | str, alias: str, note: str = "") -> AliasMove:
    """Point ``alias`` of the model at the version ``ref`` names, keeping the history."""
    _check_alias(alias)
    if alias.isdigit():
        raise InvalidRequest("an alias cannot be a number", param="alias")
    model, version = resolve(session, ref)
    pointer = session.get(ModelAlias, (model.id, alias))
    previous_id = pointer.model_version_id if pointer is not None else None
    now = utcnow()
    if pointer is None:
        session.add(
            ModelAlias(model_id=model.id, alias=alias, model_version_id=version.id, updated_at=now)
        )
    else:
        pointer.model_version_id = version.id
        pointer.updated_at = now
    session.add(
        ModelAliasMove(
            id=new_id("mov"),
            model_id=model.id,
            alias=alias,
            from_version_id=previous_id,
            to_version_id=version.id,
            note=note,
            moved_at=now,
        )
    )
    session.flush()
    previous = session.get(ModelVersion, previous_id) if previous_id else None
    return AliasMove(alias, previous.version if previous else None, version.version, now, note)


def alias_history(session: Session, name: str) -> list[AliasMove]:
    model = _model(session, name)
    numbers = dict(
        session.execute(
            select(ModelVersion.id, ModelVersion.version).where(ModelVersion.model_id == model.id)
        ).all()
    )
    moves = session.scalars(
        select(ModelAliasMove)
        .where(ModelAliasMove.model_id == model.id)
        .order_by(ModelAliasMove.moved_at, ModelAliasMove.id)
    )
    return [
        AliasMove(
            m.alias,
            numbers.get(m.from_version_id) if m.from_version_id else None,
            numbers[m.to_version_id],
            m.moved_at,
            m.note,
        )
        for m in moves
    ]
