"""Tax rates for people: the rate an organisation's next invoices are drafted with."""

from __future__ import annotations

from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.billing.errors import InvalidTaxRate
from modelmint.billing.serialization import Json, decimal_text
from modelmint.billing.store import BillingStore
from modelmint.billing.tax import TaxRate
from modelmint.billing_admin.fields import decimal_string, org_fields

__all__ = ["set_tax_rate"]

_NAME_CHARS = 100  # the width of the tax name column


def set_tax_rate(session: Session, org: str, name: str, percent: str) -> Json:
    """The organisation's tax rate for invoices drafted from now on."""
    organization = accounts.get_org(session, org)
    if not isinstance(name, str) or not name.strip() or len(name) > _NAME_CHARS:
        raise InvalidTaxRate(f"tax name must be 1..{_NAME_CHARS} characters", param="name")
    rate = TaxRate(decimal_string(percent, "percent", InvalidTaxRate), name.strip())
    BillingStore(session).invoices.set_tax_rate(organization.id, rate)
    return {**org_fields(organization), "name": rate.name, "percent": decimal_text(rate.percent)}
