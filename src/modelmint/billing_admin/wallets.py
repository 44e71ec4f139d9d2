"""Prepaid wallets for people: opening one, granting credit, the balance and the ledger.

Balances are shown as a person means them: credit the gateway holds for requests
in flight or has leased to its processes is not available, and what requests
consumed through a lease but the ledger has not recorded yet (``pending``, posted
within a second) is already out of the balance.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing.errors import InvalidMoney, InvalidWalletOperation
from modelmint.billing.exact import EXACT
from modelmint.billing.money import Money
from modelmint.billing.serialization import Json, decimal_text
from modelmint.billing.store import BillingStore
from modelmint.billing.store.wallets import WalletStore
from modelmint.billing.wallet import CreditGrant, GrantKind, Wallet
from modelmint.billing_admin.fields import currency_code, decimal_string, iso, org_fields
from modelmint.clock import utcnow
from modelmint.errors import InvalidRequest, NotFound
from modelmint.storage.tables import Organization

__all__ = [
    "MAX_LEDGER_LIMIT",
    "grant_credit",
    "open_wallet",
    "wallet_balance",
    "wallet_currencies",
    "wallet_ledger",
]

_REFERENCE_CHARS = 200  # the width of the ledger's reference column
# Grant priorities live in a 32-bit integer column.
_PRIORITY_LIMIT = 2**31 - 1
MAX_LEDGER_LIMIT = 10_000


def wallet_currencies(session: Session, organization_id: str) -> list[str]:
    return BillingStore(session).wallets.currencies(organization_id)


def _wallet_currency(session: Session, org: Organization, currency: str | None) -> str:
    """``currency`` checked, or the organisation's only wallet currency when it is None."""
    if currency is not None:
        return currency_code(currency)
    currencies = wallet_currencies(session, org.id)
    if not currencies:
        raise NotFound(f"organisation {org.name!r} has no wallet", param="wallet")
    if len(currencies) > 1:
        raise InvalidRequest(
            f"organisation {org.name!r} has wallets in {', '.join(currencies)}; name a currency",
            param="currency",
        )
    return currencies[0]


def _grant(wallet: Wallet, grant: CreditGrant) -> Json:
    return {
        "id": grant.id,
        "kind": grant.kind.value,
        "amount": decimal_text(grant.amount.amount),
        "remaining": decimal_text(wallet.remaining(grant.id).amount),
        "priority": grant.priority,
        "granted_at": iso(grant.granted_at),
        "expires_at": iso(grant.expires_at),
    }


def _wallet(
    org: Organization,
    wallet: Wallet,
    held: Decimal = Decimal(0),
    leased: Decimal = Decimal(0),
    pending: Decimal = Decimal(0),
) -> Json:
    """``held``: credit the gateway holds for requests in flight (beside the ledger);
    ``leased``: credit gateway processes set aside to admit requests against, of which
    ``pending`` was consumed and is being posted to the ledger (within a second)."""
    ordered = sorted(wallet.grants, key=lambda g: g.spend_order)
    unspent = EXACT.subtract(leased, pending)
    reserved = EXACT.add(EXACT.add(wallet.reserved.amount, held), unspent)
    available = EXACT.subtract(wallet.available(utcnow()).amount, EXACT.add(held, leased))
    return {
        **org_fields(org),
        "wallet_id": wallet.id,
        "currency": wallet.currency,
        "balance": decimal_text(EXACT.subtract(wallet.balance.amount, pending)),
        "reserved": decimal_text(reserved),
        "leased": decimal_text(unspent),
        "pending": decimal_text(pending),
        "available": decimal_text(max(available, Decimal(0))),
        "grants": [_grant(wallet, g) for g in ordered],  # in the order they are spent
    }


def _wallet_of(org: Organization, wallet: Wallet, wallets: WalletStore) -> Json:
    return _wallet(
        org,
        wallet,
        wallets.credit_held(wallet.id),
        wallets.credit_leased(wallet.id),
        wallets.credit_pending(wallet.id),
    )


