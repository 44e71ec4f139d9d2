"""Serialization: billing's domain objects as JSON-ready dicts, and back, exactly.

The one wire and storage format of price books, plans, credit grants, coupons and
tax rates (the billing store keeps these documents in JSON columns; the CLI reads
price-book files in it). Rules:

* Decimals are strings in plain notation (``"0.00000015"``, never ``1.5E-7`` and
  never a JSON float): a float is not exact, so a float in the input is refused.
* Quantities keep their type: an ``int`` bound stays a JSON integer, a Decimal
  bound (compute seconds) becomes a string.
* Instants are ISO 8601 with an offset; naive ones are refused.
* ``x_from_dict(x_to_dict(v)) == v`` for every valid ``v``, to the last digit.

Malformed input raises ``InvalidPriceBook`` for a charge model or a price book and
another ``InvalidRequest`` (``InvalidPlan``, ``InvalidCoupon`` ...) for the rest,
each naming the field at fault (``prices[2].charge.tiers[0].price``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from modelmint.billing.charges import (
    ChargeModel,
    FlatRate,
    GraduatedTiers,
    PackagePrice,
    Tier,
    VolumeTiers,
)
from modelmint.billing.coupons import AmountOff, Coupon, CouponDuration, DurationKind, PercentOff
from modelmint.billing.errors import (
    InvalidCoupon,
    InvalidPlan,
    InvalidPriceBook,
    InvalidTaxRate,
    InvalidWalletOperation,
)
from modelmint.billing.exact import Quantity, to_decimal
from modelmint.billing.metrics import Metric
from modelmint.billing.money import Money
from modelmint.billing.plans import (
    EnterprisePlan,
    FreeTierPlan,
    Plan,
    PlanKind,
    PrepaidPlan,
    SubscriptionPlan,
)
from modelmint.billing.price_book import PriceBook
from modelmint.billing.tax import TaxRate
from modelmint.billing.wallet import CreditGrant, GrantKind
from modelmint.errors import InvalidRequest

__all__ = [
    "Json",
    "charge_from_dict",
    "charge_to_dict",
    "coupon_from_dict",
    "coupon_to_dict",
    "decimal_from_text",
    "decimal_text",
    "grant_from_dict",
    "grant_to_dict",
    "money_from_dict",
    "money_to_dict",
    "plan_from_dict",
    "plan_to_dict",
    "price_book_from_dict",
    "price_book_to_dict",
    "tax_rate_from_dict",
    "tax_rate_to_dict",
]

Json = dict[str, Any]
"""A JSON-ready object: str keys; values str, int, None, lists and such objects."""

_Error = type[InvalidRequest]


# -- scalars --------------------------------------------------------------------------


def decimal_text(value: Decimal) -> str:
    """``value`` in plain notation, exactly (``0.00000015``, not ``1.5E-7``)."""
    return f"{value:f}"


def decimal_from_text(value: object, where: str, error: _Error = InvalidRequest) -> Decimal:
    """A decimal from a string (or an int); floats are refused as inexact."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise error(
            f'{where}: expected a decimal string such as "0.15", got {_shown(value)}'
            + ("; floats are not exact" if isinstance(value, float) else ""),
            param=where,
        )
    return to_decimal(value, what=where, error=error)


