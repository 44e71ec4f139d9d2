"""API keys: list them, create one (its secret shown once, on that page only), revoke."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.clock import utcnow
from modelmint.dashboard.auth import CheckedForm, CurrentSession
from modelmint.dashboard.forms import Form
from modelmint.dashboard.rendering import BASE
from modelmint.dashboard.routing import DashboardRoute, page, redirect
from modelmint.errors import InvalidRequest, ModelMintError
from modelmint.platform import PlatformDep
from modelmint.storage.tables import ApiKey

__all__ = ["KeyRequest", "key_rows", "router"]

router = APIRouter(prefix=BASE, route_class=DashboardRoute)


def _status(row: ApiKey, now: datetime) -> str:
    if row.revoked_at is not None:
        return "revoked"
    if row.expires_at is not None and row.expires_at <= now:
        return "expired"
    return "active"


def key_rows(session: Session, organization: str | None) -> dict[str, Any]:
    """The keys (of one organisation, or all) and the organisations to pick from."""
    orgs = accounts.list_orgs(session)
    names = {org.id: org.name for org in orgs}
    chosen = accounts.get_org(session, organization) if organization else None
    now = utcnow()
    keys = [
        {
            "id": row.id,
            "organization": names.get(row.organization_id, row.organization_id),
            "name": row.name,
            "prefix": row.prefix,
            "models": ", ".join(row.models) if row.models is not None else "all",
            "rpm": row.rpm_limit,
            "tpm": row.tpm_limit,
            "concurrent": row.max_concurrent,
            "expires_at": row.expires_at,
            "revoked_at": row.revoked_at,
            "created_at": row.created_at,
            "status": _status(row, now),
        }
        for row in reversed(accounts.list_keys(session, chosen))
    ]
    return {
        "keys": keys,
        "organizations": [org.name for org in orgs],
        "organization": chosen.name if chosen else "",
    }


class KeyRequest:
    """A key-creation form, checked: what ``accounts.create_key`` takes."""

    def __init__(self, form: Form) -> None:
        self.organization = form.text("organization")
        if not self.organization:
            raise InvalidRequest("choose an organisation", param="organization")
        self.name = form.text("name")[:200]
        models = [m.strip() for m in form.text("models").split(",") if m.strip()]
        self.models = models or None
        self.expires_at = _expiry(form.optional("expires"))
        self.rpm = form.integer("rpm")
        self.tpm = form.integer("tpm")
        self.concurrent = form.integer("concurrent")

    def create(self, session: Session) -> tuple[ApiKey, str]:
        org = accounts.get_org(session, self.organization)
        return accounts.create_key(
            session,
            org,
            name=self.name,
            models=self.models,
            expires_at=self.expires_at,
            rpm_limit=self.rpm,
            tpm_limit=self.tpm,
            max_concurrent=self.concurrent,
        )


def _expiry(value: str | None) -> datetime | None:
    """A date (``2027-01-01``, the key ends at its start, UTC) or an ISO instant."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest("expiry must be a date such as 2027-01-01", param="expires") from None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def _context(
    data: dict[str, Any],
    *,
    created: dict[str, str] | None = None,
    error: str = "",
    form: Form | None = None,
    revoked: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "title": "API keys",
        "active": "keys",
        **data,
        "created": created,
        "error": error,
        "form": dict(form or {}),
        "revoked": revoked,
    }


@router.get("/keys")
async def keys_page(
    request: Request,
    session: CurrentSession,
    platform: PlatformDep,
    organization: str | None = Query(default=None),
    revoked: str | None = Query(default=None),
) -> Response:
    data = await platform.in_session(lambda s: key_rows(s, organization or None))
    revoked_row = next(
        (k for k in data["keys"] if k["id"] == revoked and k["status"] == "revoked"), None
    )
    return page(request, session, "keys.html", _context(data, revoked=revoked_row))


@router.post("/keys")
async def create_key(
    request: Request, session: CurrentSession, platform: PlatformDep, form: CheckedForm
) -> Response:
    try:
        row, secret = await platform.in_session(KeyRequest(form).create)
    except ModelMintError as error:
        data = await platform.in_session(lambda s: key_rows(s, None))
        context = _context(data, error=error.message, form=form)
        return page(request, session, "keys.html", context, status_code=error.status_code)
    data = await platform.in_session(lambda s: key_rows(s, None))
    created = {"id": row.id, "prefix": row.prefix, "secret": secret}
    return page(request, session, "keys.html", _context(data, created=created), status_code=201)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(platform: PlatformDep, key_id: str) -> Response:
    row = await platform.in_session(lambda s: accounts.revoke_key(s, key_id))
    # This process stops honouring the key at once; the others within the cache TTL.
    platform.keys.forget(row.id)
    return redirect(f"{BASE}/keys?revoked={row.id}")
