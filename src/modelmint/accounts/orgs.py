"""Organisations: the customers whose keys call models and who get billed."""

from __future__ import annotations

import re

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelmint.accounts.keys import check_limits
from modelmint.errors import Conflict, InvalidRequest, NotFound
from modelmint.ids import new_id
from modelmint.storage.tables import Organization

__all__ = ["create_org", "ensure_org", "get_org", "list_orgs", "set_org_limits"]

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")


def _check_name(name: str) -> str:
    name = name.strip()
    if not _NAME.fullmatch(name):
        raise InvalidRequest(
            "organisation name must be 1-100 letters, digits, spaces, '.', '_' or '-'",
            param="name",
        )
    return name


def create_org(session: Session, name: str) -> Organization:
    name = _check_name(name)
    if session.scalar(select(Organization).where(Organization.name == name)) is not None:
        raise Conflict(f"organisation {name!r} already exists", param="name")
    org = Organization(id=new_id("org"), name=name)
    session.add(org)
    try:
        session.flush()
    except IntegrityError as exc:  # created concurrently, between the check and the insert
        raise Conflict(f"organisation {name!r} already exists", param="name") from exc
    return org


def ensure_org(session: Session, name_or_id: str) -> Organization:
    """The organisation with this name or id, created (named so) if missing.

    Only for callers that say they want an organisation created (demo seeding,
    ``keys create --create-org``): everything else refuses an unknown name with
    ``get_org``, so that a typo never becomes a customer with no plan.
    """
    existing = _find_org(session, name_or_id)
    return existing if existing is not None else create_org(session, name_or_id)


def get_org(session: Session, name_or_id: str) -> Organization:
    org = _find_org(session, name_or_id)
    if org is None:
        raise NotFound(f"no organisation named {name_or_id!r}", param="organization")
    return org


def _find_org(session: Session, name_or_id: str) -> Organization | None:
    return session.scalar(
        select(Organization).where(
            or_(Organization.id == name_or_id, Organization.name == name_or_id)
        )
    )


def list_orgs(session: Session) -> list[Organization]:
    return list(session.scalars(select(Organization).order_by(Organization.created_at)))


def set_org_limits(
    session: Session,
    org: Organization,
    *,
    rpm_limit: int | None,
    tpm_limit: int | None,
    max_concurrent: int | None,
) -> Organization:
    """Replace the organisation's shared limits (None removes a limit)."""
    check_limits(rpm=rpm_limit, tpm=tpm_limit, concurrent=max_concurrent)
    org.rpm_limit, org.tpm_limit, org.max_concurrent = rpm_limit, tpm_limit, max_concurrent
    session.flush()
    return org