def _shown(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


def _object(value: object, where: str, error: _Error) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise error(f"{where}: expected an object, got {_shown(value)}", param=where)
    return value


def _field(obj: Mapping[str, Any], key: str, where: str, error: _Error) -> Any:
    if key not in obj:
        raise error(f"{where}: missing field {key!r}", param=f"{where}.{key}")
    return obj[key]


def _str(value: object, where: str, error: _Error) -> str:
    if not isinstance(value, str) or not value:
        raise error(f"{where}: expected a non-empty string, got {_shown(value)}", param=where)
    return value


def _int(value: object, where: str, error: _Error) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{where}: expected an integer, got {_shown(value)}", param=where)
    return value


def _quantity_json(value: Quantity) -> int | str:
    return value if isinstance(value, int) else decimal_text(value)


def _quantity(value: object, where: str, error: _Error) -> Quantity:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return decimal_from_text(value, where, error)


def _instant(value: object, where: str, error: _Error) -> datetime:
    text = _str(value, where, error)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise error(f"{where}: {text!r} is not an ISO 8601 instant", param=where) from None
    if moment.tzinfo is None:
        raise error(f"{where}: {text!r} has no UTC offset", param=where)
    return moment


def _metric(value: object, where: str, error: _Error) -> Metric:
    name = _str(value, where, error)
    try:
        return Metric(name)
    except ValueError:
        known = ", ".join(m.value for m in Metric)
        raise error(f"{where}: unknown metric {name!r}; known: {known}", param=where) from None


def _choice(value: object, choices: Mapping[str, Any], where: str, error: _Error) -> Any:
    name = _str(value, where, error)
    if name not in choices:
        raise error(f"{where}: {name!r} is not one of {sorted(choices)}", param=where)
    return choices[name]


# -- money ----------------------------------------------------------------------------


def money_to_dict(money: Money) -> Json:
    return {"amount": decimal_text(money.amount), "currency": money.currency}


def money_from_dict(data: object, where: str = "money", error: _Error = InvalidRequest) -> Money:
    obj = _object(data, where, error)
    amount = decimal_from_text(_field(obj, "amount", where, error), f"{where}.amount", error)
    currency = _str(_field(obj, "currency", where, error), f"{where}.currency", error)
    try:
        return Money(amount, currency)
    except InvalidRequest as exc:
        raise error(f"{where}: {exc.message}", param=where) from None


# -- charge models and price books ----------------------------------------------------


def _tier_to_dict(tier: Tier) -> Json:
    return {
        "start": _quantity_json(tier.start),
        "up_to": None if tier.up_to is None else _quantity_json(tier.up_to),
        "price": decimal_text(tier.price),
        "flat_fee": decimal_text(tier.flat_fee),
        "per_units": tier.per_units,
    }


def charge_to_dict(charge: ChargeModel) -> Json:
    """A charge model as ``{"type": "flat" | "graduated" | "volume" | "package", ...}``."""
    if isinstance(charge, FlatRate):
        return {
            "type": "flat",
            "amount": decimal_text(charge.amount),
            "per_units": charge.per_units,
        }
    if isinstance(charge, GraduatedTiers | VolumeTiers):
        kind = "graduated" if isinstance(charge, GraduatedTiers) else "volume"
        return {"type": kind, "tiers": [_tier_to_dict(tier) for tier in charge.tiers]}
    if isinstance(charge, PackagePrice):
        return {"type": "package", "amount": decimal_text(charge.amount), "size": charge.size}
    raise TypeError(f"no serialization for charge model {type(charge).__name__}")


def _tier_from_dict(data: object, where: str) -> Tier:
    error = InvalidPriceBook
    obj = _object(data, where, error)
    up_to = obj.get("up_to")
    return Tier(
        start=_quantity(_field(obj, "start", where, error), f"{where}.start", error),
        up_to=None if up_to is None else _quantity(up_to, f"{where}.up_to", error),
        price=decimal_from_text(_field(obj, "price", where, error), f"{where}.price", error),
        flat_fee=decimal_from_text(obj.get("flat_fee", "0"), f"{where}.flat_fee", error),
        per_units=_int(obj.get("per_units", 1), f"{where}.per_units", error),
    )


def charge_from_dict(data: object, where: str = "charge") -> ChargeModel:
    """The charge model ``charge_to_dict`` wrote; ``InvalidPriceBook`` if malformed."""
    error = InvalidPriceBook
    obj = _object(data, where, error)
    kind = _str(_field(obj, "type", where, error), f"{where}.type", error)
    if kind == "flat":
        amount = decimal_from_text(_field(obj, "amount", where, error), f"{where}.amount", error)
        return FlatRate(amount, _int(obj.get("per_units", 1), f"{where}.per_units", error))
    if kind in ("graduated", "volume"):
        raw = _field(obj, "tiers", where, error)
        if not isinstance(raw, list):
            raise error(f"{where}.tiers: expected a list, got {_shown(raw)}", param=where)
        tiers = tuple(_tier_from_dict(t, f"{where}.tiers[{i}]") for i, t in enumerate(raw))
        try:
            return GraduatedTiers(tiers) if kind == "graduated" else VolumeTiers(tiers)
        except InvalidPriceBook as exc:
            raise error(f"{where}: {exc.message}", param=where) from None
    if kind == "package":
        amount = decimal_from_text(_field(obj, "amount", where, error), f"{where}.amount", error)
        return PackagePrice(amount, _int(_field(obj, "size", where, error), f"{where}.size", error))
    raise error(
        f"{where}.type: {kind!r} is not one of flat, graduated, volume, package",
        param=f"{where}.type",
    )


def price_book_to_dict(book: PriceBook) -> Json:
    """A price book with its prices sorted by (target, metric): one canonical text per book."""
    prices = sorted(book.prices.items(), key=lambda item: (item[0][0], item[0][1].value))
    return {
        "currency": book.currency,
        "prices": [
            {"target": target, "metric": metric.value, "charge": charge_to_dict(charge)}
            for (target, metric), charge in prices
        ],
        "model_groups": dict(sorted(book.model_groups.items())),
    }


def price_book_from_dict(data: object, where: str = "price_book") -> PriceBook:
    """The price book ``price_book_to_dict`` wrote; ``InvalidPriceBook`` if malformed."""
    error = InvalidPriceBook
    obj = _object(data, where, error)
    currency = _str(_field(obj, "currency", where, error), f"{where}.currency", error)
    raw = _field(obj, "prices", where, error)
    if not isinstance(raw, list):
        raise error(f"{where}.prices: expected a list, got {_shown(raw)}", param=where)
    prices: dict[tuple[str, Metric], ChargeModel] = {}
    for index, item in enumerate(raw):
        at = f"{where}.prices[{index}]"
        entry = _object(item, at, error)
        target = _str(_field(entry, "target", at, error), f"{at}.target", error)
        metric = _metric(_field(entry, "metric", at, error), f"{at}.metric", error)
        if (target, metric) in prices:
            raise error(f"{at}: a second price for ({target}, {metric.value})", param=at)
        prices[(target, metric)] = charge_from_dict(
            _field(entry, "charge", at, error), f"{at}.charge"
        )
    groups = _object(obj.get("model_groups", {}), f"{where}.model_groups", error)
    model_groups = {m: _str(g, f"{where}.model_groups.{m}", error) for m, g in groups.items()}
    try:
        return PriceBook(currency, prices, model_groups)
    except InvalidRequest as exc:  # a bad currency code is InvalidMoney
        raise error(f"{where}: {exc.message}", param=where) from None


# -- plans ----------------------------------------------------------------------------


def _allowances_to_dict(allowances: Mapping[Metric, Quantity | None]) -> Json:
    return {
        metric.value: None if quantity is None else _quantity_json(quantity)
        for metric, quantity in sorted(allowances.items())
    }


def _allowances_from_dict(
    data: object, where: str, *, unlimited_ok: bool
) -> dict[Metric, Quantity | None]:
    obj = _object(data, where, InvalidPlan)
    result: dict[Metric, Quantity | None] = {}
    for name, raw in obj.items():
        metric = _metric(name, f"{where}.{name}", InvalidPlan)
        if raw is None and unlimited_ok:
            result[metric] = None
        else:
            result[metric] = _quantity(raw, f"{where}.{name}", InvalidPlan)
    return result


def plan_to_dict(plan: Plan) -> Json:
    """A plan version as ``{"kind", "code", "version", ...terms of its kind}``."""
    data: Json = {"kind": plan.kind.value, "code": plan.code, "version": plan.version}
    if isinstance(plan, FreeTierPlan):
        data["currency"] = plan.currency
        data["allowances"] = _allowances_to_dict(plan.allowances)
    elif isinstance(plan, SubscriptionPlan):
        data["fee"] = money_to_dict(plan.fee)
        data["included"] = _allowances_to_dict(plan.included)
        data["price_book"] = price_book_to_dict(plan.price_book)
    elif isinstance(plan, PrepaidPlan):
        data["price_book"] = price_book_to_dict(plan.price_book)
    else:
        data["fee"] = money_to_dict(plan.fee)
    return data


def plan_from_dict(data: object, where: str = "plan") -> Plan:
    """The plan ``plan_to_dict`` wrote; ``InvalidPlan`` (or ``InvalidPriceBook``) if malformed."""
    error = InvalidPlan
    obj = _object(data, where, error)
    kind = _choice(
        _field(obj, "kind", where, error), {k.value: k for k in PlanKind}, f"{where}.kind", error
    )
    code = _str(_field(obj, "code", where, error), f"{where}.code", error)
    version = _int(_field(obj, "version", where, error), f"{where}.version", error)
    if kind is PlanKind.FREE:
        currency = _str(_field(obj, "currency", where, error), f"{where}.currency", error)
        allowances = _allowances_from_dict(
            _field(obj, "allowances", where, error), f"{where}.allowances", unlimited_ok=True
        )
        return FreeTierPlan(code, version, currency, allowances)
    if kind is PlanKind.ENTERPRISE:
        fee = money_from_dict(_field(obj, "fee", where, error), f"{where}.fee", error)
        return EnterprisePlan(code, version, fee)
    book = price_book_from_dict(_field(obj, "price_book", where, error), f"{where}.price_book")
    if kind is PlanKind.PREPAID:
        return PrepaidPlan(code, version, book)
    fee = money_from_dict(_field(obj, "fee", where, error), f"{where}.fee", error)
    raw_included = _allowances_from_dict(
        obj.get("included", {}), f"{where}.included", unlimited_ok=False
    )
    included = {m: q for m, q in raw_included.items() if q is not None}
    return SubscriptionPlan(code, version, fee, book, included)


# -- wallet grants, coupons, tax --------------------------------------------------------


def grant_to_dict(grant: CreditGrant) -> Json:
    return {
        "id": grant.id,
        "kind": grant.kind.value,
        "amount": money_to_dict(grant.amount),
        "priority": grant.priority,
        "granted_at": grant.granted_at.isoformat(),
        "expires_at": None if grant.expires_at is None else grant.expires_at.isoformat(),
        "sequence": grant.sequence,
    }


def grant_from_dict(data: object, where: str = "grant") -> CreditGrant:
    error = InvalidWalletOperation
    obj = _object(data, where, error)
    expires = obj.get("expires_at")
    return CreditGrant(
        id=_str(_field(obj, "id", where, error), f"{where}.id", error),
        kind=_choice(
            _field(obj, "kind", where, error),
            {k.value: k for k in GrantKind},
            f"{where}.kind",
            error,
        ),
        amount=money_from_dict(_field(obj, "amount", where, error), f"{where}.amount", error),
        priority=_int(_field(obj, "priority", where, error), f"{where}.priority", error),
        granted_at=_instant(_field(obj, "granted_at", where, error), f"{where}.granted_at", error),
        expires_at=None if expires is None else _instant(expires, f"{where}.expires_at", error),
        sequence=_int(_field(obj, "sequence", where, error), f"{where}.sequence", error),
    )


def coupon_to_dict(coupon: Coupon) -> Json:
    discount: Json
    if isinstance(coupon.discount, PercentOff):
        discount = {"type": "percent_off", "percent": decimal_text(coupon.discount.percent)}
    else:
        discount = {"type": "amount_off", "amount": money_to_dict(coupon.discount.amount)}
    return {
        "code": coupon.code,
        "discount": discount,
        "duration": {"kind": coupon.duration.kind.value, "periods": coupon.duration.periods},
    }


def coupon_from_dict(data: object, where: str = "coupon") -> Coupon:
    error = InvalidCoupon
    obj = _object(data, where, error)
    code = _str(_field(obj, "code", where, error), f"{where}.code", error)
    at = f"{where}.discount"
    raw = _object(_field(obj, "discount", where, error), at, error)
    kind = _str(_field(raw, "type", at, error), f"{at}.type", error)
    discount: PercentOff | AmountOff
    if kind == "percent_off":
        discount = PercentOff(decimal_from_text(_field(raw, "percent", at, error), at, error))
    elif kind == "amount_off":
        discount = AmountOff(money_from_dict(_field(raw, "amount", at, error), at, error))
    else:
        raise error(f"{at}.type: {kind!r} is not percent_off or amount_off", param=at)
    at = f"{where}.duration"
    raw = _object(_field(obj, "duration", where, error), at, error)
    duration_kind = _choice(
        _field(raw, "kind", at, error), {k.value: k for k in DurationKind}, f"{at}.kind", error
    )
    periods = raw.get("periods")
    duration = CouponDuration(
        duration_kind, None if periods is None else _int(periods, f"{at}.periods", error)
    )
    return Coupon(code, discount, duration)


def tax_rate_to_dict(rate: TaxRate) -> Json:
    return {"percent": decimal_text(rate.percent), "name": rate.name}


def tax_rate_from_dict(data: object, where: str = "tax_rate") -> TaxRate:
    error = InvalidTaxRate
    obj = _object(data, where, error)
    percent = decimal_from_text(_field(obj, "percent", where, error), f"{where}.percent", error)
    return TaxRate(percent, _str(obj.get("name", "Tax"), f"{where}.name", error))
