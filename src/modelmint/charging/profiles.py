"""What the request path needs to know about an organisation's billing, read at once.

A profile is the plan in force now, the organisation's budgets and, for a free
tier, how much of each allowance the period has used. Profiles are cached for
``cache_ttl_s`` like API keys, so a new subscription, plan change or budget reaches
every gateway process within that delay, and the request path reads the database
at most once per organisation per delay.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType

from sqlalchemy.orm import Session

from modelmint.billing import Budget, FreeTierPlan, Metric, Plan
from modelmint.billing.exact import Quantity, plus
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore

__all__ = ["BillingProfile", "load_profile"]


@dataclass(frozen=True, slots=True)
class BillingProfile:
    organization_id: str
    plan: Plan | None  # None: no subscription, nothing is billed
    period: Period | None = None
    # Free tiers: allowance used this period, as committed when the profile was read.
    included_used: Mapping[Metric, Quantity] = field(default_factory=dict)
    # Monthly budgets by API key id ("" for the whole organisation).
    budgets: Mapping[str, Budget] = field(default_factory=dict)

    def hard_budgets(self, api_key_id: str) -> dict[str, Budget]:
        """The hard budgets a request of ``api_key_id`` must fit in, by scope."""
        return {
            scope: budget
            for scope, budget in self.budgets.items()
            if budget.hard and scope in ("", api_key_id)
        }


def load_profile(session: Session, organization_id: str, at: datetime) -> BillingProfile:
    store = BillingStore(session)
    subscription = store.subscriptions.timeline(organization_id).active_at(at)
    if subscription is None:
        return BillingProfile(organization_id, None)
    plan = subscription.plan
    period = Period.containing(at)
    budgets = MappingProxyType(store.budgets.budgets(organization_id))
    used: dict[Metric, Quantity] = {}
    if isinstance(plan, FreeTierPlan):
        for charged in store.usage.usage_totals(organization_id, period.start):
            key = charged.total.key
            if key.plan == plan.ref:
                used[key.metric] = plus(used.get(key.metric, 0), charged.total.included)
    return BillingProfile(organization_id, plan, period, MappingProxyType(used), budgets)
