"""An organisation's own standing: prepaid credit, this month's budgets, and its limits.

Composed from the operator's views (``billing_admin.wallet_balance``,
``billing_admin.list_budgets``), stripped of what is the operator's
business: grant internals, and (asked with a key) the budgets of the organisation's
other keys.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from modelmint import billing_admin
from modelmint.accounts.keys import KeyInfo
from modelmint.billing.exact import EXACT
from modelmint.storage.tables import Organization

__all__ = ["balance"]


def balance(session: Session, organization: Organization, key: KeyInfo | None) -> dict[str, Any]:
    """Credit per currency, budgets with what is left of them, and the limits in force.

    ``key`` is the caller's key (None in the portal, which speaks for the organisation):
    its own budget and limits are shown beside the organisation's.
    """
    credit = []
    for currency in billing_admin.wallet_currencies(session, organization.id):
        wallet = billing_admin.wallet_balance(session, organization.id, currency)
        credit.append(
            {
                "currency": wallet["currency"],
                "balance": wallet["balance"],
                "reserved": wallet["reserved"],
                "available": wallet["available"],
            }
        )
    budgets = []
    for budget in billing_admin.list_budgets(session, organization.id):
        scope = budget["api_key_id"]
        if scope is not None and key is not None and scope != key.id:
            continue  # another key's budget: the caller's key sees only its own
        limit, spent, held = (Decimal(budget[f]) for f in ("limit", "spent", "held"))
        remaining = EXACT.subtract(limit, EXACT.add(spent, held))
        budgets.append(
            {
                "scope": "key" if scope else "organization",
                "api_key_id": scope,
                "period": budget["period"],
                "currency": budget["currency"],
                "limit": budget["limit"],
                "spent": budget["spent"],
                "remaining": f"{max(remaining, Decimal(0)):f}",
                "hard": budget["hard"],
            }
        )
    limits: dict[str, Any] = {
        "organization": {
            "requests_per_minute": organization.rpm_limit,
            "tokens_per_minute": organization.tpm_limit,
            "concurrent_requests": organization.max_concurrent,
        }
    }
    if key is not None:
        limits["key"] = {
            "api_key_id": key.id,
            "requests_per_minute": key.rpm_limit,
            "tokens_per_minute": key.tpm_limit,
            "concurrent_requests": key.max_concurrent,
            "models": sorted(key.models) if key.models is not None else None,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        }
    return {
        "object": "balance",
        "organization_id": organization.id,
        "credit": credit,
        "budgets": budgets,
        "limits": limits,
    }
