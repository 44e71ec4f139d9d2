"""Deleting an organisation: what is erased, what is kept, and why.

Erased at once, in one transaction: the customer's content and access. Every API
key is revoked (running gateways stop accepting them within their cache TTL, 1 s
by default), captured request samples and capture policies are deleted, feedback
rows (which may hold corrected outputs the customer typed) are deleted, and a
running subscription ends now so no further fee accrues.

Kept: usage records, charges, wallets, ledger entries and invoices. They are the
books: an invoice already sent must stay reproducible, and revenue analytics of
past periods must not change when a customer leaves. They hold token counts and
money, never prompt text. Feedback datasets already built from the organisation's
requests are reported (their names), not rewritten: a dataset version is immutable
and hashed, and a model trained on it has already learnt from it; the operator
decides whether to rebuild without them.

The row itself stays, marked ``deleted_at``, so its name cannot be reused by a new
customer who would then see the old one's invoices, and so the books still name
who was billed. Deleting twice is a no-op that reports what it found.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from modelmint.accounts.orgs import get_org
from modelmint.billing.errors import SubscriptionConflict
from modelmint.billing.store import BillingStore
from modelmint.clock import utcnow
from modelmint.feedback.samples import delete_organization_samples
from modelmint.storage.tables import ApiKey, Feedback, FeedbackDataset

__all__ = ["Erasure", "delete_organization"]


@dataclass(frozen=True, slots=True)
class Erasure:
    organization_id: str
    name: str
    deleted_at: datetime
    already_deleted: bool
    revoked_key_ids: list[str] = field(default_factory=list)
    samples_deleted: int = 0
    feedback_deleted: int = 0
    subscription_ended: bool = False
    # Datasets built earlier that contain some of this organisation's requests.
    datasets_with_its_requests: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "organization_id": self.organization_id,
            "name": self.name,
            "deleted_at": self.deleted_at.isoformat(),
            "already_deleted": self.already_deleted,
            "revoked_keys": self.revoked_key_ids,
            "samples_deleted": self.samples_deleted,
            "feedback_deleted": self.feedback_deleted,
            "subscription_ended": self.subscription_ended,
            "datasets_with_its_requests": self.datasets_with_its_requests,
        }


def delete_organization(session: Session, name_or_id: str) -> Erasure:
    org = get_org(session, name_or_id)
    if org.deleted_at is not None:
        return Erasure(org.id, org.name, org.deleted_at, already_deleted=True)
    now = utcnow()
    org.deleted_at = now
    revoked = list(
        session.scalars(
            update(ApiKey)
            .where(ApiKey.organization_id == org.id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now)
            .returning(ApiKey.id)
        )
    )
    # The dataset lookup needs the feedback rows' request ids, so it runs first.
    request_ids = set(
        session.scalars(select(Feedback.request_id).where(Feedback.organization_id == org.id))
    )
    datasets = _datasets_containing(session, request_ids)
    feedback = session.execute(delete(Feedback).where(Feedback.organization_id == org.id))
    samples = delete_organization_samples(session, org.id)
    try:
        BillingStore(session).subscriptions.cancel(org.id, now)
        ended = True
    except SubscriptionConflict:  # on no plan, or its plan already ended
        ended = False
    session.flush()
    return Erasure(
        org.id,
        org.name,
        now,
        already_deleted=False,
        revoked_key_ids=revoked,
        samples_deleted=samples,
        feedback_deleted=int(getattr(feedback, "rowcount", 0) or 0),
        subscription_ended=ended,
        datasets_with_its_requests=datasets,
    )


def _datasets_containing(session: Session, request_ids: set[str]) -> list[str]:
    if not request_ids:
        return []
    return [
        f"{d.name}@{d.version}"
        for d in session.scalars(select(FeedbackDataset).order_by(FeedbackDataset.created_at))
        if request_ids.intersection(d.request_ids)
    ]
