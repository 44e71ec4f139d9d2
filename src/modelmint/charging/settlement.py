"""Request charges, computed where usage becomes durable: in the metering writer's transaction.

For every fresh usage event of an organisation on a plan, in request order:

1. rate its measured quantities against the period's running totals
   (``rating.PeriodUsage``): included units first, then overage priced on the
   running quantity, so the charges of a period telescope to the price of its total;
2. add the result to ``billing_usage_totals`` (the invoice's usage lines);
3. add the charge to the month-to-date spend of the organisation and the key (where
   a budget reads it), ending the per-request budget hold admission made, or taking
   the charge out of the budget lease the request was admitted against;
4. pay it: through the wallet lease it was admitted against (the lease's
   ``pending``, posted to the wallet's ledger at the lease's next renewal), else from
   the per-request hold it made or free credit, with one consumption entry per
   grant for the whole batch;
5. raise threshold alerts: budgets, included units, prepaid credit consumed.

All of it is set-based: each step is one multi-row statement for the whole batch
(``settlement_sql``), and it commits with the usage rows or not at all, so a request
is charged exactly once: a retried batch finds its rows stored and charges nothing
twice.

Most paid batches are *quick* (``quick_settlement``): every charge is independent of
the period's running totals (flat prices, no allowance: ``rating.LinearRates``), each
request was admitted against a wallet lease or needs no wallet, and nothing else is
held. Such a batch reads nothing: its charges go in the usage rows' insert, and the
totals and lease statements add blindly, in the same round trip as an unbilled
batch. It bets that every event is new, every lease open with room and the
organisation without budgets; the round trip's results check the bet, and when it
is lost the transaction is rolled back and the batch settled the general way.

The general way (``BatchSettlement``) takes two round trips: one that locks and reads
(sent with the insert), one that writes. Rating is serialised per organisation (a
PostgreSQL advisory lock; SQLite's one write lock serves the same purpose) so that
writers in several processes agree on the order. Locks are taken in one order
everywhere: organisations' rating locks, then month spend rows, then wallets, then
leases and reservations (each sorted); admission and lease upkeep lock one spend row
set or one wallet, then its leases, so nothing waits on anything in a cycle.

A charge is bounded by what admission set aside for it (the worst case). Should one
ever exceed that and the free credit, the wallet gives what it has, never going
below zero, and the shortfall is logged and stays on the invoice as money owed.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from modelmint.billing import Metric, Money, Plan, PlanRef, PrepaidPlan
from modelmint.billing.budgets import DEFAULT_THRESHOLDS, crossed
from modelmint.billing.errors import PriceNotFound
from modelmint.billing.exact import EXACT, Quantity
from modelmint.billing.periods import Period
from modelmint.billing.rating import (
    ChargedTotal,
    LinearRates,
    PeriodUsage,
    UsageKey,
    UsageTotal,
    billed_quantities,
)
from modelmint.billing.store import BillingStore
from modelmint.billing.wallet import Wallet, WalletSnapshot
from modelmint.charging.alerts import announce, threshold_alert
from modelmint.charging.leases import CreditLeases
from modelmint.charging.quantities import measured
from modelmint.charging.quick_settlement import QuickSettlement
from modelmint.charging.quick_sql import QuickSql
from modelmint.charging.reservations import wallet_instant
from modelmint.charging.settlement_sql import (
    BatchKeys,
    BatchReads,
    LeaseRow,
    SettlementSql,
    SpendRow,
    WalletRow,
)
from modelmint.clock import utcnow
from modelmint.metering.events import UsageEvent
from modelmint.observability.metrics import (
    BILLING_SHORTFALLS,
    CREDIT_LEASE_ADMISSIONS,
)
from modelmint.storage.batch import BatchSql, Rows, Statement

__all__ = ["BatchSettlement", "Charger", "Settled"]

log = logging.getLogger(__name__)
# Counted per batch when settled, not per request at admission: the hot path stays bare.
LEASED = CREDIT_LEASE_ADMISSIONS.labels("lease")
_ZERO = Decimal(0)


@dataclass(slots=True)
class Settled:
    """What settling a batch produced: each fresh event's charge, and the statements
    that store it all (sent with the rollups and the commit)."""

    charges: dict[str, Decimal]
    statements: list[Statement]
    alerts: list[dict[str, Any]] = field(default_factory=list)
    alert_statement: int | None = None  # index in ``statements`` (RETURNING new ids)


class Charger:
    """Rates and settles batches of usage events; one per writer (it caches plan versions).

    ``leases``: this process's credit leases, told what each request admitted against
    them finally cost once its usage committed.
    """

    def __init__(self, leases: CreditLeases | None = None) -> None:
        # (plan code, version) -> the plan: plan versions never change once published.
        # Keyed by plain tuples, which hash in C (a PlanRef hashes in Python).
        self._plans: dict[tuple[str | None, int | None], Plan] = {}
        # (plan code, version, model, endpoint) -> its linear rates (None if they are not
        # all linear), and whether the plan is prepaid
        self._linear: dict[tuple[Any, ...], tuple[LinearRates | None, bool]] = {}
        self.leases = leases
        self._sql: dict[bool, SettlementSql] = {}
        self._quick: dict[bool, QuickSql] = {}

    def quick(
        self, sql: BatchSql, events: Sequence[UsageEvent], session: Callable[[], Session]
    ) -> QuickSettlement | None:
        """The batch's quick settlement, or None if some billed event needs reads (or
        nothing in it is billed)."""
        billed: list[UsageEvent] = []
        lines: list[LinearRates] = []
        for event in events:
            if event.plan_code is None or event.plan_version is None:
                continue
            line = self._quick_rates(event, session)
            if line is None:
                return None
            billed.append(event)
            lines.append(line)
        if not billed:
            return None
        return QuickSettlement(self.settled, self._quick_sql(sql), billed, lines)

    def begin(
        self, sql: BatchSql, events: Sequence[UsageEvent], session: Callable[[], Session]
    ) -> BatchSettlement | None:
        """The batch's settlement the general way, or None when nothing in it is billed.
        ``session``: an ORM session in the writer's transaction, to load a plan version
        seen for the first time."""
        billed = self._billed(events, session)
        if not billed:
            return None
        return BatchSettlement(self, self._statements(sql), billed)

    def _billed(
        self, events: Sequence[UsageEvent], session: Callable[[], Session]
    ) -> list[UsageEvent]:
        billed = [e for e in events if e.plan_code is not None and e.plan_version is not None]
        self._load_plans({(e.plan_code, e.plan_version) for e in billed}, session)
        return billed

    def _load_plans(
        self, versions: set[tuple[str | None, int | None]], session: Callable[[], Session]
    ) -> None:
        """Load the plan versions not seen before (they never change once published)."""
        known = self._plans
        unseen = [version for version in versions if version not in known]
        if unseen:
            plans = BillingStore(session()).plans
            for code, version in unseen:
                assert code is not None and version is not None
                known[code, version] = plans.load_plan(code, version)

    def _statements(self, sql: BatchSql) -> SettlementSql:
        statements = self._sql.get(sql.sqlite)
        if statements is None:
            statements = self._sql[sql.sqlite] = SettlementSql(sql)
        return statements

    def _quick_sql(self, sql: BatchSql) -> QuickSql:
        statements = self._quick.get(sql.sqlite)
        if statements is None:
            statements = self._quick[sql.sqlite] = QuickSql(sql)
        return statements

    def _quick_rates(self, event: UsageEvent, session: Callable[[], Session]) -> LinearRates | None:
        """The event's rates if it can be settled quickly (see the module docstring)."""
        if event.reservation is not None or event.spend_hold or event.spend_leases:
            return None
        if event.currency is None:
            return None
        key = (event.plan_code, event.plan_version, event.model, event.endpoint)
        known = self._linear.get(key)
        if known is None:
            self._load_plans({(event.plan_code, event.plan_version)}, session)
            plan = self.plan(event)
            try:
                metrics = billed_quantities(plan, event.model, measured(event.endpoint, 0, 0, 0))
            except PriceNotFound:
                rates = None  # the general way logs it
            else:
                rates = LinearRates.of(plan, event.model, metrics)
            known = self._linear[key] = (rates, isinstance(plan, PrepaidPlan))
        rates, prepaid = known
        if prepaid and event.wallet_lease is None:
            return None
        return rates

    def settled(
        self, events: Sequence[UsageEvent], fresh: set[str], charges: dict[str, Decimal]
    ) -> None:
        """A batch committed: leases learn what the requests admitted against them cost."""
        if self.leases is None:
            return
        # An event stored before (a retried write) was settled by its first write.
        requests = [
            (event.leases, event.lease_worst, charges.get(event.id, _ZERO))
            for event in events
            if event.leases and event.id in fresh
        ]
        if requests:
            self.leases.settled(requests)
            LEASED.inc(len(requests))

    def lost(self, events: Sequence[UsageEvent]) -> None:
        """The events could not be stored: their requests were answered 503."""
        if self.leases is None:
            return
        for event in events:
            if event.leases:
                self.leases.lost(event.leases)

    def plan(self, event: UsageEvent) -> Plan:
        return self._plans[event.plan_code, event.plan_version]


