"""Plans: the commercial terms an organisation is billed under, and their versions.

Four kinds, one frozen dataclass each:

* ``FreeTierPlan``: included units per metric with a HARD cap. Usage beyond the
  allowance is refused before it runs (``rating.admit``) and nothing is ever
  charged. A metric the plan does not list has an allowance of 0 (refused); list
  it with ``None`` to give it away without limit.
* ``SubscriptionPlan``: a fixed fee per monthly period, included units per metric,
  and overage priced by the plan's price book.
* ``PrepaidPlan`` (pay as you go): every unit priced by the price book and paid from
  the wallet at request time. Its charge models must be monotone, so a request is
  never *credited* to a wallet because a volume tier got cheaper.
* ``EnterprisePlan``: a flat licence fee per period; usage is reported on the
  invoice but not charged.

Plans are versioned by ``(code, version)`` and immutable. Changing a plan means
publishing version N+1 (``PlanCatalog.revise``); subscriptions and invoices point
at the version they used, so a price change never rewrites a past invoice.

Overage is priced on the units past the allowance as if they were the first units
of the price book (``charge.price(quantity - included)``): included units are a
gift, not a discount on the first tiers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType
from typing import Any, ClassVar, Self

from modelmint.billing.charges import ChargeModel
from modelmint.billing.errors import (
    CurrencyMismatch,
    InvalidPlan,
    InvalidQuantity,
    PlanNotFound,
    PlanVersionConflict,
)
from modelmint.billing.exact import Quantity
from modelmint.billing.metrics import Metric, check_quantity
from modelmint.billing.money import Money
from modelmint.billing.price_book import PriceBook

__all__ = [
    "EnterprisePlan",
    "FreeTierPlan",
    "Plan",
    "PlanCatalog",
    "PlanKind",
    "PlanRef",
    "PrepaidPlan",
    "SubscriptionPlan",
]


class PlanKind(StrEnum):
    FREE = "free"
    SUBSCRIPTION = "subscription"
    PREPAID = "prepaid"
    ENTERPRISE = "enterprise"


@dataclass(frozen=True, slots=True, order=True)
class PlanRef:
    """Names one plan version; what invoices and usage records keep."""

    code: str
    version: int

    def __str__(self) -> str:
        return f"{self.code}@v{self.version}"


def _allowances(
    raw: Mapping[Metric, Quantity | None], *, unlimited_ok: bool
) -> Mapping[Metric, Quantity | None]:
    checked: dict[Metric, Quantity | None] = {}
    for metric, quantity in raw.items():
        if not isinstance(metric, Metric):
            raise InvalidPlan(f"allowance key {metric!r} is not a Metric")
        if quantity is None and not unlimited_ok:
            raise InvalidPlan(f"allowance for {metric.value} must be a quantity")
        try:
            checked[metric] = None if quantity is None else check_quantity(quantity, metric)
        except InvalidQuantity as exc:
            raise InvalidPlan(f"allowance: {exc.message}") from None
    return MappingProxyType(checked)


@dataclass(frozen=True)
class _PlanBase:
    code: str
    version: int

    kind: ClassVar[PlanKind]

    def __post_init__(self) -> None:
        if not isinstance(self.code, str) or not self.code.strip():
            raise InvalidPlan("plan code must be a non-empty string")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise InvalidPlan(f"plan version must be an int, got {self.version!r}")
        if self.version < 1:
            raise InvalidPlan(f"plan version starts at 1, got {self.version}")

    @property
    def ref(self) -> PlanRef:
        return PlanRef(self.code, self.version)

    @property
    def hard_cap(self) -> bool:
        """Whether usage past the allowance is refused rather than charged."""
        return False

    def revised(self, **changes: Any) -> Self:
        """The next version of this plan with ``changes`` applied; this one is untouched."""
        if "code" in changes or "version" in changes:
            raise InvalidPlan("a revision keeps the plan code and takes the next version")
        return dataclasses.replace(self, version=self.version + 1, **changes)


def _fee(fee: Money, currency: str, code: str) -> None:
    if not isinstance(fee, Money):
        raise InvalidPlan(f"plan {code}: the fee must be Money, got {type(fee).__name__}")
    if fee.is_negative:
        raise InvalidPlan(f"plan {code}: the fee must not be negative, got {fee}")
    if fee.currency != currency:
        raise CurrencyMismatch(f"plan {code}: fee in {fee.currency}, prices in {currency}")


@dataclass(frozen=True)
class FreeTierPlan(_PlanBase):
    """Included units per metric (``None``: unlimited); nothing past them, never a charge."""

    currency: str
    allowances: Mapping[Metric, Quantity | None] = field(hash=False)

    kind: ClassVar[PlanKind] = PlanKind.FREE

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "currency", Money.zero(self.currency).currency)
        object.__setattr__(self, "allowances", _allowances(self.allowances, unlimited_ok=True))

    @property
    def fixed_fee(self) -> Money:
        return Money.zero(self.currency)

    @property
    def hard_cap(self) -> bool:
        return True

    def allowance(self, metric: Metric) -> Quantity | None:
        """Included units of ``metric`` per period; ``None`` means unlimited."""
        return self.allowances.get(metric, 0)

    def overage_charge(self, model: str, metric: Metric) -> ChargeModel | None:
        return None  # a free tier never charges


@dataclass(frozen=True)
class SubscriptionPlan(_PlanBase):
    """``fee`` per month, ``included`` units per metric, overage from ``price_book``."""

    fee: Money
    price_book: PriceBook
    included: Mapping[Metric, Quantity] = field(default_factory=dict, hash=False)

    kind: ClassVar[PlanKind] = PlanKind.SUBSCRIPTION

    def __post_init__(self) -> None:
        super().__post_init__()
        _fee(self.fee, self.price_book.currency, self.code)
        object.__setattr__(self, "included", _allowances(self.included, unlimited_ok=False))

    @property
    def currency(self) -> str:
        return self.price_book.currency

    @property
    def fixed_fee(self) -> Money:
        return self.fee

    def allowance(self, metric: Metric) -> Quantity | None:
        return self.included.get(metric, 0)

    def overage_charge(self, model: str, metric: Metric) -> ChargeModel | None:
        return self.price_book.lookup(model, metric).charge


@dataclass(frozen=True)
class PrepaidPlan(_PlanBase):
    """Every unit priced by ``price_book`` and paid from the wallet as it is used."""

    price_book: PriceBook

    kind: ClassVar[PlanKind] = PlanKind.PREPAID

    def __post_init__(self) -> None:
        super().__post_init__()
        for (target, metric), charge in self.price_book.prices.items():
            if not charge.is_monotone:
                raise InvalidPlan(
                    f"plan {self.code}: the price of {metric.value} for {target!r} gets "
                    "cheaper as usage grows; a prepaid wallet cannot be credited mid-period"
                )

    @property
    def currency(self) -> str:
        return self.price_book.currency

    @property
    def fixed_fee(self) -> Money:
        return Money.zero(self.currency)

    def allowance(self, metric: Metric) -> Quantity | None:
        return 0

    def overage_charge(self, model: str, metric: Metric) -> ChargeModel | None:
        return self.price_book.lookup(model, metric).charge


@dataclass(frozen=True)
class EnterprisePlan(_PlanBase):
    """A flat licence ``fee`` per month; usage is reported, not charged."""

    fee: Money

    kind: ClassVar[PlanKind] = PlanKind.ENTERPRISE

    def __post_init__(self) -> None:
        super().__post_init__()
        _fee(self.fee, getattr(self.fee, "currency", ""), self.code)

    @property
    def currency(self) -> str:
        return self.fee.currency

    @property
    def fixed_fee(self) -> Money:
        return self.fee

    def allowance(self, metric: Metric) -> Quantity | None:
        return None  # reported, never capped

    def overage_charge(self, model: str, metric: Metric) -> ChargeModel | None:
        return None


Plan = FreeTierPlan | SubscriptionPlan | PrepaidPlan | EnterprisePlan
"""Any plan version."""


class PlanCatalog:
    """Every published version of every plan; versions are only ever added."""

    def __init__(self) -> None:
        self._versions: dict[str, list[Plan]] = {}

    def publish(self, plan: Plan) -> Plan:
        """Add ``plan``; it must be version 1 of a new code or the next version of one."""
        versions = self._versions.setdefault(plan.code, [])
        expected = len(versions) + 1
        if plan.version != expected:
            raise PlanVersionConflict(
                f"plan {plan.code}: cannot publish version {plan.version}, "
                f"the next version is {expected}"
            )
        versions.append(plan)
        return plan

    def revise(self, code: str, **changes: Any) -> Plan:
        """Publish the next version of ``code`` with ``changes``; returns it."""
        return self.publish(self.latest(code).revised(**changes))

    def latest(self, code: str) -> Plan:
        versions = self._versions.get(code)
        if not versions:
            raise PlanNotFound(f"no plan {code!r}")
        return versions[-1]

    def get(self, ref: PlanRef) -> Plan:
        versions = self._versions.get(ref.code, [])
        if not 1 <= ref.version <= len(versions):
            raise PlanNotFound(f"no plan version {ref}")
        return versions[ref.version - 1]

    def versions(self, code: str) -> tuple[Plan, ...]:
        return tuple(self._versions.get(code, ()))
