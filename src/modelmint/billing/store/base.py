"""What every part of the billing store shares: the unit of work, the organisation
check, flushing with ``Conflict``, and metered quantities as stored in columns."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from modelmint.billing.exact import Quantity
from modelmint.billing.metrics import Metric
from modelmint.errors import Conflict, NotFound
from modelmint.storage.tables import Organization

__all__ = ["StorePart", "loaded_quantity", "stored_quantity"]


class StorePart:
    """One aggregate's storage inside the caller's ``Session``: it flushes, never commits."""

    def __init__(self, session: Session) -> None:
        self._session = session

    def _require_org(self, organization_id: str) -> None:
        if self._session.get(Organization, organization_id) is None:
            raise NotFound(f"no organisation {organization_id!r}", param="organization")

    def _flush(self, conflict: str) -> None:
        try:
            self._session.flush()
        except IntegrityError as exc:  # a concurrent writer won between check and insert
            raise Conflict(conflict) from exc

    def _on_postgresql(self) -> bool:
        return self._session.get_bind().dialect.name == "postgresql"


def stored_quantity(value: Quantity | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def loaded_quantity(value: Decimal | None, metric: Metric | None) -> Quantity | None:
    # Whole-unit metrics are metered as ints; keep that type across a round trip.
    if value is None:
        return None
    if (metric is None or not metric.fractional) and value == value.to_integral_value():
        return int(value)
    return value
