"""Budgets for people: setting, removing and listing monthly spend caps.

A budget caps the month's spend of an organisation or of one of its API keys; a
hard one refuses requests (402) once reached, a soft one only alerts.
"""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing import Budget, Money
from modelmint.billing.budgets import DEFAULT_THRESHOLDS, MAX_THRESHOLD
from modelmint.billing.errors import CurrencyMismatch, InvalidBudget
from modelmint.billing.periods import Period
from modelmint.billing.serialization import Json
from modelmint.billing.store import BillingStore
from modelmint.billing.store.alerts import AlertStore
from modelmint.billing_admin.fields import currency_code, decimal_string, org_fields
from modelmint.charging.alerts import announce, threshold_alert
from modelmint.clock import utcnow
from modelmint.errors import NotFound
from modelmint.storage.tables import ApiKey, Organization

__all__ = ["list_budgets", "remove_budget", "set_budget"]


def _key_scope(session: Session, org: Organization, key: str | None) -> str:
    if not key:
        return ""
    row = session.get(ApiKey, key)
    if row is None or row.organization_id != org.id:
        raise NotFound(f"{org.name} has no API key {key!r}", param="key")
    return row.id


def _plan_currency(store: BillingStore, org: Organization) -> str | None:
    subscription = store.subscriptions.timeline(org.id).active_at(utcnow())
    return None if subscription is None else subscription.plan.currency


def set_budget(
    session: Session,
    org: str,
    amount: str,
    currency: str,
    *,
    hard: bool | None = None,
    thresholds: list[int] | None = None,
    key: str | None = None,
) -> Json:
    """Set the monthly budget of the organisation, or of one of its keys (``key``).

    ``hard`` and ``thresholds`` left None keep what the budget had (a new budget is
    hard, alerting at 50, 80 and 100 %): changing the limit changes nothing else.
    Thresholds the month's spend has already reached under the new limit are raised
    at once (each alert still once per month), as settlement would have raised them."""
    organization = accounts.get_org(session, org)
    scope = _key_scope(session, organization, key)
    limit = Money(decimal_string(amount, "amount", InvalidBudget), currency_code(currency))
    store = BillingStore(session)
    before = store.budgets.budgets(organization.id).get(scope)
    if hard is None:
        hard = before.hard if before is not None else True
    if thresholds:
        _check_percents(thresholds)
        levels = tuple(thresholds)
    else:
        levels = before.thresholds if before is not None else DEFAULT_THRESHOLDS
    budget = Budget(limit, hard, levels)
    plan_currency = _plan_currency(store, organization)
    if plan_currency is not None and plan_currency != limit.currency:
        raise CurrencyMismatch(
            f"{organization.name} is charged in {plan_currency}; a budget in "
            f"{limit.currency} would never apply",
            param="currency",
        )
    store.budgets.set_budget(organization.id, scope, budget)
    spend = _spend(store, organization.id, scope)
    raised = _raise_reached(store.alerts, organization.id, scope, budget, spend[0])
    return {**_budget(organization, scope, budget, spend), "alerts_raised": raised}


def _check_percents(thresholds: list[int]) -> None:
    over = [t for t in thresholds if isinstance(t, int) and t > MAX_THRESHOLD]
    if over:
        raise InvalidBudget(
            f"alert thresholds are percents of the limit, 1 to {MAX_THRESHOLD}; got "
            f"{', '.join(map(str, over))}",
            param="thresholds",
        )


def _raise_reached(
    alerts: AlertStore, organization_id: str, scope: str, budget: Budget, spent: Decimal
) -> list[int]:
    """Raise the thresholds ``spent`` has reached; the percents raised now."""
    period = Period.containing(utcnow())
    raised = []
    for percent in budget.crossed(Decimal(0), spent):
        alert = threshold_alert(
            organization_id, scope, "budget", "", period, percent, utcnow(), used=spent,
            limit=budget.limit.amount, currency=budget.limit.currency, hard=budget.hard,
        )  # fmt: skip
        identifier = alerts.raise_alert(
            organization_id,
            api_key_id=scope,
            kind="budget",
            subject="",
            period=period,
            threshold=percent,
            payload=alert["payload"],
        )
        if identifier is not None:
            announce([alert], {identifier})
            raised.append(percent)
    return raised


def remove_budget(session: Session, org: str, key: str | None = None) -> None:
    organization = accounts.get_org(session, org)
    BillingStore(session).budgets.remove_budget(
        organization.id, _key_scope(session, organization, key)
    )


def list_budgets(session: Session, org: str) -> list[Json]:
    """The organisation's budgets with this month's spend and holds."""
    organization = accounts.get_org(session, org)
    store = BillingStore(session)
    budgets = store.budgets.budgets(organization.id)
    return [
        _budget(organization, scope, budget, _spend(store, organization.id, scope))
        for scope, budget in sorted(budgets.items())
    ]


def _spend(store: BillingStore, organization_id: str, scope: str) -> tuple[Decimal, Decimal]:
    return store.budgets.spend(organization_id, scope, Period.containing(utcnow()).start)


def _budget(org: Organization, scope: str, budget: Budget, spend: tuple[Decimal, Decimal]) -> Json:
    spent, held = spend
    return {
        **org_fields(org),
        "api_key_id": scope or None,
        "limit": f"{budget.limit.amount:f}",
        "currency": budget.limit.currency,
        "hard": budget.hard,
        "thresholds": list(budget.thresholds),
        "period": str(Period.containing(utcnow())),
        "spent": f"{spent:f}",
        "held": f"{held:f}",
    }