class BatchSettlement:
    """One batch: the statements to read first, then ``settle`` with their rows."""

    def __init__(self, charger: Charger, sql: SettlementSql, billed: list[UsageEvent]) -> None:
        self._charger = charger
        self._sql = sql
        self._billed = billed
        self._now = utcnow()
        self.keys = _keys(billed, charger)
        self.reads = sql.reads(self.keys, self._now)
        self._settled: Settled | None = None

    def committed(self, fresh: set[str], results: Sequence[Rows]) -> None:
        """The batch committed (``results``: the rows of the settled statements)."""
        settled = self._settled or Settled({}, [])
        self._charger.settled(self._billed, fresh, settled.charges)
        if settled.alert_statement is not None:
            stored = {row[0] for row in results[settled.alert_statement]}
            announce(settled.alerts, stored)

    def settle(self, fresh: Sequence[UsageEvent], results: Sequence[Rows]) -> Settled:
        """Rate and settle the ``fresh`` events (those the insert stored) with the rows
        ``reads`` returned."""
        reads = self._sql.parse(results, len(self.keys.organizations))
        # The very events stored: of an id the batch names twice, only the first.
        stored = {id(e) for e in fresh}
        billed = [e for e in self._billed if id(e) in stored]
        charges: dict[str, Decimal] = {}
        alerts: list[dict[str, Any]] = []
        statements: list[Statement] = []
        by_org: dict[str, list[UsageEvent]] = defaultdict(list)
        for event in billed:
            by_org[event.organization_id].append(event)
        for organization_id in sorted(by_org):
            ordered = sorted(by_org[organization_id], key=lambda e: (e.created_at, e.id))
            by_period: dict[Period, list[UsageEvent]] = defaultdict(list)
            for event in ordered:
                by_period[Period.containing(event.created_at)].append(event)
            for period, period_events in by_period.items():
                statements.append(
                    self._rate(reads, organization_id, period, period_events, charges, alerts)
                )
        if not billed:
            self._settled = Settled(charges, [])
            return self._settled
        statements.insert(0, self._sql.charges(charges))
        spend = self._spend(reads, billed, charges, alerts)
        if spend:
            statements.append(self._sql.spend(spend))
        statements += self._pay(reads, billed, charges, alerts)
        touched = [lease for lease in reads.leases.values() if lease.changed]
        if touched:
            statements.append(self._sql.leases(touched, self._now))
        settled = self._settled = Settled(charges, statements, alerts)
        if alerts:
            settled.alert_statement = len(statements)
            statements.append(self._sql.alerts(alerts))
        return settled

    # -- 1, 2: rating --------------------------------------------------------------------------

    def _rate(
        self,
        reads: BatchReads,
        organization_id: str,
        period: Period,
        events: list[UsageEvent],
        charges: dict[str, Decimal],
        alerts: list[dict[str, Any]],
    ) -> Statement:
        current = reads.totals.get((organization_id, period.start), [])
        usage = PeriodUsage(t.total for t in current)
        # What this batch adds to each total: stored as an addition, not as the new value,
        # because a quick batch of another process adds to the same rows without the
        # organisation's lock (and may create them after they were read).
        added: dict[UsageKey, ChargedTotal] = {}
        # Allowance used before this batch, per (plan, metric), for threshold alerts.
        allowances: dict[tuple[PlanRef, Metric], tuple[Plan, Quantity]] = {}
        for event in events:
            plan = self._charger.plan(event)
            amount = _ZERO
            for metric, quantity in _quantities(plan, event).items():
                if (plan.ref, metric) not in allowances:
                    allowances[(plan.ref, metric)] = (plan, usage.included_used(plan.ref, metric))
                rated = usage.rate(plan, event.model, metric, quantity)
                before = added.get(rated.key) or ChargedTotal(UsageTotal(rated.key))
                added[rated.key] = before.add(rated)
                amount = EXACT.add(amount, rated.amount)
            charges[event.id] = amount
        for (ref, metric), (plan, used_before) in sorted(allowances.items()):
            allowance = plan.allowance(metric)
            if not allowance:
                continue  # none (nothing to alert on) or unlimited
            used_after = usage.included_used(ref, metric)
            for percent in crossed(
                DEFAULT_THRESHOLDS, Decimal(used_before), Decimal(used_after), Decimal(allowance)
            ):
                alerts.append(threshold_alert(
                    organization_id, "", "allowance", metric.value, period, percent, self._now,
                    used=Decimal(used_after), limit=Decimal(allowance), plan=str(ref),
                ))  # fmt: skip
        return self._sql.totals(organization_id, period.start, added.values())

    # -- 3: month-to-date spend ----------------------------------------------------------------

    def _spend(
        self,
        reads: BatchReads,
        events: list[UsageEvent],
        charges: dict[str, Decimal],
        alerts: list[dict[str, Any]],
    ) -> list[tuple[str, str, datetime, str, SpendRow]]:
        """Each month spend row's change: charges added, holds ended, leases consumed."""
        deltas: dict[tuple[str, str, datetime], SpendRow] = {}
        currencies: dict[str, str] = {}

        def delta(org: str, scope: str, month: datetime) -> SpendRow:
            found = deltas.get((org, scope, month))
            if found is None:
                found = deltas[(org, scope, month)] = SpendRow(_ZERO, _ZERO, _ZERO)
            return found

        for event in events:
            if event.currency is None:
                continue
            org, charge = event.organization_id, charges[event.id]
            currencies[org] = event.currency
            if charge:
                month = Period.containing(event.created_at).start
                for scope in ("", event.api_key_id):
                    row = delta(org, scope, month)
                    row.amount = EXACT.add(row.amount, charge)
            if event.spend_hold and event.spend_period is not None:
                for scope in event.spend_scopes:
                    row = delta(org, scope, event.spend_period)
                    row.held = EXACT.subtract(row.held, event.spend_hold)
            for lease_id in event.spend_leases:
                lease = reads.leases.get(lease_id)
                if lease is None or lease.kind != "budget" or lease.period_start is None:
                    continue
                taken = _draw(lease, charge)
                if taken:
                    row = delta(org, lease.scope, lease.period_start)
                    row.leased = EXACT.subtract(row.leased, taken)
        changes = []
        for (org, scope, month), change in sorted(deltas.items()):
            budget = reads.budgets.get(org, {}).get(scope)
            # Spend is kept where a budget reads it (``set_budget`` seeds it from history)
            # and where admission holds or leases something; others pay nothing for it.
            if budget is None and not change.held and not change.leased:
                continue
            currency = currencies[org]
            changes.append((org, scope, month, currency, change))
            if budget is None or budget.limit.currency != currency:
                continue
            before = reads.spend.get((org, scope, month))
            was = before.amount if before is not None else _ZERO
            after = EXACT.add(was, change.amount)
            for percent in budget.crossed(was, after):
                alerts.append(threshold_alert(
                    org, scope, "budget", "", Period.containing(month), percent, self._now,
                    used=after, limit=budget.limit.amount, currency=currency, hard=budget.hard,
                ))  # fmt: skip
        return changes

    # -- 4: prepaid wallets --------------------------------------------------------------------

    def _pay(
        self,
        reads: BatchReads,
        events: list[UsageEvent],
        charges: dict[str, Decimal],
        alerts: list[dict[str, Any]],
    ) -> list[Statement]:
        owed: dict[str, Decimal] = {}  # what each event pays from the wallet itself
        by_wallet: dict[tuple[str, str], list[UsageEvent]] = defaultdict(list)
        for event in events:
            charge = charges[event.id]
            if _through_lease(reads, event, charge):
                charge = _ZERO
            paid = event.reservation is not None or (
                isinstance(self._charger.plan(event), PrepaidPlan) and charge > 0
            )
            if paid and event.currency is not None:
                owed[event.id] = charge
                by_wallet[(event.organization_id, event.currency)].append(event)
        rows: list[WalletRow] = []
        ledger: list[tuple[Any, ...]] = []
        grants: list[tuple[str, str, Decimal]] = []
        for key, wallet_events in sorted(by_wallet.items()):
            row = reads.wallets.get(key)
            if row is None:
                for event in wallet_events:  # admission refuses prepaid use without a wallet
                    _shortfall(event, owed[event.id], _ZERO)
                continue
            ordered = sorted(wallet_events, key=lambda e: (e.created_at, e.id))
            consumed_before = row.consumed_total
            wallet = self._settle_wallet(reads, row, ordered, owed)
            rows.append(row)
            ledger += [
                (row.id, e.sequence, e.at, e.kind.value, e.grant_id, e.amount.amount, e.reference)
                for e in wallet.ledger
            ]
            for grant_id in sorted({e.grant_id for e in wallet.ledger}):
                grants.append((row.id, grant_id, wallet.remaining(grant_id).amount))
            period = Period.containing(ordered[-1].created_at)
            for percent in crossed(
                DEFAULT_THRESHOLDS, consumed_before, row.consumed_total, row.granted_total
            ):
                alerts.append(threshold_alert(
                    row.organization_id, "", "credit", row.currency, period, percent, self._now,
                    used=row.consumed_total, limit=row.granted_total, currency=row.currency,
                ))  # fmt: skip
        statements = []
        if rows:
            statements.append(self._sql.wallets(rows))
        if ledger:
            statements.append(self._sql.ledger(ledger))
        if grants:
            statements.append(self._sql.grants(grants))
        return statements

    def _settle_wallet(
        self, reads: BatchReads, row: WalletRow, events: list[UsageEvent], owed: dict[str, Decimal]
    ) -> Wallet:
        """Pay what ``events`` owe from the wallet ``row`` (locked), ending their holds;
        updates ``row`` and returns the domain wallet holding the new ledger entries."""
        wallet = Wallet.restore(
            WalletSnapshot(
                wallet_id=row.id,
                currency=row.currency,
                balance=row.balance,
                last_sequence=row.last_sequence,
                last_at=row.last_entry_at,
                grant_count=row.grant_count,
                reservation_count=row.reservation_count,
                grants=tuple(reads.grants.get(row.id, ())),
                reservations=(),
            )
        )
        at = wallet_instant(row.last_entry_at)
        # Credit other requests hold, or processes leased, stays theirs.
        free = EXACT.subtract(wallet.available(at).amount, EXACT.add(row.held, row.leased))
        total = _ZERO
        for event in events:
            charge = owed[event.id]
            if event.reservation is not None:
                held = reads.holds.pop((row.id, event.reservation), None)
                if held is not None:  # not released by a sweep meanwhile
                    row.held = max(EXACT.subtract(row.held, held), _ZERO)
                    free = EXACT.add(free, held)
            covered = max(min(charge, free), _ZERO)
            free = EXACT.subtract(free, covered)
            _shortfall(event, charge, covered)
            total = EXACT.add(total, covered)
        if total > 0:
            first = events[0].id
            reference = first if len(events) == 1 else f"{first} and {len(events) - 1} more"
            wallet.consume(Money(total, row.currency), at=at, reference=reference[:200])
        else:
            wallet.expire(at)  # what expired is written off on every write, as in the domain
        row.balance = wallet.balance.amount
        row.last_sequence = wallet.last_sequence
        row.last_entry_at = wallet.last_at
        row.consumed_total = EXACT.add(row.consumed_total, total)
        row.expires_next = min(
            (
                g.expires_at
                for g in wallet.grants
                if g.expires_at is not None and wallet.remaining(g.id).amount > 0
            ),
            default=None,
        )
        return wallet


