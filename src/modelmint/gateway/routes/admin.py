"""Admin API under /admin, protected by the admin token."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint import accounts, registry
from modelmint.accounts.keys import MAX_LIMIT
from modelmint.billing.serialization import decimal_text
from modelmint.erasure import delete_organization as erase_organization
from modelmint.gateway.deps import AdminDep
from modelmint.platform import PlatformDep
from modelmint.storage.tables import ApiKey, Organization, UsageRecord

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep])


class OrganizationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)


class OrganizationPublic(BaseModel):
    id: str
    name: str
    rpm: int | None = None
    tpm: int | None = None
    concurrent: int | None = None
    created_at: datetime
    deleted_at: datetime | None = None

    @classmethod
    def of(cls, row: Organization) -> OrganizationPublic:
        return cls(
            id=row.id,
            name=row.name,
            rpm=row.rpm_limit,
            tpm=row.tpm_limit,
            concurrent=row.max_concurrent,
            created_at=row.created_at,
            deleted_at=row.deleted_at,
        )


class OrganizationLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    concurrent: int | None = Field(default=None, ge=1, le=MAX_LIMIT)


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    organization: str = Field(min_length=1, description="organisation name or id")
    name: str = ""
    models: list[str] | None = None
    expires_at: datetime | None = None
    rpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    tpm: int | None = Field(default=None, ge=1, le=MAX_LIMIT)
    concurrent: int | None = Field(default=None, ge=1, le=MAX_LIMIT)


class KeyPublic(BaseModel):
    id: str
    organization_id: str
    name: str
    prefix: str
    models: list[str] | None
    rpm: int | None
    tpm: int | None
    concurrent: int | None
    expires_at: datetime | None
    revoked_at: datetime | None
    created_at: datetime

    @classmethod
    def of(cls, row: ApiKey) -> KeyPublic:
        return cls(
            id=row.id,
            organization_id=row.organization_id,
            name=row.name,
            prefix=row.prefix,
            models=row.models,
            rpm=row.rpm_limit,
            tpm=row.tpm_limit,
            concurrent=row.max_concurrent,
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
            created_at=row.created_at,
        )


class KeyCreated(KeyPublic):
    key: str = Field(description="the secret; shown once, never again")


class RemoteModelCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    base_url: str
    api_key_env: str | None = None
    upstream_model: str | None = None
    task: str = "chat"
    fallback: str | None = None
    timeout_s: float | None = Field(default=None, gt=0)
    max_retries: int | None = Field(default=None, ge=0, le=10)


def _aware(value: datetime | None) -> datetime | None:
    from datetime import UTC

    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@router.get("/organizations")
async def list_organizations(platform: PlatformDep) -> list[OrganizationPublic]:
    rows = await platform.in_session(accounts.list_orgs)
    return [OrganizationPublic.of(r) for r in rows]


@router.post("/organizations", status_code=201)
async def create_organization(
    body: OrganizationCreate, platform: PlatformDep
) -> OrganizationPublic:
    row = await platform.in_session(lambda s: accounts.create_org(s, body.name))
    return OrganizationPublic.of(row)


@router.put("/organizations/{organization}/limits")
async def set_organization_limits(
    organization: str, body: OrganizationLimits, platform: PlatformDep
) -> OrganizationPublic:
    """Replace the limits the organisation's keys share (a field left out removes it)."""

    def work(session: Session) -> Organization:
        org = accounts.get_org(session, organization)
        return accounts.set_org_limits(
            session, org, rpm_limit=body.rpm, tpm_limit=body.tpm, max_concurrent=body.concurrent
        )

    return OrganizationPublic.of(await platform.in_session(work))


@router.delete("/organizations/{organization}")
async def delete_organization(organization: str, platform: PlatformDep) -> dict[str, object]:
    """Revoke the organisation's keys, erase its samples and feedback, end its plan.

    Usage, charges and invoices are kept (the books); see ``modelmint.erasure``.
    """
    erasure = await platform.in_session(lambda s: erase_organization(s, organization))
    for key_id in erasure.revoked_key_ids:
        platform.keys.forget(key_id)
    return erasure.to_json()


