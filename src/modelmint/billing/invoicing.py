"""Invoicing: build an organisation's draft invoice for one period.

Inputs are what the rest of the platform already has at period close:

* the organisation's ``SubscriptionTimeline`` (fixed fees and proration);
* aggregated usage per (plan version, model, metric): ``UsageTotal`` rows;
* the exact per-request charges computed at request time (``rating.rate``),
  grouped by the same keys;
* the coupon redemption and tax rate of the organisation, if any.

The exactness invariant of usage lines
--------------------------------------
Every request charge is an exact Decimal. For each key the invoice sums them
exactly and rounds once, half-even, to minor units:

    line.exact_amount == sum(charges[key])                (exact, no rounding)
    line.amount       == round_half_even(line.exact_amount)

So the usage lines add up to the sum of per-request charges to the last minor
unit, line by line; across ``n`` lines the rounded sum differs from the exact sum
of all charges by less than ``n`` half minor units, and the invoice reports that
difference (``Invoice.rounding_difference``) instead of hiding it.

The builder also recomputes each line from the totals alone: because request
charges telescope (see ``rating``), their exact sum must equal
``charge.price(overage)``. A mismatch means a lost, duplicated or mispriced charge
and raises ``ChargeMismatch`` rather than bill a wrong amount.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

from modelmint.billing.coupons import Redemption
from modelmint.billing.errors import ChargeMismatch, CurrencyMismatch, SubscriptionConflict
from modelmint.billing.exact import exact_sum
from modelmint.billing.invoices import Invoice, InvoiceLine, LineKind
from modelmint.billing.metrics import check_quantity
from modelmint.billing.money import Money
from modelmint.billing.periods import Period
from modelmint.billing.plans import Plan, PlanRef
from modelmint.billing.rating import ChargedTotal, UsageKey, UsageTotal
from modelmint.billing.subscriptions import FeeCharge, FeeKind, SubscriptionTimeline
from modelmint.billing.tax import TaxRate

__all__ = ["draft_invoice", "usage_line"]

_FEE_LINES = {
    FeeKind.FIXED_FEE: (LineKind.FIXED_FEE, "{plan} fee"),
    FeeKind.PRORATION_CHARGE: (LineKind.PRORATION_CHARGE, "{plan} fee from {start:%Y-%m-%d %H:%M}"),
    FeeKind.PRORATION_CREDIT: (
        LineKind.PRORATION_CREDIT,
        "{plan} unused fee from {start:%Y-%m-%d %H:%M}",
    ),
}


def _fee_line(charge: FeeCharge) -> InvoiceLine:
    kind, template = _FEE_LINES[charge.kind]
    description = template.format(plan=charge.plan, start=charge.span.start)
    return InvoiceLine(kind, description, charge.amount, plan=charge.plan, span=charge.span)


def usage_line(
    plan: Plan, total: UsageTotal, charges: Sequence[Decimal] | ChargedTotal, currency: str
) -> InvoiceLine:
    """The invoice line of one usage key: exact sum of its charges, rounded once.

    ``charges`` is each request's charge, or their exact sum and count as the
    metering writer keeps them (``ChargedTotal``).
    """
    key = total.key
    quantity = check_quantity(total.quantity, key.metric)
    included = check_quantity(total.included, key.metric)
    if included > quantity:
        raise ChargeMismatch(f"{key}: {included} included units exceed the {quantity} used")
    if isinstance(charges, ChargedTotal):
        exact, count = charges.amount, charges.charges
    else:
        for amount in charges:
            if not isinstance(amount, Decimal):
                raise TypeError(
                    f"{key}: request charges must be Decimal, got {type(amount).__name__}"
                )
        exact, count = exact_sum(charges), len(charges)
    charge_model = plan.overage_charge(key.model, key.metric)
    expected = Decimal(0) if charge_model is None else charge_model.price(total.overage)
    if exact != expected:
        raise ChargeMismatch(
            f"{key.model} {key.metric.value} under {key.plan}: request charges sum to "
            f"{exact:f}, the plan prices {total.overage} overage units at {expected:f}"
        )
    unit = key.metric.unit
    description = f"{key.model} {key.metric.value}: {quantity} {unit}s"
    if included:
        description += f" ({included} included, {total.overage} charged)"
    return InvoiceLine(
        LineKind.USAGE,
        description,
        Money.rounded(exact, currency),
        exact_amount=exact,
        plan=key.plan,
        model=key.model,
        metric=key.metric,
        quantity=quantity,
        included=included,
        overage=total.overage,
        charges=count,
    )


def draft_invoice(
    *,
    invoice_id: str,
    period: Period,
    timeline: SubscriptionTimeline,
    usage: Iterable[UsageTotal],
    request_charges: Mapping[UsageKey, Sequence[Decimal] | ChargedTotal],
    coupon: Redemption | None = None,
    tax_rate: TaxRate | None = None,
) -> Invoice:
    """A draft invoice for ``timeline``'s organisation over ``period``.

    Lines: fixed fees and proration in time order, then usage sorted by plan,
    model and metric. The coupon applies if its duration covers ``period``.
    """
    subscriptions = timeline.in_period(period)
    plans: dict[PlanRef, Plan] = {s.plan.ref: s.plan for s in subscriptions}
    totals = sorted(usage, key=lambda t: t.key)
    for total in totals:
        if total.key.plan not in plans:
            raise SubscriptionConflict(
                f"usage under {total.key.plan}, a plan {timeline.organization_id!r} "
                f"was not subscribed to in {period}"
            )
    currencies = {plan.currency for plan in plans.values()}
    if len(currencies) > 1:
        raise CurrencyMismatch(f"plans in {sorted(currencies)} cannot share one invoice")
    if not currencies:
        raise SubscriptionConflict(
            f"{timeline.organization_id!r} has no subscription in {period} to invoice"
        )
    currency = currencies.pop()

    unmetered = set(request_charges) - {t.key for t in totals}
    if unmetered:
        raise ChargeMismatch(f"request charges without metered usage: {sorted(unmetered)}")

    lines = [_fee_line(charge) for charge in timeline.fee_charges(period)]
    lines += [
        usage_line(plans[t.key.plan], t, request_charges.get(t.key, ()), currency) for t in totals
    ]
    applies = coupon is not None and coupon.applies_to(period)
    return Invoice(
        invoice_id=invoice_id,
        organization_id=timeline.organization_id,
        period=period,
        currency=currency,
        plans=list(plans),
        lines=lines,
        coupon=coupon.coupon if applies and coupon is not None else None,
        tax_rate=tax_rate,
    )
