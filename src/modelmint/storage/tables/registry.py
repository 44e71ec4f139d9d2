"""The model registry's rows: models, their versions and aliases, and the deployments that
make a version callable under a public name."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from modelmint.clock import utcnow
from modelmint.storage.tables.base import Base
from modelmint.storage.types import ExactDecimal

__all__ = ["Deployment", "ModelAlias", "ModelAliasMove", "ModelVersion", "RegisteredModel"]


class RegisteredModel(Base):
    """A named model, e.g. ``smollm2-135m-instruct``; its versions hold the artifacts."""

    __tablename__ = "registered_models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # What the model does: chat, embedding, classification, recommendation.
    task: Mapped[str] = mapped_column(String(40))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_id", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("registered_models.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    # gguf, sentence-transformers, remote, ...: tells the serving layer how to load it.
    format: Mapped[str] = mapped_column(String(40))
    # A file path, a package resource or an upstream base URL.
    artifact_uri: Mapped[str] = mapped_column(Text)
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # Trained versions: the recipe, a fingerprint of the data, where it came from
    # (data source, dataset name@version, parent version) and the generated model card.
    recipe: Mapped[str | None] = mapped_column(String(60), nullable=True)
    data_hash: Mapped[str | None] = mapped_column(String(80), nullable=True)
    parent_version_id: Mapped[str | None] = mapped_column(
        ForeignKey("model_versions.id"), nullable=True
    )
    lineage: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    card: Mapped[str] = mapped_column(Text, default="", server_default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAlias(Base):
    """A movable name for one version of a model (``production``, ``staging``)."""

    __tablename__ = "model_aliases"

    model_id: Mapped[str] = mapped_column(ForeignKey("registered_models.id"), primary_key=True)
    alias: Mapped[str] = mapped_column(String(60), primary_key=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelAliasMove(Base):
    """Append-only history of alias moves: who pointed ``production`` where, and when."""

    __tablename__ = "model_alias_moves"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_id: Mapped[str] = mapped_column(ForeignKey("registered_models.id"), index=True)
    alias: Mapped[str] = mapped_column(String(60))
    from_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    to_version_id: Mapped[str] = mapped_column(String(40))
    note: Mapped[str] = mapped_column(Text, default="")
    moved_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    """A model version made callable under a public name, on one backend.

    Several active deployments may share a public name; ``weight`` splits the traffic.
    """

    __tablename__ = "deployments"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    public_name: Mapped[str] = mapped_column(String(200), index=True)
    model_version_id: Mapped[str] = mapped_column(ForeignKey("model_versions.id"), index=True)
    # llama_cpp, sentence_transformer, openai_remote
    backend: Mapped[str] = mapped_column(String(40))
    # Backend settings (upstream URL, env var of its key, timeouts); never a secret itself.
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    weight: Mapped[int] = mapped_column(Integer, default=100)
    # Public name to try when this deployment's backend fails before answering.
    fallback: Mapped[str | None] = mapped_column(String(200), nullable=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # What serving costs: a local engine's hardware per hour (shared among requests by
    # measured engine time), or a remote upstream's prices per million tokens.
    cost_per_hour: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    cost_per_1m_input: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    cost_per_1m_output: Mapped[Decimal | None] = mapped_column(ExactDecimal(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # Bumped on every change, so gateways notice a new weight or cost within a second.
    updated_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # The deployments this one's rollout retired: active again if it cannot start.
    replaces: Mapped[list[str]] = mapped_column(default=list)
    # When a gateway first had its backend running; NULL: not started yet.
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    # When a gateway failed to start it, and why: such a deployment is not tried again.
    failed_at: Mapped[datetime | None] = mapped_column(nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
