"""Which currency a report is in when the caller does not say."""

from __future__ import annotations

from sqlalchemy.orm import Session

from modelmint.billing.money import Money
from modelmint.billing.store.reporting import plan_currencies
from modelmint.errors import InvalidRequest

__all__ = ["DEFAULT_CURRENCY", "report_currency"]

# Without any plan there is no revenue; costs are then shown in this currency.
DEFAULT_CURRENCY = "USD"


def report_currency(session: Session, currency: str | None = None) -> str:
    """``currency`` normalised, or the one currency the published plans use.

    Several currencies and none chosen is an ``InvalidRequest``: money of two
    currencies is never added up.
    """
    if currency is not None:
        try:
            return Money.zero(currency).currency
        except (TypeError, ValueError, InvalidRequest):
            raise InvalidRequest(
                f"{currency!r} is not a three-letter currency code", param="currency"
            ) from None
    found = sorted(plan_currencies(session))
    if not found:
        return DEFAULT_CURRENCY
    if len(found) > 1:
        raise InvalidRequest(
            f"plans are priced in {', '.join(found)}; choose one currency to report in",
            param="currency",
        )
    return found[0]
