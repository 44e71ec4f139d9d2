"""The pricing simulator: a period's real usage replayed under candidate prices and plans.

``simulate(session, load_candidate(path), Period.parse("2026-11"))`` answers "what
if these had been the prices?" per organisation: revenue (usage charges + fixed
fees), serving cost and margin, actual and simulated, and the change. Pricing is
billing's own code (charge models, ``billing_quantities``, ``SubscriptionTimeline``
fees), never a re-implementation.

How usage is replayed. For each organisation, each plan version it used in the
period and each model, the quantities are the period's usage totals that
request-time rating kept (``billing_usage_totals``: what each plan actually
billed), completed from the analytics rollups for metrics only the candidate bills.
Each (plan, model, metric) line is priced on its whole period quantity beyond the
included units, which is exactly what the charges of its requests add up to
(``billing.rating``: charges telescope). Included units are a pool per (plan,
metric) shared by models in request order; where the candidate keeps the pool and
demand is unchanged, the actual split is reused, so candidate == current prices
reproduces actual revenue exactly. Where the pool or the quantities change, the
order of requests is unknown here, and the pool is shared in proportion to use.

Fixed fees: each subscription span of the period is put on its candidate plan and
billed by ``SubscriptionTimeline.fee_charges``, proration included.

Elasticity. With a constant price elasticity ``e`` (e.g. -0.3), the demand of each
(organisation, model) scales by ``(p_new / p_old) ** e``, where ``p_old`` is what its
usage was charged and ``p_new`` what the same usage costs under the candidate (no
scaling when either is zero: there is no price signal). Scaled quantities are
rounded half-even to whole units (microseconds for compute time), re-priced, and
the serving cost scales with them.

Plan kinds compared: every plan code (current and candidate) is priced for every
organisation's observed usage as if it had been on it for the whole period, so
subscription, pay-as-you-go and licence plans can be compared on the same usage;
a free tier counts only organisations whose usage fits its allowances.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from sqlalchemy.orm import Session

from modelmint import accounts
from modelmint.analytics.currencies import report_currency
from modelmint.analytics.fees import FeeSpan, accrue
from modelmint.analytics.labels import organization_names
from modelmint.analytics.price_file import CandidatePrices, merge_books
from modelmint.analytics.repricing import (
    MICROS,
    Usage,
    checked_elasticity,
    demand_factor,
    fits,
    price_usage,
    scale,
)
from modelmint.analytics.rollups import read_sums
from modelmint.analytics.simulation import OrgSimulation, PlanOption, Simulation
from modelmint.billing.errors import PlanNotFound, PriceNotFound
from modelmint.billing.exact import EXACT, Quantity, exact_sum
from modelmint.billing.metrics import Metric
from modelmint.billing.periods import Period
from modelmint.billing.plans import Plan, PlanRef, PrepaidPlan, SubscriptionPlan
from modelmint.billing.price_book import PriceBook
from modelmint.billing.rating import ChargedTotal
from modelmint.billing.store import BillingStore
from modelmint.billing.store.reporting import plan_codes, subscribed_organizations
from modelmint.billing.subscriptions import Subscription, SubscriptionTimeline
from modelmint.errors import InvalidRequest
from modelmint.metering.rollups import EconomicsSums

__all__ = ["OrgSimulation", "PlanOption", "Simulation", "simulate"]

_ZERO = Decimal(0)


# -- candidate plans ----------------------------------------------------------------------


class _Candidates:
    """Current plan versions -> the plans the candidate file puts in their place."""

    def __init__(
        self, candidate: CandidatePrices, repo: BillingStore, currency: str, codes: set[str]
    ) -> None:
        self._candidate = candidate
        self._currency = currency
        self._catalog = repo.plans.plan_catalog()
        self._codes = codes  # current plan codes in ``currency``
        self._mapped: dict[PlanRef, Plan] = {}

    def replacing(self, plan: Plan) -> Plan:
        """The candidate for ``plan`` (a current version): redefined, re-priced or itself."""
        mapped = self._mapped.get(plan.ref)
        if mapped is None:
            mapped = self._mapped[plan.ref] = self._replace(plan)
        return mapped

    def _replace(self, plan: Plan) -> Plan:
        book = _book(plan)
        if plan.code in self._candidate.plan_documents:
            base = book if book is not None else self._base(plan.code)
            return self._candidate.plan(
                plan.code, version=plan.version, currency=self._currency, base=base
            )
        if self._candidate.prices is not None and isinstance(plan, SubscriptionPlan | PrepaidPlan):
            merged = merge_books(self._currency, plan.price_book, self._candidate.prices)
            assert merged is not None  # both books are there
            return dataclasses.replace(plan, price_book=merged)
        return plan

    def _base(self, code: str) -> PriceBook | None:
        """The book a new plan starts from: its ``based_on`` plan's, else the one book
        today's priced plans share (None if they have several)."""
        based_on = self._candidate.plan_documents.get(code, {}).get("based_on")
        if based_on is not None:
            return _book(self._latest(based_on))
        books = {
            book for current in self._codes if (book := _book(self._latest(current))) is not None
        }
        return books.pop() if len(books) == 1 else None

    def _latest(self, code: str) -> Plan:
        try:
            return self._catalog.latest(code)
        except PlanNotFound:
            raise PlanNotFound(f"no plan {code!r} in the catalog", param="plan") from None

    def by_code(self, code: str) -> Plan:
        """The candidate plan of ``code`` (a current code or one the file adds)."""
        if code in self._codes:
            return self.replacing(self._latest(code))
        if code not in self._candidate.plan_documents:
            raise PlanNotFound(f"no plan {code!r} in the catalog or the file", param="plan")
        return self._candidate.plan(code, version=1, currency=self._currency, base=self._base(code))

    def codes(self) -> list[str]:
        """Every plan code in the candidate world: today's (in the currency) and the file's."""
        return sorted(self._codes | set(self._candidate.plan_documents))


