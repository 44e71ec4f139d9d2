"""How the billing commands show their results to people: tables and sentences.

With ``--json`` a billing command prints its operation's result as it is; without,
it hands the result to one of these. A result is the JSON-ready dict (or list of
dicts) that the billing operations return; a view that repeats what the person typed
(an organisation, a key) takes it as an argument and returns the view.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from operator import itemgetter
from typing import Any

from modelmint.cli.operation import say, table_of

__all__ = [
    "ALERTS",
    "BUDGETS",
    "CLOSED_INVOICES",
    "COUPONS",
    "INVOICES",
    "PLANS",
    "SUBSCRIPTIONS",
    "budget",
    "granted",
    "ledger",
    "subscription",
    "wallet",
]

Json = Mapping[str, Any]


def _total(row: Json) -> str:
    return f"{row['total']} {row['currency']}"


# -- plans and subscriptions ----------------------------------------------------------------

PLANS = table_of(
    ("code", "kind", "version", "versions", "currency", "fixed fee"),
    itemgetter("code", "kind", "version", "versions", "currency", "fixed_fee"),
)
SUBSCRIPTIONS = table_of(
    ("plan", "kind", "currency", "starts", "ends", "status"),
    itemgetter("plan", "kind", "currency", "starts_at", "ends_at", "status"),
)


def subscription(verb: str) -> Callable[[Json], None]:
    """``acme <verb> pro@v2 from <start>[ until <end>].``"""

    def show(s: Json) -> None:
        ends = f" until {s['ends_at']}" if s["ends_at"] else ""
        say(f"{s['organization']} {verb} {s['plan']} from {s['starts_at']}{ends}.")

    return show


# -- wallets --------------------------------------------------------------------------------

_GRANTS = table_of(
    ("grant", "kind", "amount", "remaining", "priority", "granted", "expires"),
    itemgetter("id", "kind", "amount", "remaining", "priority", "granted_at", "expires_at"),
)
_LEDGER = table_of(
    ("#", "at", "kind", "grant", "amount", "reference"),
    itemgetter("sequence", "at", "kind", "grant_id", "amount", "reference"),
)


def wallet(w: Json) -> None:
    """What is available, then each grant's remainder."""
    say(
        f"{w['organization']}: {w['available']} {w['currency']} available "
        f"(balance {w['balance']}, reserved {w['reserved']})."
    )
    if w["grants"]:
        _GRANTS(w["grants"])


def granted(org: str, currency: str) -> Callable[[Json], None]:
    """The grant just made, then the wallet it went to."""

    def show(result: Json) -> None:
        grant = result["grant"]
        say(f"Granted {grant['amount']} {currency.upper()} ({grant['kind']}) to {org}.")
        wallet(result["wallet"])

    return show


def ledger(result: Json) -> None:
    """The entries, then the balance (less what is consumed and not yet posted)."""
    _LEDGER(result["entries"])
    pending = result["pending"]
    note = f", less {pending} consumed and not yet posted" if Decimal(pending) else ""
    say(f"Balance: {result['balance']} {result['currency']}{note}")


# -- coupons --------------------------------------------------------------------------------


def _discount(coupon: Json) -> str:
    discount = coupon["discount"]
    if discount["type"] == "percent_off":
        return f"{discount['percent']}% off"
    return f"{discount['amount']['amount']} {discount['amount']['currency']} off"


def _duration(coupon: Json) -> str:
    duration = coupon["duration"]
    periods = duration["periods"]
    return str(duration["kind"]) + (f" ({periods} months)" if periods is not None else "")


COUPONS = table_of(
    ("code", "discount", "duration", "redemptions"),
    lambda r: (r["code"], _discount(r), _duration(r), r["redemptions"]),
)

# -- invoices -------------------------------------------------------------------------------

INVOICES = table_of(
    ("id", "organisation", "period", "status", "subtotal", "discount", "tax", "total"),
    lambda r: (
        r["id"],
        r["organization"],
        r["period_start"][:7],
        r["status"],
        r["subtotal"],
        r["discount"],
        r["tax"],
        _total(r),
    ),
)
# A closed invoice's row carries "outcome": created, would be created, already closed.
CLOSED_INVOICES = table_of(
    ("id", "organisation", "status", "total", ""),
    lambda r: (r["id"], r["organization_id"], r["status"], _total(r), r["outcome"]),
)

# -- budgets and alerts -------------------------------------------------------------------


def budget(key: str | None) -> Callable[[Json], None]:
    """The budget just set, this month's spend, and the alerts that raised at once."""

    def show(b: Json) -> None:
        kind = "hard" if b["hard"] else "soft"
        raised = b["alerts_raised"]
        say(
            f"{kind.capitalize()} budget of {b['limit']} {b['currency']} a month for "
            f"{key or b['organization']}; {b['spent']} spent this month."
            + (f" Alerts raised at {', '.join(f'{p}%' for p in raised)}." if raised else "")
        )

    return show


BUDGETS = table_of(
    ("scope", "limit", "kind", "spent", "held", "thresholds"),
    lambda r: (
        r["api_key_id"] or r["organization"],
        f"{r['limit']} {r['currency']}",
        "hard" if r["hard"] else "soft",
        r["spent"],
        r["held"],
        ",".join(str(t) for t in r["thresholds"]),
    ),
)
ALERTS = table_of(
    ("created", "organisation", "kind", "metric", "threshold", "status", "attempts"),
    lambda r: (
        r["created_at"],
        r["api_key_id"] or r["organization"],
        r["kind"],
        r["metric"],
        f"{r['threshold']}%",
        r["status"],
        r["attempts"],
    ),
)
