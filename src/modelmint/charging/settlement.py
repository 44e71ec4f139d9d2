"""Request charges, computed where usage becomes durable: in the metering writer's transaction.

For every fresh usage event of an organisation on a plan, in request order:

1. rate its measured quantities against the period's running totals
   (``rating.PeriodUsage``): included units first, then overage priced on the
   running quantity, so the charges of a period telescope to the price of its total;
2. add the result to ``billing_usage_totals`` (the invoice's usage lines);
3. settle its wallet reservation (prepaid): consume the actual charge, release
   the rest.

4. add the charge to the month-to-date spend of the organisation and the key,
   replacing the hold admission put on it for hard budgets;
5. raise threshold alerts: budgets, included units, prepaid credit consumed.

All of it commits with the usage rows or not at all, so a request is charged
exactly once: a retried batch finds its rows stored and charges nothing twice.
Rating is serialised per organisation (``BillingRepository.lock_usage``) so that
writers in several processes agree on the order. Locks are taken in one order
(organisations' usage, then spend rows, then wallets, each sorted), and admission
locks only spend rows (in the same order) or one wallet, so writers and admission
cannot wait on each other in a cycle.

A prepaid request's charge is bounded by its reservation (the reservation is an
upper bound by construction). Should a charge ever exceed the reservation and the
usable balance, the wallet gives what it has, never going below zero, and the
shortfall is logged and stays on the invoice as money owed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from modelmint.billing import Budget, Metric, Money, Plan, PlanRef, PrepaidPlan
from modelmint.billing.budgets import DEFAULT_THRESHOLDS, crossed
from modelmint.billing.errors import PriceNotFound
from modelmint.billing.exact import EXACT, Quantity
from modelmint.billing.periods import Period
from modelmint.billing.rating import (
    ChargedTotal,
    PeriodUsage,
    UsageKey,
    UsageTotal,
    billed_quantities,
)
from modelmint.billing.repository import BillingRepository
from modelmint.billing.wallet import Wallet
from modelmint.charging.quantities import measured
from modelmint.charging.reservations import wallet_instant
from modelmint.metering.events import UsageEvent
from modelmint.observability.metrics import BILLING_ALERTS, BILLING_SHORTFALLS
from modelmint.storage.db import utcnow

__all__ = ["Charger"]

log = logging.getLogger(__name__)
_ZERO = Decimal(0)


class Charger:
    """Rates and settles batches of usage events; one per writer (it caches plan versions)."""

    def __init__(self) -> None:
        self._plans: dict[PlanRef, Plan] = {}  # plan versions never change once published

    def charge(self, session: Session, events: Sequence[UsageEvent]) -> dict[str, Decimal]:
        """The charge of each billed event (by id), recorded in ``session``'s transaction."""
        billed = [e for e in events if e.plan_code is not None and e.plan_version is not None]
        if not billed:
            return {}
        repo = BillingRepository(session)
        by_org: dict[str, list[UsageEvent]] = defaultdict(list)
        for event in billed:
            by_org[event.organization_id].append(event)
        for organization_id in sorted(by_org):
            repo.lock_usage(organization_id)
        charges: dict[str, Decimal] = {}
        for organization_id in sorted(by_org):
            ordered = sorted(by_org[organization_id], key=lambda e: (e.created_at, e.id))
            by_period: dict[Period, list[UsageEvent]] = defaultdict(list)
            for event in ordered:
                by_period[Period.containing(event.created_at)].append(event)
            for period, period_events in by_period.items():
                self._rate(repo, organization_id, period, period_events, charges)
        self._track_spend(repo, billed, charges)
        self._settle(repo, billed, charges)
        session.flush()
        return charges

    def _plan(self, repo: BillingRepository, event: UsageEvent) -> Plan:
        assert event.plan_code is not None and event.plan_version is not None
        ref = PlanRef(event.plan_code, event.plan_version)
        plan = self._plans.get(ref)
        if plan is None:
            plan = self._plans[ref] = repo.load_plan(ref.code, ref.version)
        return plan

    def _rate(
        self,
        repo: BillingRepository,
        organization_id: str,
        period: Period,
        events: list[UsageEvent],
        charges: dict[str, Decimal],
    ) -> None:
        totals = {t.total.key: t for t in repo.usage_totals(organization_id, period.start)}
        stored = set(totals)
        usage = PeriodUsage(t.total for t in totals.values())
        changed: dict[UsageKey, ChargedTotal] = {}
        # Allowance used before this batch, per (plan, metric), for threshold alerts.
        allowances: dict[tuple[PlanRef, Metric], tuple[Plan, Quantity]] = {}
        for event in events:
            amount = _ZERO
            for metric, quantity in self._quantities(repo, event).items():
                plan = self._plan(repo, event)
                if (plan.ref, metric) not in allowances:
                    allowances[(plan.ref, metric)] = (plan, usage.included_used(plan.ref, metric))
                rated = usage.rate(plan, event.model, metric, quantity)
                before = totals.get(rated.key) or ChargedTotal(UsageTotal(rated.key))
                totals[rated.key] = changed[rated.key] = before.add(rated)
                amount = EXACT.add(amount, rated.amount)
            charges[event.id] = amount
        repo.save_usage_totals(organization_id, period.start, changed.values(), stored=stored)
        for (ref, metric), (plan, used_before) in sorted(allowances.items()):
            allowance = plan.allowance(metric)
            if not allowance:
                continue  # none (nothing to alert on) or unlimited
            used_after = usage.included_used(ref, metric)
            for percent in crossed(
                DEFAULT_THRESHOLDS, Decimal(used_before), Decimal(used_after), Decimal(allowance)
            ):
                _alert(
                    repo, organization_id, "", "allowance", metric.value, period, percent,
                    used=Decimal(used_after), limit=Decimal(allowance), plan=str(ref),
                )  # fmt: skip

    def _track_spend(
        self, repo: BillingRepository, events: list[UsageEvent], charges: dict[str, Decimal]
    ) -> None:
        """Add charges to the month-to-date spend of each organisation and key, replace
        the budget holds admission made, and alert on budget thresholds."""
        # (organisation, month start) -> scope -> [charged, released hold]
        deltas: dict[tuple[str, datetime], dict[str, list[Decimal]]] = defaultdict(
            lambda: defaultdict(lambda: [_ZERO, _ZERO])
        )
        currencies: dict[str, str] = {}
        for event in events:
            charge = charges[event.id]
            if (charge == 0 and event.spend_hold == 0) or event.currency is None:
                continue
            currencies[event.organization_id] = event.currency
            month = Period.containing(event.created_at).start
            for scope in ("", event.api_key_id):
                slot = deltas[(event.organization_id, month)][scope]
                slot[0] = EXACT.add(slot[0], charge)
            if event.spend_hold and event.spend_period is not None:
                for scope in ("", event.api_key_id):
                    slot = deltas[(event.organization_id, event.spend_period)][scope]
                    slot[1] = EXACT.add(slot[1], event.spend_hold)
        budgets: dict[str, dict[str, Budget]] = {}
        for (organization_id, month), all_scopes in sorted(deltas.items()):
            if organization_id not in budgets:
                budgets[organization_id] = repo.budgets(organization_id)
            # Spend is kept where a budget reads it (``set_budget`` seeds it from history)
            # and where admission holds something; other organisations pay nothing for it.
            scopes = {
                scope: delta
                for scope, delta in all_scopes.items()
                if scope in budgets[organization_id] or delta[1] > 0
            }
            if not scopes:
                continue
            currency = currencies[organization_id]
            spend = repo.lock_spend(organization_id, scopes, month, currency)
            for scope, (charged, released) in sorted(scopes.items()):
                amount, held = spend[scope]
                after = EXACT.add(amount, charged)
                left = max(EXACT.subtract(held, released), _ZERO)
                repo.set_spend(organization_id, scope, month, amount=after, held=left)
                budget = budgets[organization_id].get(scope)
                if budget is None or budget.limit.currency != currency:
                    continue
                for percent in budget.crossed(amount, after):
                    _alert(
                        repo, organization_id, scope, "budget", "", Period.containing(month),
                        percent, used=after, limit=budget.limit.amount, currency=currency,
                        hard=budget.hard,
                    )  # fmt: skip

    def _quantities(self, repo: BillingRepository, event: UsageEvent) -> dict[Metric, Quantity]:
        if event.status_code >= 400:
            return {}  # a failed request owes nothing
        plan = self._plan(repo, event)
        used = measured(event.endpoint, event.input_tokens, event.output_tokens, event.engine_ms)
        try:
            return billed_quantities(plan, event.model, used)
        except PriceNotFound:
            # Admission refuses unpriced models; this is a plan published in between.
            log.error(
                "request %s: %s prices nothing %s uses; not charged",
                event.id,
                plan.ref,
                event.model,
            )
            return {}

    def _settle(
        self, repo: BillingRepository, events: list[UsageEvent], charges: dict[str, Decimal]
    ) -> None:
        by_wallet: dict[tuple[str, str], list[UsageEvent]] = defaultdict(list)
        for event in events:
            paid = event.reservation is not None or (
                isinstance(self._plan(repo, event), PrepaidPlan) and charges[event.id] > 0
            )
            if paid and event.currency is not None:
                by_wallet[(event.organization_id, event.currency)].append(event)
        for (organization_id, currency), wallet_events in sorted(by_wallet.items()):
            ids = [e.reservation for e in wallet_events if e.reservation is not None]
            # The gateway's reservations are holds beside the ledger (``hold_credit``):
            # the domain wallet needs none of them loaded.
            wallet = repo.load_wallet(organization_id, currency, for_update=True, reservations=())
            repo.take_holds(wallet, ids)
            for event in wallet_events:
                _pay(wallet, event, Money(charges[event.id], currency), repo.credit_held(wallet.id))
            _, consumed_before = repo.wallet_usage(wallet.id)
            repo.save_wallet(wallet)
            granted, consumed = repo.wallet_usage(wallet.id)
            period = Period.containing(wallet_events[-1].created_at)
            for percent in crossed(DEFAULT_THRESHOLDS, consumed_before, consumed, granted):
                _alert(
                    repo, organization_id, "", "credit", currency, period, percent,
                    used=consumed, limit=granted, currency=currency,
                )  # fmt: skip