# -- observed usage -----------------------------------------------------------------------------


def _measured(sums: EconomicsSums) -> dict[Metric, Quantity]:
    """Billable quantities of a rollup row, as ``charging.quantities.measured`` names them."""
    quantities: dict[Metric, Quantity] = {
        Metric.REQUESTS: sums.requests,
        Metric.COMPUTE_SECONDS: Decimal(sums.engine_us).scaleb(-MICROS),
    }
    if sums.embedding_tokens or not (sums.input_tokens or sums.output_tokens):
        quantities[Metric.EMBEDDING_TOKENS] = sums.embedding_tokens
    if sums.input_tokens or sums.output_tokens or not sums.embedding_tokens:
        quantities[Metric.INPUT_TOKENS] = sums.input_tokens
        quantities[Metric.OUTPUT_TOKENS] = sums.output_tokens
    return quantities


@dataclass
class _Observed:
    """What the rollups say about one organisation: quantities per (plan code, model) and
    serving cost per model."""

    by_plan: dict[str, dict[str, dict[Metric, Quantity]]]
    cost: dict[str, Decimal]

    def all_usage(self) -> Usage:
        """Quantities per (model, metric) over every plan."""
        total: dict[tuple[str, Metric], Decimal] = defaultdict(lambda: _ZERO)
        fractional: set[tuple[str, Metric]] = set()
        for models in self.by_plan.values():
            for model, quantities in models.items():
                for metric, quantity in quantities.items():
                    total[(model, metric)] = EXACT.add(total[(model, metric)], Decimal(quantity))
                    if isinstance(quantity, Decimal):
                        fractional.add((model, metric))
        return {k: (v if k in fractional else int(v)) for k, v in total.items()}


def _observe(session: Session, period: Period, currency: str) -> dict[str, _Observed]:
    sums = read_sums(session, period, ("organization_id", "plan_code", "model"), currency=currency)
    observed: dict[str, _Observed] = {}
    for (org, plan_code, model), measured in sums.items():
        if not (measured.requests or measured.errors):
            continue
        entry = observed.setdefault(org, _Observed({}, {}))
        entry.by_plan.setdefault(plan_code, {})[model] = _measured(measured)
        entry.cost[model] = EXACT.add(entry.cost.get(model, _ZERO), measured.cost)
    return observed


# -- one organisation --------------------------------------------------------------------------


@dataclass
class _Line:
    """One plan version's usage of an organisation: quantities and the actual split."""

    plan: Plan
    usage: Usage
    included: dict[tuple[str, Metric], Quantity]
    actual: dict[str, Decimal]  # charges per model


