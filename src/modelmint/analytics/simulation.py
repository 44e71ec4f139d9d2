"""What the pricing simulator gives back: per organisation, per plan option, in total.

Money is exact Decimal in the simulation's currency; percentages are rounded to two
places (``ratios.percent``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from modelmint.analytics.ratios import percent
from modelmint.billing.exact import EXACT, exact_sum
from modelmint.billing.periods import Period

__all__ = ["OrgSimulation", "PlanOption", "Simulation"]


@dataclass(frozen=True, slots=True)
class OrgSimulation:
    """One organisation, actual and simulated; money exact in the simulation's currency."""

    organization_id: str
    name: str
    current_plan: str
    candidate_plan: str
    actual_revenue: Decimal
    simulated_revenue: Decimal
    actual_cost: Decimal
    simulated_cost: Decimal

    @property
    def change(self) -> Decimal:
        """Simulated minus actual revenue: positive means this customer would pay more."""
        return EXACT.subtract(self.simulated_revenue, self.actual_revenue)

    @property
    def change_pct(self) -> Decimal | None:
        return percent(self.change, self.actual_revenue)

    @property
    def actual_margin(self) -> Decimal:
        return EXACT.subtract(self.actual_revenue, self.actual_cost)

    @property
    def simulated_margin(self) -> Decimal:
        return EXACT.subtract(self.simulated_revenue, self.simulated_cost)


@dataclass(frozen=True, slots=True)
class PlanOption:
    """One plan priced for every organisation's observed usage over the whole period.

    ``customers`` is how many organisations it could serve (a free tier: those within
    its allowances; any plan: those whose models it prices); ``cheapest_for`` how many
    of those would pay least on it.
    """

    plan: str
    kind: str
    revenue: Decimal
    cost: Decimal
    customers: int
    cheapest_for: int

    @property
    def margin(self) -> Decimal:
        return EXACT.subtract(self.revenue, self.cost)

    @property
    def margin_pct(self) -> Decimal | None:
        return percent(self.margin, self.revenue)


@dataclass(frozen=True, slots=True)
class Simulation:
    """The result: per organisation (biggest change first) and the plan comparison."""

    period: Period
    currency: str
    elasticity: Decimal | None
    organizations: tuple[OrgSimulation, ...]
    plan_options: tuple[PlanOption, ...]

    @property
    def actual_revenue(self) -> Decimal:
        return exact_sum(o.actual_revenue for o in self.organizations)

    @property
    def simulated_revenue(self) -> Decimal:
        return exact_sum(o.simulated_revenue for o in self.organizations)

    @property
    def actual_cost(self) -> Decimal:
        return exact_sum(o.actual_cost for o in self.organizations)

    @property
    def simulated_cost(self) -> Decimal:
        return exact_sum(o.simulated_cost for o in self.organizations)

    @property
    def change(self) -> Decimal:
        return EXACT.subtract(self.simulated_revenue, self.actual_revenue)

    @property
    def change_pct(self) -> Decimal | None:
        return percent(self.change, self.actual_revenue)