def _through_lease(reads: BatchReads, event: UsageEvent, charge: Decimal) -> bool:
    """Put ``charge`` on the wallet lease the request was admitted against, to be posted
    to the wallet's ledger at the lease's next renewal; False if the lease is closed (it
    expired unrenewed) or short of room, and the wallet pays directly."""
    lease = reads.leases.get(event.wallet_lease) if event.wallet_lease else None
    if lease is None or not lease.open or lease.kind != "wallet":
        return False
    if charge > 0:
        if EXACT.subtract(lease.amount, lease.pending) < charge:
            return False
        lease.pending = EXACT.add(lease.pending, charge)
        lease.consumed = EXACT.add(lease.consumed, charge)
        lease.changed = True
    return True


def _keys(events: list[UsageEvent], charger: Charger) -> BatchKeys:
    organizations = sorted({e.organization_id for e in events})
    periods = sorted({(e.organization_id, Period.containing(e.created_at).start) for e in events})
    spend: set[tuple[str, str, datetime]] = set()
    wallets: set[tuple[str, str]] = set()
    reservations: set[tuple[str, str, str]] = set()
    leases: set[str] = set()
    for e in events:
        if e.currency is None:
            continue
        month = Period.containing(e.created_at).start
        for scope in ("", e.api_key_id):
            spend.add((e.organization_id, scope, month))
        if e.spend_period is not None:
            for scope in e.spend_scopes:
                spend.add((e.organization_id, scope, e.spend_period))
        if e.reservation is not None:
            reservations.add((e.organization_id, e.currency, e.reservation))
        leases.update(e.leases)
        if e.reservation is not None or e.leases or isinstance(charger.plan(e), PrepaidPlan):
            wallets.add((e.organization_id, e.currency))
    return BatchKeys(
        tuple(organizations),
        tuple(periods),
        tuple(sorted(spend)),
        tuple(sorted(wallets)),
        tuple(sorted(reservations)),
        tuple(sorted(leases)),
    )