def _alert(
    repo: BillingRepository,
    organization_id: str,
    api_key_id: str,
    kind: str,
    subject: str,
    period: Period,
    percent: int,
    *,
    used: Decimal,
    limit: Decimal,
    **details: object,
) -> None:
    """Raise a threshold alert (once per scope, month and threshold)."""
    payload: dict[str, object] = {
        "type": f"{kind}.threshold",
        "organization_id": organization_id,
        "api_key_id": api_key_id or None,
        "period": str(period),
        "threshold_percent": percent,
        "used": f"{used:f}",
        "limit": f"{limit:f}",
        "raised_at": utcnow().isoformat(),
    }
    if subject and kind == "allowance":
        payload["metric"] = subject
    payload.update({k: v for k, v in details.items() if v is not None})
    if repo.raise_alert(
        organization_id,
        api_key_id=api_key_id,
        kind=kind,
        subject=subject,
        period=period,
        threshold=percent,
        payload=payload,
    ):
        BILLING_ALERTS.labels(kind).inc()
        log.warning(
            "billing alert: %s of %s at %d%% (%s of %s)",
            kind,
            api_key_id or organization_id,
            percent,
            payload["used"],
            payload["limit"],
        )


def _pay(wallet: Wallet, event: UsageEvent, amount: Money, held_by_others: Decimal) -> None:
    """Consume a request's charge; its hold (if any) has ended. Credit other requests
    still hold stays untouched, so their charges remain covered."""
    if amount.is_zero:
        return
    at = wallet_instant(wallet.last_at)
    free = EXACT.subtract(wallet.available(at).amount, held_by_others)
    covered = max(min(amount.amount, free), _ZERO)
    if covered > 0:
        wallet.consume(Money(covered, amount.currency), at=at, reference=event.id)
    _shortfall(event, amount.amount, covered)


def _shortfall(event: UsageEvent, charged: Decimal, covered: Decimal) -> None:
    if covered < charged:
        BILLING_SHORTFALLS.inc()
        log.error(
            "request %s: charge %s exceeded its reservation and the wallet; %s %s unpaid",
            event.id,
            charged,
            EXACT.subtract(charged, covered),
            event.currency,
        )
