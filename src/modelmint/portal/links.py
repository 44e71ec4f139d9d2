"""Sign-in links to the customer portal: unforgeable, expiring, single use.

A link's token is ``<link id>.<secret>``, the secret 256 random bits. The
``portal_links`` row keeps only a keyed digest of the secret, bound to the link's
organisation and expiry (HMAC-SHA256 keyed by the secret over them), so neither a
copy of the database nor an altered row signs anyone in. Signing in is one
conditional UPDATE that sets ``used_at`` only while it is unset and the link
unexpired: a link works once. The operator's CLI and the server need no shared key.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.errors import AuthenticationError, InvalidRequest
from modelmint.ids import new_id
from modelmint.storage.tables import PortalLink

__all__ = [
    "LOGIN_PATH",
    "MAX_TTL",
    "LinkRefused",
    "PortalLinkIssued",
    "create_link",
    "parse_ttl",
    "use_link",
]

# A link is for handing over now, not for keeping: a week at most.
MAX_TTL = timedelta(days=7)
LOGIN_PATH = "/portal/login"


class LinkRefused(AuthenticationError):
    code = "invalid_portal_link"


@dataclass(frozen=True, slots=True)
class PortalLinkIssued:
    organization: str
    token: str
    expires_at: datetime

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}{LOGIN_PATH}?token={self.token}"


def _digest(secret: str, organization_id: str, expires_at: datetime) -> str:
    message = f"{organization_id}|{int(expires_at.timestamp())}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def create_link(session: Session, org: str, ttl: timedelta, now: datetime) -> PortalLinkIssued:
    """A new sign-in link for ``org``, valid for ``ttl``."""
    if ttl < timedelta(seconds=1) or ttl > MAX_TTL:
        raise InvalidRequest(
            f"a portal link lives between a second and {MAX_TTL.days} days", param="ttl"
        )
    organization = accounts.get_org(session, org)
    expires_at = (now + ttl).replace(microsecond=0)
    secret = secrets.token_urlsafe(32)
    link = PortalLink(
        id=new_id("pl"),
        organization_id=organization.id,
        secret_digest=_digest(secret, organization.id, expires_at),
        expires_at=expires_at,
        created_at=now,
    )
    session.add(link)
    session.flush()
    return PortalLinkIssued(organization.name, f"{link.id}.{secret}", expires_at)


def use_link(session: Session, token: str, now: datetime) -> str:
    """Spend the link: the organisation id it signs in as, or ``LinkRefused``."""
    refused = LinkRefused("this sign-in link is invalid, expired or already used")
    link_id, _, secret = token.partition(".")
    link = session.get(PortalLink, link_id) if secret else None
    if link is None:
        raise refused
    expected = _digest(secret, link.organization_id, link.expires_at)
    if not hmac.compare_digest(expected, link.secret_digest):
        raise refused
    spent = session.execute(
        update(PortalLink)
        .where(PortalLink.id == link_id, PortalLink.used_at.is_(None), PortalLink.expires_at > now)
        .values(used_at=now)
    )
    if getattr(spent, "rowcount", 0) != 1:
        raise refused
    return link.organization_id


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> timedelta:
    """``"90s"``, ``"30m"``, ``"1h"``, ``"2d"`` or plain seconds."""
    value = text.strip().lower()
    unit = _UNITS.get(value[-1:])
    number = value[:-1] if unit is not None else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds):
        raise InvalidRequest(
            f"a link lifetime is a number with s, m, h or d (e.g. 1h), not {text!r}", param="ttl"
        )
    if not 1 <= seconds <= MAX_TTL.total_seconds():
        raise InvalidRequest(
            f"a portal link lives between a second and {MAX_TTL.days} days", param="ttl"
        )
    return timedelta(seconds=seconds)
