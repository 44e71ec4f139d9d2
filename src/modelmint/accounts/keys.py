"""API keys: created once, shown once, stored only as a SHA-256 hash.

Keys carry 256 bits of randomness, so a fast hash is enough: no password-style
stretching is needed to resist guessing, and the hot path can hash every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from modelmint.clock import utcnow
from modelmint.errors import Conflict, InvalidRequest, NotFound
from modelmint.ids import new_id
from modelmint.storage.tables import ApiKey, Organization, PaymentAccount

__all__ = [
    "MAX_LIMIT",
    "KeyInfo",
    "check_limits",
    "create_key",
    "hash_secret",
    "list_keys",
    "lookup_key",
    "lookup_key_by_hash",
    "redact_secrets",
    "revoke_key",
]

SECRET_PREFIX = "mm-"
# How much of the secret is kept in clear to tell keys apart: "mm-" + 8 characters.
SHOWN_CHARS = 11
# A secret: its shown prefix, then the rest (base64url), which must never be logged.
_SECRET = re.compile(r"(mm-[A-Za-z0-9_-]{8})[A-Za-z0-9_-]+")
_ID_CHARS = len("key_") + 24  # a key id: modelmint.ids.new_id, 12 random bytes in hex


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """What the gateway needs to know about a key, safe to cache in memory."""

    id: str
    organization_id: str
    prefix: str
    models: frozenset[str] | None
    rpm_limit: int | None
    tpm_limit: int | None
    expires_at: datetime | None
    revoked: bool
    max_concurrent: int | None = None
    # The organisation's own limits, shared by all its keys.
    org_rpm_limit: int | None = None
    org_tpm_limit: int | None = None
    org_max_concurrent: int | None = None
    # Dunning (``modelmint.payments``): the organisation's invoice is overdue past its
    # grace period, so its keys answer 402 payment_required until it is paid.
    payment_blocked: bool = False

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def usable_at(self, now: datetime) -> bool:
        return not self.revoked and (self.expires_at is None or now < self.expires_at)

    @classmethod
    def of(
        cls, row: ApiKey, org: Organization | None = None, *, payment_blocked: bool = False
    ) -> KeyInfo:
        return cls(
            id=row.id,
            organization_id=row.organization_id,
            prefix=row.prefix,
            models=frozenset(row.models) if row.models is not None else None,
            rpm_limit=row.rpm_limit,
            tpm_limit=row.tpm_limit,
            expires_at=row.expires_at,
            revoked=row.revoked_at is not None,
            max_concurrent=row.max_concurrent,
            org_rpm_limit=org.rpm_limit if org else None,
            org_tpm_limit=org.tpm_limit if org else None,
            org_max_concurrent=org.max_concurrent if org else None,
            payment_blocked=payment_blocked,
        )


# Limits are stored in 32-bit integer columns.
MAX_LIMIT = 2**31 - 1


def check_limits(**limits: int | None) -> None:
    """Refuse a limit that is not a positive integer the database can hold."""
    for param, value in limits.items():
        if value is not None and not 0 < value <= MAX_LIMIT:
            raise InvalidRequest(
                f"{param} must be a positive integer up to {MAX_LIMIT}", param=param
            )


def redact_secrets(text: str) -> str:
    """``text`` with every API key secret in it cut down to its shown prefix."""
    return _SECRET.sub(r"\1...", text) if SECRET_PREFIX in text else text


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    session: Session,
    organization: Organization,
    *,
    name: str = "",
    models: list[str] | None = None,
    expires_at: datetime | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    max_concurrent: int | None = None,
) -> tuple[ApiKey, str]:
    """Create a key; returns the row and the secret, which is never retrievable again."""
    if organization.deleted_at is not None:
        raise Conflict(f"organisation {organization.name!r} was deleted", param="organization")
    check_limits(rpm=rpm_limit, tpm=tpm_limit, concurrent=max_concurrent)
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidRequest("expiry must carry a timezone (UTC)", param="expires")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidRequest("expiry date is in the past", param="expires")
    if models is not None:
        models = sorted({m.strip() for m in models if m.strip()})
        if not models:
            raise InvalidRequest("models list is empty", param="models")
    secret = SECRET_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id("key"),
        organization_id=organization.id,
        name=name,
        prefix=secret[:SHOWN_CHARS],
        key_hash=hash_secret(secret),
        models=models,
        rpm_limit=rpm_limit,
        tpm_limit=tpm_limit,
        max_concurrent=max_concurrent,
        expires_at=expires_at,
    )
    session.add(row)
    session.flush()
    return row, secret


def lookup_key(session: Session, secret: str) -> KeyInfo | None:
    """The key whose secret this is, revoked and expired keys included, or None."""
    return lookup_key_by_hash(session, hash_secret(secret))


def lookup_key_by_hash(session: Session, digest: str) -> KeyInfo | None:
    """The key with this secret hash, with its organisation's limits, in one query."""
    found = session.execute(
        select(ApiKey, Organization, PaymentAccount.blocked_at)
        .join(Organization, ApiKey.organization_id == Organization.id)
        .outerjoin(PaymentAccount, PaymentAccount.organization_id == Organization.id)
        .where(ApiKey.key_hash == digest)
    ).first()
    # The lookup is by hash, so timing reveals nothing of the secret; compare anyway to
    # make the equality explicit and constant-time.
    if found is None or not secrets.compare_digest(found[0].key_hash, digest):
        return None
    return KeyInfo.of(found[0], found[1], payment_blocked=found[2] is not None)


def list_keys(session: Session, organization: Organization | None = None) -> list[ApiKey]:
    query = select(ApiKey).order_by(ApiKey.created_at)
    if organization is not None:
        query = query.where(ApiKey.organization_id == organization.id)
    return list(session.scalars(query))


def revoke_key(session: Session, reference: str) -> ApiKey:
    """Revoke by id (``key_...``), by the shown prefix (``mm-Ab12Cd34``) or by the
    full secret, which is found by its hash and never repeated in an error."""
    if _looks_like_secret(reference):
        row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_secret(reference)))
        if row is None:
            # Even a wrong secret may be one character off a real one: not echoed.
            raise NotFound(
                f"no API key has the secret given (starting {reference[:SHOWN_CHARS]})",
                param="key",
            )
    else:
        row = _by_id_or_prefix(session, reference)
    if row.revoked_at is None:
        row.revoked_at = utcnow()
    return row


def _looks_like_secret(reference: str) -> bool:
    """More than the shown prefix of a secret: to be hashed, and never shown."""
    return reference.startswith(SECRET_PREFIX) and len(reference) > SHOWN_CHARS


def _by_id_or_prefix(session: Session, reference: str) -> ApiKey:
    rows = list(
        session.scalars(
            select(ApiKey).where(or_(ApiKey.id == reference, ApiKey.prefix == reference))
        )
    )
    if not rows:
        # Longer than any id: perhaps a secret pasted without its "mm-"; not echoed whole.
        shown = reference if len(reference) <= _ID_CHARS else reference[:SHOWN_CHARS] + "..."
        raise NotFound(f"no API key {shown!r}", param="key")
    if len(rows) > 1:
        raise InvalidRequest(f"prefix {reference!r} matches several keys; use the key id")
    return rows[0]
