"""Names for the ids rollups are keyed by: organisations, model versions, deployments."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint.storage.tables import Deployment, ModelVersion, Organization, RegisteredModel

__all__ = ["DeploymentInfo", "deployment_info", "organization_names", "version_labels"]

UNKNOWN = "(unknown)"


def organization_names(session: Session, ids: Collection[str] | None = None) -> dict[str, str]:
    """Organisation id -> name (all organisations when ``ids`` is None)."""
    query = select(Organization.id, Organization.name)
    if ids is not None:
        query = query.where(Organization.id.in_(list(ids)))
    return {row.id: row.name for row in session.execute(query)}


def version_labels(session: Session, ids: Collection[str]) -> dict[str, str]:
    """Model version id -> ``"<model name> v<N>"``."""
    wanted = [i for i in ids if i]
    if not wanted:
        return {}
    rows = session.execute(
        select(ModelVersion.id, ModelVersion.version, RegisteredModel.name)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.model_id)
        .where(ModelVersion.id.in_(wanted))
    )
    return {row.id: f"{row.name} v{row.version}" for row in rows}


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    """What analytics needs to know about a deployment: its name and its cost rates."""

    id: str
    public_name: str
    backend: str
    model_version_id: str
    cost_per_hour: Decimal | None
    cost_per_1m_input: Decimal | None
    cost_per_1m_output: Decimal | None
    created_at: datetime
    updated_at: datetime | None
    active: bool


def deployment_info(
    session: Session, ids: Collection[str] | None = None
) -> dict[str, DeploymentInfo]:
    """Deployment id -> its name, backend and cost rates (all when ``ids`` is None)."""
    query = select(Deployment)
    if ids is not None:
        query = query.where(Deployment.id.in_([i for i in ids if i]))
    return {
        row.id: DeploymentInfo(
            id=row.id,
            public_name=row.public_name,
            backend=row.backend,
            model_version_id=row.model_version_id,
            cost_per_hour=row.cost_per_hour,
            cost_per_1m_input=row.cost_per_1m_input,
            cost_per_1m_output=row.cost_per_1m_output,
            created_at=row.created_at,
            updated_at=row.updated_at,
            active=row.active,
        )
        for row in session.scalars(query)
    }
