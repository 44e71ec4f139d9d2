"""What happened when gateways started each deployment, and what a public name serves.

A gateway records the first start of a deployment that worked, and any start that
failed. A failure rolls its rollout back to the deployments it replaced, so a version
that cannot run never leaves a public name without the one that could; when there is
nothing to go back to, the failed deployment stays routed and answers 503. Either way
the failure is reported by ``deployment_statuses`` (``modelmint models list``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from modelmint.clock import utcnow
from modelmint.storage.tables import Deployment, ModelVersion, RegisteredModel

__all__ = [
    "DeploymentStatus",
    "deployment_statuses",
    "record_start_failure",
    "record_started",
]

# Enough for any engine's message; a traceback-sized one is cut, not stored whole.
_MAX_ERROR = 2000

Status = Literal["serving", "starting", "failed"]


@dataclass(frozen=True, slots=True)
class DeploymentStatus:
    public_name: str
    task: str
    model_name: str
    version: int
    backend: str
    target: str
    weight: int  # share of the name's traffic; 0 once a failed rollout was rolled back
    fallback: str | None
    status: Status
    error: str | None


def record_started(session: Session, deployment_id: str) -> None:
    """Note the first time a gateway had the deployment's backend running."""
    session.execute(
        update(Deployment)
        .where(Deployment.id == deployment_id, Deployment.started_at.is_(None))
        .values(started_at=utcnow())
    )


def record_start_failure(session: Session, deployment_id: str, error: str) -> bool:
    """Mark the deployment failed; if its rollout replaced deployments, bring them back.

    Returns whether the route table changed beyond the failure itself (a rollback), so
    the gateway re-reads it at once and the previous deployment never stops serving.
    Every gateway that fails the same deployment may call this: only the first counts.
    """
    failed = session.scalar(
        select(Deployment).where(Deployment.id == deployment_id).with_for_update()
    )
    if failed is None or not failed.active or failed.failed_at is not None:
        return False
    now = utcnow()
    failed.failed_at = now
    failed.error = error[:_MAX_ERROR]
    failed.updated_at = now  # other gateways stop trying it within a second
    previous = [
        row
        for row in (session.get(Deployment, dep_id) for dep_id in failed.replaces)
        if row is not None and not row.active and row.failed_at is None
    ]
    if not previous:
        return False
    # The whole rollout goes (a canary's main version too): half a rollout is neither
    # what was asked for nor what ran before.
    rollout = session.scalars(
        select(Deployment).where(
            Deployment.public_name == failed.public_name, Deployment.active.is_(True)
        )
    )
    for row in rollout:
        row.active = False
        row.updated_at = now
    for row in previous:
        row.active = True
        row.updated_at = now
    return True


def deployment_statuses(session: Session) -> list[DeploymentStatus]:
    """Every active deployment, plus the failed rollout a name was rolled back from
    (until a newer rollout of that name)."""
    rows = session.execute(
        select(Deployment, ModelVersion, RegisteredModel)
        .join(ModelVersion, Deployment.model_version_id == ModelVersion.id)
        .join(RegisteredModel, ModelVersion.model_id == RegisteredModel.id)
        .where(Deployment.active.is_(True) | Deployment.failed_at.is_not(None))
        .order_by(Deployment.public_name, Deployment.created_at)
    ).all()
    # Rows come oldest first, so the last active one of a name is its newest.
    newest_active = {dep.public_name: dep.created_at for dep, _, _ in rows if dep.active}
    shown = []
    for dep, ver, model in rows:
        if not dep.active:
            newest = newest_active.get(dep.public_name)
            # A name removed, or deployed again since: that failure is history.
            if newest is None or dep.failed_at is None or dep.failed_at < newest:
                continue
        shown.append(
            DeploymentStatus(
                public_name=dep.public_name,
                task=model.task,
                model_name=model.name,
                version=ver.version,
                backend=dep.backend,
                target=ver.artifact_uri,
                weight=dep.weight if dep.active else 0,
                fallback=dep.fallback,
                status=_status(dep),
                error=dep.error if dep.failed_at is not None else None,
            )
        )
    return shown


def _status(dep: Deployment) -> Status:
    if dep.failed_at is not None:
        return "failed"
    return "serving" if dep.started_at is not None else "starting"