def _lines(
    repo: BillingStore,
    organization_id: str,
    period: Period,
    spans: tuple[Subscription, ...],
    observed: _Observed | None,
) -> list[_Line]:
    """The organisation's usage per plan version in ``period``: billed totals, completed
    by rollup quantities of metrics the plan did not bill (latest version of a code)."""
    plans = {s.plan.ref: s.plan for s in spans}
    totals: dict[PlanRef, list[ChargedTotal]] = defaultdict(list)
    for charged in repo.usage.usage_totals(organization_id, period.start):
        totals[charged.total.key.plan].append(charged)
    latest = {ref.code: ref for ref in sorted(plans)}
    lines = []
    for ref, plan in sorted(plans.items()):
        usage: Usage = {}
        included: dict[tuple[str, Metric], Quantity] = {}
        actual: dict[str, Decimal] = defaultdict(lambda: _ZERO)
        for charged in totals.get(ref, []):
            key = charged.total.key
            usage[(key.model, key.metric)] = charged.total.quantity
            included[(key.model, key.metric)] = charged.total.included
            actual[key.model] = EXACT.add(actual[key.model], charged.amount)
        if observed is not None and latest[ref.code] == ref:
            for model, quantities in observed.by_plan.get(ref.code, {}).items():
                for metric, quantity in quantities.items():
                    usage.setdefault((model, metric), quantity)
        lines.append(_Line(plan, usage, included, dict(actual)))
    return lines


