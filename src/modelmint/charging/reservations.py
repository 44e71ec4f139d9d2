"""Holds made at admission: wallet reservations and budget holds; the sweep of lost ones.

When a process has no lease to admit from (``charging.leases``: the wallet is too
small to lease from, or the process has just started), a prepaid request holds its
worst-case cost on the wallet (``held``, a sum kept on the wallet row beside the
balance, with a reservation row per request) in one conditional UPDATE, so
concurrent gateways, whatever their number, take turns on the wallet's row for one
statement each, and ``balance - held - leased`` never goes below zero. The metering
writer ends the hold and consumes the actual cost from the grants, in the
transaction that stores the request's usage row. A hold whose
request never reached the writer (the process died in between) is released by
``release_stale`` after a grace period.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal

from modelmint.billing import Budget
from modelmint.billing.errors import BudgetExceeded, InsufficientCredit
from modelmint.billing.exact import EXACT
from modelmint.billing.periods import Period
from modelmint.billing.store import BillingStore
from modelmint.billing.store.budgets import BudgetStore
from modelmint.clock import utcnow
from modelmint.errors import NotFound
from modelmint.storage.db import Database

__all__ = ["hold_budget", "release_budget", "release_stale", "reserve", "wallet_instant"]

log = logging.getLogger(__name__)


def wallet_instant(last_at: datetime | None) -> datetime:
    """Now, or the wallet's newest entry if another process's clock ran ahead of ours:
    the ledger is in time order."""
    now = utcnow()
    return now if last_at is None or last_at <= now else last_at


def reserve(
    database: Database, organization_id: str, currency: str, amount: Decimal, reference: str
) -> str:
    """Hold ``amount`` on the organisation's wallet; ``InsufficientCredit`` (402) if it
    cannot be covered. Returns the reservation id.

    The common case is one conditional UPDATE (``hold_credit``). Only when it fails
    (no wallet, not enough credit, or a grant expired since the wallet was last
    written) does a second transaction load the wallet, write off expired credit and
    try once more, so the refusal states what is really available.
    """
    with database.session() as session:
        held = BillingStore(session).holds.hold_credit(
            organization_id, currency, amount, reference, utcnow()
        )
    if held is not None:
        return held
    with database.session() as session:
        store = BillingStore(session)
        wallets = store.wallets
        try:
            wallet = wallets.load_wallet(
                organization_id, currency, for_update=True, reservations=()
            )
        except NotFound:
            raise InsufficientCredit(
                f"this organisation has no {currency} prepaid credit; top up its wallet",
                needed=amount,
                available=Decimal(0),
                currency=currency,
            ) from None
        at = wallet_instant(wallet.last_at)
        wallet.expire(at)
        wallets.save_wallet(wallet)
        held = store.holds.hold_credit(organization_id, currency, amount, reference, at)
        if held is None:
            taken = EXACT.add(wallets.credit_held(wallet.id), wallets.credit_leased(wallet.id))
            available = EXACT.subtract(wallet.available(at).amount, taken)
            raise InsufficientCredit(
                f"prepaid credit is too low for this request: it may cost up to "
                f"{amount:f} {wallet.currency}, {max(available, Decimal(0)):f} is available",
                needed=amount,
                available=available,
                currency=wallet.currency,
            )
        return held


def hold_budget(
    database: Database,
    organization_id: str,
    api_key_id: str,
    period: Period,
    currency: str,
    worst: Decimal,
    budgets: Mapping[str, Budget],
) -> tuple[str, ...]:
    """Hold ``worst`` on the month's spend of each scope of ``budgets`` ("" for the
    organisation, else ``api_key_id``) whose hard budget can take it; ``BudgetExceeded``
    (402) if one cannot. Returns the scopes held on, for the writer to release.

    The spend rows stay locked for the check and the update, so concurrent admissions
    in any number of processes cannot together pass a limit; what gateway processes
    leased of a month counts as spent.
    """
    with database.session() as session:
        budget_store = BillingStore(session).budgets
        spend = budget_store.lock_spend(organization_id, [api_key_id], period.start, currency)
        leased = budget_store.spend_leased(organization_id, [api_key_id], period.start)
        scopes = []
        for scope, budget in sorted(budgets.items()):
            if budget.limit.currency != currency:
                log.warning(
                    "budget of %r is in %s, charges in %s: not applied",
                    scope or organization_id,
                    budget.limit.currency,
                    currency,
                )
                continue
            amount, held = spend[scope]
            taken = EXACT.add(held, leased[scope])
            if not budget.admits(amount, taken, worst):
                whose = "this API key's" if scope else "the organisation's"
                raise BudgetExceeded(
                    f"{whose} monthly budget of {budget.limit} is reached: {amount:f} charged "
                    f"and {taken:f} held for requests in flight this month; this request "
                    f"may cost up to {worst:f}",
                    scope=scope,
                    limit=budget.limit.amount,
                    currency=currency,
                    charged=amount,
                    period_start=period.start,
                )
            scopes.append(scope)
        _shift_held(budget_store, organization_id, scopes, period, spend, worst)
        return tuple(scopes)


def release_budget(
    database: Database,
    organization_id: str,
    api_key_id: str,
    period: Period,
    currency: str,
    amount: Decimal,
    scopes: Sequence[str],
) -> None:
    """Give back a budget hold whose request was refused before it ran."""
    with database.session() as session:
        budget_store = BillingStore(session).budgets
        spend = budget_store.lock_spend(organization_id, [api_key_id], period.start, currency)
        _shift_held(budget_store, organization_id, scopes, period, spend, -amount)


def _shift_held(
    budget_store: BudgetStore,
    organization_id: str,
    scopes: Sequence[str],
    period: Period,
    spend: Mapping[str, tuple[Decimal, Decimal]],
    delta: Decimal,
) -> None:
    """Move what the locked spend rows of ``scopes`` hold by ``delta``."""
    for scope in sorted(scopes):
        charged, held = spend[scope]
        left = max(EXACT.add(held, delta), Decimal(0))
        budget_store.set_spend(organization_id, scope, period.start, amount=charged, held=left)


def release_stale(database: Database, older_than: timedelta) -> int:
    """Release reservations open for longer than ``older_than``; returns how many."""
    cutoff = utcnow() - older_than
    with database.session() as session:
        stale = BillingStore(session).holds.stale(cutoff)
    by_wallet: dict[tuple[str, str], list[str]] = {}
    for organization_id, currency, reservation_id in stale:
        by_wallet.setdefault((organization_id, currency), []).append(reservation_id)
    released = 0
    for (organization_id, currency), ids in sorted(by_wallet.items()):
        with database.session() as session:
            wallets = BillingStore(session).wallets
            wallet = wallets.load_wallet(
                organization_id, currency, for_update=True, reservations=ids
            )
            at = wallet_instant(wallet.last_at)
            booked = {r.id for r in wallet.open_reservations}  # held in the ledger
            for reservation_id in booked:
                wallet.release(reservation_id, at=at)
            # The writer may have settled some meanwhile: only open ones are taken.
            taken = wallets.take_holds(wallet, [i for i in ids if i not in booked])
            released += len(booked) + len(taken)
            wallets.save_wallet(wallet)
    if released:
        log.warning("released %d stale wallet reservations", released)
    return released
