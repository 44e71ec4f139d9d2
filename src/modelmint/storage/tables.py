"""The relational schema. Parts own the meaning of their tables; this module owns their shape.

Changing a table means a new Alembic revision in ``storage/migrations/versions``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from modelmint.storage.db import utcnow
from modelmint.storage.types import UTCDateTime

__all__ = [
    "ApiKey",
    "Base",
    "Deployment",
    "ModelVersion",
    "Organization",
    "RegisteredModel",
    "UsageRecord",
    "UsageRollup",
]

# Stable constraint names let Alembic alter them on both SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime(),
        dict[str, Any]: JSON,
        list[str]: JSON,
    }


class Organization(Base):
    __tablename__ = "organizations"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # Limits shared by all of the organisation's keys; NULL means unlimited.
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A customer's API key. Only a SHA-256 hash of the secret is kept, never the secret."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    organization_id: Mapped[str] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    # The first characters of the secret, safe to show so people can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(24))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # Public model names this key may call; NULL means every model.
    models: Mapped[list[str] | None] = mapped_column(nullable=True)
    rpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm_limit: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_concurrent: Mapped[int | None] = mapped_column(Integer, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RegisteredModel(Base):
    """A named model, e.g. ``smollm2-135m-instruct``; its versions hold the artifacts."""

    __tablename__ = "registered_models"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    # What the model does: chat, embedding (later: classification, recommendation).
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
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


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
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class UsageRecord(Base):
    """One request that reached a model: who, which model, how many tokens, how it ended."""

    __tablename__ = "usage_records"
    __table_args__ = (Index("ix_usage_records_org_created", "organization_id", "created_at"),)

    # The request id: unique, so a retried write can never count a request twice.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)
    organization_id: Mapped[str] = mapped_column(String(40))
    api_key_id: Mapped[str] = mapped_column(String(40), index=True)
    model: Mapped[str] = mapped_column(String(200))
    deployment_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    model_version_id: Mapped[str | None] = mapped_column(String(40), nullable=True)
    endpoint: Mapped[str] = mapped_column(String(40))
    status_code: Mapped[int] = mapped_column(Integer)
    input_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    output_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    streamed: Mapped[bool] = mapped_column(Boolean, default=False)
    # True when the upstream reported no usage and we counted with our own tokenizer.
    usage_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    finish_reason: Mapped[str | None] = mapped_column(String(40), nullable=True)


class UsageRollup(Base):
    """Hourly sums of usage, kept by the metering writer in the same transaction as the
    usage rows, so billing and analytics read small tables however large raw usage grows."""

    __tablename__ = "usage_rollups_hourly"

    hour: Mapped[datetime] = mapped_column(primary_key=True)
    organization_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    # "" when unknown: primary key columns cannot be NULL.
    model_version_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    # requests, errors, input_tokens, output_tokens, latency_ms
    metric: Mapped[str] = mapped_column(String(40), primary_key=True)
    quantity: Mapped[int] = mapped_column(BigInteger, default=0)
