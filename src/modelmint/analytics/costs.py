"""Unit economics per deployment: what serving costs and earns per token and per hour.

Serving cost is measured at request time (a local engine's cost per hour shared by
engine busy time, or a remote upstream's prices per token) and summed in the
rollups; this module adds the hardware's view:

* ``busy_hours``: engine busy time; ``utilisation``: busy hours / hours the
  deployment existed in the window;
* ``revenue_per_busy_hour``: usage revenue earned per hour of engine time;
* ``break_even_utilisation`` = cost per hour / revenue per busy hour: how busy the
  hardware must be for what it earns to pay for all its hours, idle ones included.
  Above it, the deployment pays for itself; below, its idle time loses money.
* ``hardware_cost``: cost per hour x hours in the window, and the margin after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.orm import Session

from modelmint.analytics.currencies import report_currency
from modelmint.analytics.labels import UNKNOWN, deployment_info, version_labels
from modelmint.analytics.ratios import per_million, ratio
from modelmint.analytics.rollups import read_sums
from modelmint.analytics.windows import HOUR, to_hour
from modelmint.billing.exact import EXACT
from modelmint.billing.periods import Period
from modelmint.clock import utcnow

__all__ = ["DeploymentEconomics", "deployment_economics"]

_MICROS_PER_HOUR = 3_600_000_000


@dataclass(frozen=True, slots=True)
class DeploymentEconomics:
    """One deployment over a window: usage, exact revenue and cost, and derived ratios
    (rounded, None where undefined). ``hours`` is how many hours of the window it existed."""

    deployment_id: str
    public_name: str
    backend: str
    version_label: str
    requests: int
    errors: int
    tokens: int
    engine_us: int
    revenue: Decimal
    cost: Decimal
    cost_per_hour: Decimal | None
    hours: int

    @property
    def margin(self) -> Decimal:
        """Usage revenue minus measured serving cost, exact."""
        return EXACT.subtract(self.revenue, self.cost)

    @property
    def cost_per_1m_tokens(self) -> Decimal | None:
        return per_million(self.cost, self.tokens)

    @property
    def price_per_1m_tokens(self) -> Decimal | None:
        """Usage revenue per million tokens: the price customers paid on average."""
        return per_million(self.revenue, self.tokens)

    @property
    def busy_hours(self) -> Decimal:
        return ratio(self.engine_us, _MICROS_PER_HOUR, places=6) or Decimal(0)

    @property
    def utilisation(self) -> Decimal | None:
        """Busy hours / hours existed (0..1, 4 decimals; above 1 when requests overlap)."""
        return ratio(self.engine_us, self.hours * _MICROS_PER_HOUR, places=4)

    @property
    def revenue_per_busy_hour(self) -> Decimal | None:
        return ratio(EXACT.multiply(self.revenue, _MICROS_PER_HOUR), self.engine_us, places=6)

    @property
    def break_even_utilisation(self) -> Decimal | None:
        """Cost per hour / revenue per busy hour (4 decimals); None without an hourly cost
        or without revenue."""
        if self.cost_per_hour is None or self.revenue == 0:
            return None
        return ratio(EXACT.multiply(self.cost_per_hour, self.engine_us),
                     EXACT.multiply(self.revenue, _MICROS_PER_HOUR), places=4)  # fmt: skip

    @property
    def hardware_cost(self) -> Decimal | None:
        """Cost per hour x hours existed: the hardware's cost, idle time included."""
        if self.cost_per_hour is None:
            return None
        return EXACT.multiply(self.cost_per_hour, self.hours)

    @property
    def margin_after_hardware(self) -> Decimal | None:
        """Usage revenue minus the hardware's whole cost (None for per-token backends)."""
        hardware = self.hardware_cost
        return None if hardware is None else EXACT.subtract(self.revenue, hardware)


def _hours(window: Period, created: datetime, ended: datetime | None, now: datetime) -> int:
    start = max(to_hour(window.start), to_hour(created))
    end = min(window.end, now if ended is None else ended, now)
    # Whole hours, a started one counting as one (ceiling division).
    return -((start - end) // HOUR) if end > start else 0


def deployment_economics(
    session: Session,
    period: Period,
    *,
    currency: str | None = None,
    now: datetime | None = None,
) -> tuple[DeploymentEconomics, ...]:
    """Returns one ``DeploymentEconomics`` per deployment that served requests in ``period``
    or existed then, costliest first; usage without a deployment is under id ""."""
    code = report_currency(session, currency)
    moment = now or utcnow()
    sums = read_sums(session, period, ("deployment_id",), currency=code)
    infos = deployment_info(session)
    versions = version_labels(session, {info.model_version_id for info in infos.values()})
    ids = {key[0] for key in sums} | {
        i for i, info in infos.items() if info.created_at < period.end and info.active
    }
    rows = []
    for deployment_id in ids:
        measured = sums.get((deployment_id,))
        info = infos.get(deployment_id)
        ended = None if info is None or info.active else info.updated_at
        rows.append(
            DeploymentEconomics(
                deployment_id=deployment_id,
                public_name=info.public_name if info else UNKNOWN,
                backend=info.backend if info else "",
                version_label=versions.get(info.model_version_id, UNKNOWN) if info else UNKNOWN,
                requests=measured.requests if measured else 0,
                errors=measured.errors if measured else 0,
                tokens=(
                    measured.input_tokens + measured.output_tokens + measured.embedding_tokens
                    if measured
                    else 0
                ),
                engine_us=measured.engine_us if measured else 0,
                revenue=measured.revenue if measured else Decimal(0),
                cost=measured.cost if measured else Decimal(0),
                cost_per_hour=info.cost_per_hour if info else None,
                hours=_hours(period, info.created_at, ended, moment) if info else 0,
            )
        )
    rows.sort(key=lambda r: (-r.cost, -r.requests, r.deployment_id))
    return tuple(rows)