def open_wallet(session: Session, org: str, currency: str) -> Json:
    """An empty wallet in ``currency``; ``Conflict`` if the organisation has one."""
    organization = accounts.get_org(session, org)
    wallet = BillingStore(session).wallets.open_wallet(organization.id, currency_code(currency))
    return _wallet(organization, wallet)


def _grant_kind(kind: str) -> GrantKind:
    try:
        return GrantKind(kind)
    except ValueError:
        choices = ", ".join(k.value for k in GrantKind)
        raise InvalidWalletOperation(
            f"grant kind {kind!r} is not one of {choices}", param="kind"
        ) from None


def grant_credit(
    session: Session,
    org: str,
    amount: str,
    currency: str,
    kind: str = "promotional",
    priority: int | None = None,
    expires_at: datetime | None = None,
    reference: str | None = None,
) -> Json:
    """Add credit to the organisation's wallet in ``currency``, opening it if needed.

    ``kind="paid"`` is a top-up (credit bought); promotional credit is spent first by
    default. Returns the new grant and the wallet after it.
    """
    organization = accounts.get_org(session, org)
    # Everything is checked before the first write, so bad input never opens a wallet.
    value = Money(decimal_string(amount, "amount", InvalidMoney), currency_code(currency))
    if value.is_negative or value.is_zero:
        raise InvalidWalletOperation(f"a grant must be positive, got {value}", param="amount")
    grant_kind = _grant_kind(kind)
    if priority is not None and not -_PRIORITY_LIMIT <= priority <= _PRIORITY_LIMIT:
        raise InvalidWalletOperation(f"priority {priority} is out of range", param="priority")
    if reference is not None and len(reference) > _REFERENCE_CHARS:
        raise InvalidWalletOperation(
            f"reference is longer than {_REFERENCE_CHARS} characters", param="reference"
        )
    wallets = BillingStore(session).wallets
    if value.currency in wallets.currencies(organization.id):
        wallet = wallets.load_wallet(organization.id, value.currency, for_update=True)
    else:
        wallet = wallets.open_wallet(organization.id, value.currency)
    grant = wallet.grant(
        value,
        at=utcnow(),
        kind=grant_kind,
        priority=priority,
        expires_at=expires_at,
        reference=reference,
    )
    wallets.save_wallet(wallet)
    return {
        "grant": _grant(wallet, grant),
        "wallet": _wallet_of(organization, wallet, wallets),
    }


def wallet_balance(session: Session, org: str, currency: str | None = None) -> Json:
    """Balance, reserved and available credit now, and each grant's remainder."""
    organization = accounts.get_org(session, org)
    code = _wallet_currency(session, organization, currency)
    wallets = BillingStore(session).wallets
    wallet = wallets.load_wallet(organization.id, code)
    return _wallet_of(organization, wallet, wallets)


def wallet_ledger(
    session: Session, org: str, currency: str | None = None, limit: int = 100
) -> Json:
    """The newest ``limit`` ledger entries of the wallet, oldest of them first."""
    if not 1 <= limit <= MAX_LEDGER_LIMIT:
        raise InvalidRequest(f"limit must be 1..{MAX_LEDGER_LIMIT}, got {limit}", param="limit")
    organization = accounts.get_org(session, org)
    code = _wallet_currency(session, organization, currency)
    store = BillingStore(session)
    stored = store.wallets.stored_balance(organization.id, code)
    if stored is None:
        raise NotFound(f"organisation {organization.name!r} has no {code} wallet", param="wallet")
    wallet_id, balance = stored
    entries = [
        {
            "sequence": entry.sequence,
            "at": iso(entry.at),
            "kind": entry.kind.value,
            "grant_id": entry.grant_id,
            "amount": decimal_text(entry.amount.amount),
            "reference": entry.reference,
        }
        for entry in reversed(store.ledger.ledger(wallet_id, limit=limit))
    ]
    return {
        **org_fields(organization),
        "wallet_id": wallet_id,
        "currency": code,
        "balance": decimal_text(balance),  # the sum of the ledger
        "pending": decimal_text(store.wallets.credit_pending(wallet_id)),  # not yet in it
        "entries": entries,
    }
