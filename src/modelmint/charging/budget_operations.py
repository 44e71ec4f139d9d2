"""Budget and alert operations for people: what the admin API and the CLI both call.

Same rules as ``operations``: one unit of work on the caller's session, strings for
money, JSON-ready results.
"""

from __future__ import annotations

from decimal import Decimal
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing import Budget, Money
from modelmint.billing.budgets import DEFAULT_THRESHOLDS, MAX_THRESHOLD
from modelmint.billing.errors import CurrencyMismatch, InvalidBudget
from modelmint.billing.periods import Period
from modelmint.billing.repository import BillingRepository
from modelmint.billing.serialization import Json
from modelmint.charging.operations import currency_code, decimal_string, iso, org_fields
from modelmint.charging.settlement import announce, threshold_alert
from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest, NotFound
from modelmint.storage.tables import ApiKey, BillingAlert, BillingSpend, Organization

__all__ = ["list_alerts", "list_budgets", "remove_budget", "set_alert_webhook", "set_budget"]

ALERT_STATUSES = ("pending", "delivered", "failed", "unrouted")
_URL_CHARS = 500


def _key_scope(session: Session, org: Organization, key: str | None) -> str:
    if not key:
        return ""
    row = session.get(ApiKey, key)
    if row is None or row.organization_id != org.id:
        raise NotFound(f"{org.name} has no API key {key!r}", param="key")
    return row.id


def _plan_currency(session: Session, org: Organization) -> str | None:
    subscription = BillingRepository(session).timeline(org.id).active_at(utcnow())
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
    repo = BillingRepository(session)
    before = repo.budgets(organization.id).get(scope)
    if hard is None:
        hard = before.hard if before is not None else True
    if thresholds:
        _check_percents(thresholds)
        levels = tuple(thresholds)
    else:
        levels = before.thresholds if before is not None else DEFAULT_THRESHOLDS
    budget = Budget(limit, hard, levels)
    plan_currency = _plan_currency(session, organization)
    if plan_currency is not None and plan_currency != limit.currency:
        raise CurrencyMismatch(
            f"{organization.name} is charged in {plan_currency}; a budget in "
            f"{limit.currency} would never apply",
            param="currency",
        )
    repo.set_budget(organization.id, scope, budget)
    spend = _spend(session, organization.id, scope)
    raised = _raise_reached(repo, organization.id, scope, budget, spend[0])
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
    repo: BillingRepository, organization_id: str, scope: str, budget: Budget, spent: Decimal
) -> list[int]:
    """Raise the thresholds ``spent`` has reached; the percents raised now."""
    period = Period.containing(utcnow())
    raised = []
    for percent in budget.crossed(Decimal(0), spent):
        alert = threshold_alert(
            organization_id, scope, "budget", "", period, percent, utcnow(), used=spent,
            limit=budget.limit.amount, currency=budget.limit.currency, hard=budget.hard,
        )  # fmt: skip
        identifier = repo.raise_alert(
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
    BillingRepository(session).remove_budget(
        organization.id, _key_scope(session, organization, key)
    )


def list_budgets(session: Session, org: str) -> list[Json]:
    """The organisation's budgets with this month's spend and holds."""
    organization = accounts.get_org(session, org)
    budgets = BillingRepository(session).budgets(organization.id)
    return [
        _budget(organization, scope, budget, _spend(session, organization.id, scope))
        for scope, budget in sorted(budgets.items())
    ]


def _spend(session: Session, organization_id: str, scope: str) -> tuple[Decimal, Decimal]:
    row = session.get(BillingSpend, (organization_id, scope, Period.containing(utcnow()).start))
    return (Decimal(0), Decimal(0)) if row is None else (row.amount, row.held)


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


def set_alert_webhook(session: Session, org: str, url: str | None) -> Json:
    """Where the organisation's billing alerts are POSTed (None: record them only)."""
    organization = accounts.get_org(session, org)
    if url is not None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc or len(url) > _URL_CHARS:
            raise InvalidRequest(
                f"the alert webhook must be an http(s) URL of at most {_URL_CHARS} characters",
                param="url",
            )
    organization.alert_webhook_url = url
    session.flush()
    return {**org_fields(organization), "alert_webhook_url": url}


def list_alerts(
    session: Session, org: str | None = None, status: str | None = None, limit: int = 100
) -> list[Json]:
    """Alerts, newest first."""
    query = select(BillingAlert, Organization.name).join(
        Organization, Organization.id == BillingAlert.organization_id
    )
    if org is not None:
        query = query.where(BillingAlert.organization_id == accounts.get_org(session, org).id)
    if status is not None:
        if status not in ALERT_STATUSES:
            raise InvalidRequest(
                f"alert status is one of {', '.join(ALERT_STATUSES)}, not {status!r}",
                param="status",
            )
        query = query.where(BillingAlert.status == status)
    if not 1 <= limit <= 10_000:
        raise InvalidRequest("limit must be within 1..10000", param="limit")
    query = query.order_by(BillingAlert.created_at.desc(), BillingAlert.id).limit(limit)
    return [_alert(alert, name) for alert, name in session.execute(query).all()]


def _alert(alert: BillingAlert, organization: str) -> Json:
    return {
        "id": alert.id,
        "organization_id": alert.organization_id,
        "organization": organization,
        "api_key_id": alert.api_key_id or None,
        "kind": alert.kind,
        # What an allowance alert counts (budget and credit alerts count money).
        "metric": alert.subject if alert.kind == "allowance" else None,
        "threshold": alert.threshold,
        "period": f"{alert.period_start:%Y-%m}",
        "status": alert.status,
        "attempts": alert.attempts,
        "last_error": alert.last_error,
        "created_at": iso(alert.created_at),
        "delivered_at": iso(alert.delivered_at),
        "payload": alert.payload,
    }
