"""Subscriptions as stored: each organisation's timeline of plan versions.

A subscription row points at the plan version it runs on; changing plan ends the
current row and starts the next one, cancelling ends it (or removes it, when it is
cancelled as it starts and so never ran).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select

from modelmint.billing.periods import Period, utc
from modelmint.billing.plans import PlanRef
from modelmint.billing.store.base import StorePart
from modelmint.billing.store.plans import PlanStore
from modelmint.billing.subscriptions import Subscription, SubscriptionTimeline
from modelmint.ids import new_id
from modelmint.storage.tables import BillingSubscription

__all__ = ["SubscriptionStore"]


class SubscriptionStore(StorePart):
    """Organisations' subscription timelines."""

    def _rows(self, organization_id: str) -> list[BillingSubscription]:
        return list(
            self._session.scalars(
                select(BillingSubscription)
                .where(BillingSubscription.organization_id == organization_id)
                .order_by(BillingSubscription.starts_at)
            )
        )

    def timeline(self, organization_id: str) -> SubscriptionTimeline:
        """The organisation's subscriptions, each on the plan version it used."""
        self._require_org(organization_id)
        plans = PlanStore(self._session)
        subscriptions = [
            Subscription(
                organization_id, plans.load_version(row.plan_version_id), row.starts_at, row.ends_at
            )
            for row in self._rows(organization_id)
        ]
        return SubscriptionTimeline(organization_id, subscriptions)

    def subscribed_in(self, period: Period) -> list[str]:
        """The organisations with a subscription running at some time in ``period``, sorted."""
        rows = self._session.scalars(
            select(BillingSubscription.organization_id)
            .where(BillingSubscription.starts_at < period.end)
            .where(
                BillingSubscription.ends_at.is_(None) | (BillingSubscription.ends_at > period.start)
            )
            .distinct()
        )
        return sorted(rows)

    def _insert(self, subscription: Subscription) -> None:
        self._session.add(
            BillingSubscription(
                id=new_id("sub"),
                organization_id=subscription.organization_id,
                plan_version_id=PlanStore(self._session).version_id(subscription.plan.ref),
                starts_at=subscription.start,
                ends_at=subscription.end,
            )
        )

    def _end_latest(self, organization_id: str, end: datetime) -> None:
        latest = self._rows(organization_id)[-1]
        latest.ends_at = end

    def subscribe(self, organization_id: str, plan: PlanRef, at: datetime) -> Subscription:
        """Start ``plan`` at ``at``; ``SubscriptionConflict`` while another one runs."""
        timeline = self.timeline(organization_id)
        chosen = PlanStore(self._session).load_plan(plan.code, plan.version)
        subscription = timeline.subscribe(chosen, at)
        self._insert(subscription)
        self._flush(f"{organization_id!r} was subscribed concurrently")
        return subscription

    def change_plan(self, organization_id: str, plan: PlanRef, at: datetime) -> Subscription:
        """End the current subscription at ``at`` and continue on ``plan``."""
        timeline = self.timeline(organization_id)
        chosen = PlanStore(self._session).load_plan(plan.code, plan.version)
        successor = timeline.change_plan(chosen, at)
        self._end_latest(organization_id, successor.start)
        self._insert(successor)
        self._flush(f"{organization_id!r} changed plan concurrently")
        return successor

    def cancel(self, organization_id: str, at: datetime) -> Subscription:
        """End the current subscription at ``at`` (removed if cancelled as it starts)."""
        timeline = self.timeline(organization_id)
        ended = timeline.cancel(at)
        if ended.start == utc(at, "cancellation"):  # cancelled as it began: it never ran
            latest = self._rows(organization_id)[-1]
            self._session.delete(latest)
        else:
            assert ended.end is not None
            self._end_latest(organization_id, ended.end)
        self._session.flush()
        return ended