def _quantities(plan: Plan, event: UsageEvent) -> dict[Metric, Quantity]:
    if event.status_code >= 400:
        return {}  # a failed request owes nothing
    used = measured(event.endpoint, event.input_tokens, event.output_tokens, event.engine_ms)
    try:
        return billed_quantities(plan, event.model, used)
    except PriceNotFound:
        # Admission refuses unpriced models; this is a plan published in between.
        log.error("request %s: %s prices nothing %s uses; not charged", event.id, plan.ref,
                  event.model)  # fmt: skip
        return {}


def _draw(lease: LeaseRow, charge: Decimal) -> Decimal:
    """Take what a lease still sets aside for ``charge`` (nothing if it closed)."""
    if not lease.open or charge <= 0:
        return _ZERO
    taken = min(charge, lease.amount)
    lease.amount = EXACT.subtract(lease.amount, taken)
    lease.consumed = EXACT.add(lease.consumed, taken)
    lease.changed = True
    return taken


def _shortfall(event: UsageEvent, charged: Decimal, covered: Decimal) -> None:
    if covered < charged:
        BILLING_SHORTFALLS.inc()
        log.error(
            "request %s: charge %s exceeded what was set aside and the wallet; %s %s unpaid",
            event.id,
            charged,
            EXACT.subtract(charged, covered),
            event.currency,
        )