def _reprice(line: _Line, plan: Plan, factors: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """``line`` priced under ``plan`` with demand ``factors`` per model. With demand
    unchanged, a metric whose allowance the candidate keeps reuses the actual split."""
    if all(factors.get(model, 1) == 1 for model, _ in line.usage):
        kept = frozenset(
            metric
            for _, metric in line.usage
            if plan.allowance(metric) == line.plan.allowance(metric)
        )
        return price_usage(plan, line.usage, line.included, kept)
    scaled = {
        (model, metric): scale(quantity, factors.get(model, Decimal(1)))
        for (model, metric), quantity in line.usage.items()
    }
    return price_usage(plan, scaled)


def _book(plan: Plan) -> PriceBook | None:
    book = getattr(plan, "price_book", None)
    return book if isinstance(book, PriceBook) else None


def _unpriced(exc: PriceNotFound, name: str) -> InvalidRequest:
    return InvalidRequest(
        f"the candidate cannot price {name}'s usage: {exc.message}", param="prices"
    )


def _simulate_org(
    repo: BillingStore,
    candidates: _Candidates,
    organization_id: str,
    name: str,
    period: Period,
    observed: _Observed | None,
    elasticity: Decimal | None,
) -> OrgSimulation:
    timeline = repo.subscriptions.timeline(organization_id)
    spans = timeline.in_period(period)
    actual_fees = exact_sum(c.amount.amount for c in timeline.fee_charges(period))
    moved = SubscriptionTimeline(
        organization_id,
        [
            Subscription(organization_id, candidates.replacing(s.plan), s.start, s.end)
            for s in spans
        ],
    )
    fees = exact_sum(c.amount.amount for c in moved.fee_charges(period))
    lines = _lines(repo, organization_id, period, spans, observed)
    old: dict[str, Decimal] = defaultdict(lambda: _ZERO)
    new: dict[str, Decimal] = defaultdict(lambda: _ZERO)
    try:
        for line in lines:
            for model, amount in line.actual.items():
                old[model] = EXACT.add(old[model], amount)
            for model, amount in _reprice(line, candidates.replacing(line.plan), {}).items():
                new[model] = EXACT.add(new[model], amount)
        factors = {m: demand_factor(old[m], new[m], elasticity) for m in set(old) | set(new)}
        usage = _ZERO
        for line in lines:
            usage = EXACT.add(
                usage, exact_sum(_reprice(line, candidates.replacing(line.plan), factors).values())
            )
    except PriceNotFound as exc:
        raise _unpriced(exc, name) from None
    costs = observed.cost if observed is not None else {}
    return OrgSimulation(
        organization_id=organization_id,
        name=name,
        current_plan=str(spans[-1].plan.ref) if spans else "",
        candidate_plan=str(candidates.replacing(spans[-1].plan).code) if spans else "",
        actual_revenue=EXACT.add(actual_fees, exact_sum(old.values())),
        simulated_revenue=EXACT.add(fees, usage),
        actual_cost=exact_sum(costs.values()),
        simulated_cost=exact_sum(
            EXACT.multiply(cost, factors.get(model, Decimal(1))) for model, cost in costs.items()
        ),
    )


def _whole_period_fee(plan: Plan, period: Period) -> Decimal:
    fee = plan.fixed_fee
    if fee.is_zero:
        return _ZERO
    span = FeeSpan("", plan.code, plan.kind.value, fee, period.start, period.end)
    return exact_sum(accrue([span], period).values())


def _on_plan(plan: Plan, observed: _Observed, period: Period) -> Decimal | None:
    """Revenue from one organisation's observed usage on ``plan`` for the whole period;
    None if the plan cannot take it (over a free tier's caps, or unpriced)."""
    usage = observed.all_usage()
    if not fits(plan, usage):
        return None
    try:
        charges = price_usage(plan, usage)
    except PriceNotFound:
        return None
    return EXACT.add(_whole_period_fee(plan, period), exact_sum(charges.values()))


def _compare_plans(
    candidates: _Candidates, observed: Mapping[str, _Observed], period: Period
) -> tuple[PlanOption, ...]:
    plans = [candidates.by_code(code) for code in candidates.codes()]
    costs = {org: exact_sum(o.cost.values()) for org, o in observed.items()}
    prices: dict[str, dict[str, Decimal]] = {}
    for plan in plans:
        prices[plan.code] = {}
        for org, usage in observed.items():
            amount = _on_plan(plan, usage, period)
            if amount is not None:
                prices[plan.code][org] = amount
    cheapest: dict[str, int] = defaultdict(int)
    for org in observed:
        options = [(amounts[org], code) for code, amounts in prices.items() if org in amounts]
        if options:
            cheapest[min(options)[1]] += 1
    return tuple(
        PlanOption(
            plan=plan.code,
            kind=plan.kind.value,
            revenue=exact_sum(prices[plan.code].values()),
            cost=exact_sum(costs[org] for org in prices[plan.code]),
            customers=len(prices[plan.code]),
            cheapest_for=cheapest[plan.code],
        )
        for plan in plans
    )


def simulate(
    session: Session,
    candidate: CandidatePrices,
    period: Period,
    *,
    elasticity: Decimal | None = None,
    currency: str | None = None,
) -> Simulation:
    """Returns the ``Simulation`` of ``period``'s usage under ``candidate``: each
    organisation's actual and simulated revenue, cost and margin, and every plan option
    priced for the observed usage. ``elasticity`` (e.g. ``Decimal("-0.3")``, within
    -10..0) models demand."""
    elasticity = checked_elasticity(elasticity)
    code = report_currency(session, currency or candidate.currency)
    repo = BillingStore(session)
    candidates = _Candidates(candidate, repo, code, plan_codes(session, code))
    observed = _observe(session, period, code)
    names = organization_names(session)
    assigned = {accounts.get_org(session, org).id: plan for org, plan in candidate.assign.items()}
    results = [
        _simulate_org(
            repo, candidates, org, names.get(org, org), period, observed.get(org), elasticity
        )
        for org in sorted(subscribed_organizations(session, period, code) - set(assigned))
    ]
    results += [
        _assigned(repo, candidates, org, names.get(org, org), plan_code, period, observed.get(org))
        for org, plan_code in sorted(assigned.items())
    ]
    results.sort(key=lambda r: (-abs(r.change), r.name))
    return Simulation(
        period=period,
        currency=code,
        elasticity=elasticity,
        organizations=tuple(results),
        plan_options=_compare_plans(candidates, observed, period),
    )


def _assigned(
    repo: BillingStore,
    candidates: _Candidates,
    organization_id: str,
    name: str,
    plan_code: str,
    period: Period,
    observed: _Observed | None,
) -> OrgSimulation:
    """An organisation the file moves to ``plan_code`` for the whole period (its observed
    usage, no demand change)."""
    subscribed = bool(repo.subscriptions.timeline(organization_id).in_period(period))
    actual = (
        _simulate_org(repo, candidates, organization_id, name, period, observed, None)
        if subscribed
        else None
    )
    usage = observed or _Observed({}, {})
    simulated = _on_plan(candidates.by_code(plan_code), usage, period)
    if simulated is None:
        raise InvalidRequest(
            f"assign.{name}: plan {plan_code} cannot take this organisation's usage "
            "(over its free allowances, or a model it does not price)",
            param=f"assign.{name}",
        )
    cost = exact_sum(usage.cost.values())
    return OrgSimulation(
        organization_id=organization_id,
        name=name,
        current_plan=actual.current_plan if actual else "",
        candidate_plan=plan_code,
        actual_revenue=actual.actual_revenue if actual else _ZERO,
        simulated_revenue=simulated,
        actual_cost=cost,
        simulated_cost=cost,
    )
