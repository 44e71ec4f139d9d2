"""What the request path needs to know about an organisation's billing, read at once.

A profile is the plan in force now and, for a free tier, how much of each allowance
the period has used. Profiles are cached for ``cache_ttl_s`` like API keys, so a new
subscription or plan change reaches every gateway process within that delay and the
request path reads the database at most once per organisation per delay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from sqlalchemy.orm import Session

from modelmint.billing import FreeTierPlan, Metric, Plan, PrepaidPlan
from modelmint.billing.exact import Quantity, plus
from modelmint.billing.periods import Period
from modelmint.billing.repository import BillingRepository

__all__ = ["BillingProfile", "load_profile"]


@dataclass(frozen=True, slots=True)
class BillingProfile:
    organization_id: str
    plan: Plan | None  # None: no subscription, nothing is billed
    period: Period | None = None
    # Free tiers: allowance used this period, as committed when the profile was read.
    included_used: Mapping[Metric, Quantity] = field(default_factory=dict)

    @property
    def prepaid(self) -> bool:
        return isinstance(self.plan, PrepaidPlan)

    @property
    def capped(self) -> bool:
        return isinstance(self.plan, FreeTierPlan)


def load_profile(session: Session, organization_id: str, at: datetime) -> BillingProfile:
    repo = BillingRepository(session)
    subscription = repo.timeline(organization_id).active_at(at)
    if subscription is None:
        return BillingProfile(organization_id, None)
    plan = subscription.plan
    period = Period.containing(at)
    used: dict[Metric, Quantity] = {}
    if isinstance(plan, FreeTierPlan):
        for charged in repo.usage_totals(organization_id, period.start):
            key = charged.total.key
            if key.plan == plan.ref:
                used[key.metric] = plus(used.get(key.metric, 0), charged.total.included)
    return BillingProfile(organization_id, plan, period, MappingProxyType(used))