@router.get("/keys")
async def list_keys(
    platform: PlatformDep, organization: str | None = Query(default=None)
) -> list[KeyPublic]:
    def work(session: Session) -> list[ApiKey]:
        org = accounts.get_org(session, organization) if organization else None
        return accounts.list_keys(session, org)

    return [KeyPublic.of(row) for row in await platform.in_session(work)]


@router.post("/keys", status_code=201)
async def create_key(body: KeyCreate, platform: PlatformDep) -> KeyCreated:
    def work(session: Session) -> tuple[ApiKey, str]:
        org = accounts.get_org(session, body.organization)
        return accounts.create_key(
            session,
            org,
            name=body.name,
            models=body.models,
            expires_at=_aware(body.expires_at),
            rpm_limit=body.rpm,
            tpm_limit=body.tpm,
            max_concurrent=body.concurrent,
        )

    row, secret = await platform.in_session(work)
    return KeyCreated(**KeyPublic.of(row).model_dump(), key=secret)


@router.post("/keys/{key}/revoke")
async def revoke_key(key: str, platform: PlatformDep) -> KeyPublic:
    row = await platform.in_session(lambda s: accounts.revoke_key(s, key))
    platform.keys.forget(row.id)
    return KeyPublic.of(row)


@router.get("/models")
async def list_models(platform: PlatformDep) -> list[dict[str, Any]]:
    routes = platform.router.routes
    return [
        {
            "name": name,
            "task": route.task,
            "deployments": [
                {
                    "id": d.id,
                    "model": d.model_name,
                    "version": d.version,
                    "backend": d.backend,
                    "weight": d.weight,
                    "fallback": d.fallback,
                }
                for d in route.deployments
            ],
        }
        for name, route in sorted(routes.items())
    ]


@router.post("/models/remote", status_code=201)
async def add_remote_model(body: RemoteModelCreate, platform: PlatformDep) -> dict[str, Any]:
    deployment = await platform.in_session(
        lambda s: registry.add_remote_model(
            s,
            body.name,
            base_url=body.base_url,
            api_key_env=body.api_key_env,
            upstream_model=body.upstream_model,
            task=body.task,
            fallback=body.fallback,
            timeout_s=body.timeout_s,
            max_retries=body.max_retries,
        )
    )
    await platform.router.refresh()
    return {"name": deployment.public_name, "deployment_id": deployment.id}


@router.delete("/models/{name:path}")
async def remove_model(name: str, platform: PlatformDep) -> dict[str, Any]:
    retired = await platform.in_session(lambda s: registry.remove_public_name(s, name))
    await platform.router.refresh()
    return {"name": name, "deployments_retired": retired}


@router.get("/usage")
async def list_usage(
    platform: PlatformDep,
    organization: str | None = Query(default=None),
    limit: int = Query(default=100, ge=1, le=10_000),
) -> list[dict[str, Any]]:
    def work(session: Session) -> list[dict[str, Any]]:
        query = select(UsageRecord).order_by(UsageRecord.created_at.desc()).limit(limit)
        if organization:
            org: Organization = accounts.get_org(session, organization)
            query = query.where(UsageRecord.organization_id == org.id)
        return [_usage_json(row) for row in session.scalars(query)]

    return await platform.in_session(work)


def _usage_json(row: UsageRecord) -> dict[str, Any]:
    """A usage record with its money as plain decimal strings, like every billing route
    (``"0.000000000000"``, never ``"0E-12"``)."""
    fields = {c.name: getattr(row, c.name) for c in UsageRecord.__table__.columns}
    for name in ("charge", "cost"):
        if fields[name] is not None:
            fields[name] = decimal_text(fields[name])
    return fields
