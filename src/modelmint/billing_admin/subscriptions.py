"""Subscriptions for people: putting an organisation on a plan, moving it to another,
cancelling, and listing its timeline."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing.plans import PlanRef
from modelmint.billing.serialization import Json
from modelmint.billing.store import BillingStore
from modelmint.billing.store.plans import PlanStore
from modelmint.billing.subscriptions import Subscription
from modelmint.billing_admin.fields import iso, org_fields
from modelmint.clock import utcnow
from modelmint.storage.tables import Organization

__all__ = ["cancel", "change_plan", "list_subscriptions", "subscribe"]


def _subscription(org: Organization, subscription: Subscription, now: datetime) -> Json:
    if subscription.active_at(now):
        status = "active"
    elif subscription.start > now:
        status = "scheduled"
    else:
        status = "ended"
    plan = subscription.plan
    return {
        **org_fields(org),
        "plan": str(plan.ref),
        "plan_code": plan.code,
        "plan_version": plan.version,
        "kind": plan.kind.value,
        "currency": plan.currency,
        "starts_at": iso(subscription.start),
        "ends_at": iso(subscription.end),
        "status": status,
    }


def _plan_ref(plans: PlanStore, code: str, version: int | None) -> PlanRef:
    return PlanRef(code, version) if version is not None else plans.load_plan(code).ref


def subscribe(
    session: Session,
    org: str,
    plan_code: str,
    version: int | None = None,
    at: datetime | None = None,
) -> Json:
    """Start the organisation on a plan (latest version unless given) at ``at`` (now)."""
    return _put_on_plan(session, org, plan_code, version, at, change=False)


def change_plan(
    session: Session,
    org: str,
    plan_code: str,
    version: int | None = None,
    at: datetime | None = None,
) -> Json:
    """Move the organisation to another plan at ``at`` (now); the old fee is prorated."""
    return _put_on_plan(session, org, plan_code, version, at, change=True)


def _put_on_plan(
    session: Session,
    org: str,
    plan_code: str,
    version: int | None,
    at: datetime | None,
    *,
    change: bool,
) -> Json:
    organization = accounts.get_org(session, org)
    store = BillingStore(session)
    start = store.subscriptions.change_plan if change else store.subscriptions.subscribe
    ref = _plan_ref(store.plans, plan_code, version)
    subscription = start(organization.id, ref, at or utcnow())
    return _subscription(organization, subscription, utcnow())


def cancel(session: Session, org: str, at: datetime | None = None) -> Json:
    """End the organisation's current subscription at ``at`` (now)."""
    organization = accounts.get_org(session, org)
    ended = BillingStore(session).subscriptions.cancel(organization.id, at or utcnow())
    return _subscription(organization, ended, utcnow())


def list_subscriptions(session: Session, org: str) -> list[Json]:
    """The organisation's subscriptions, oldest first."""
    organization = accounts.get_org(session, org)
    timeline = BillingStore(session).subscriptions.timeline(organization.id)
    now = utcnow()
    return [_subscription(organization, s, now) for s in timeline.subscriptions]
