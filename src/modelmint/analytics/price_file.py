"""Candidate prices and plans for the pricing simulator, read from a TOML file.

The file says what would change; everything it leaves out stays as it is today::

    currency = "USD"                      # optional; default: the plans' currency

    # A price book: per model (or model group, or "*" for every other model) and
    # metric (input_tokens, output_tokens, embedding_tokens, requests,
    # compute_seconds). Amounts are strings, never TOML floats (floats are inexact).
    [prices."smollm2-135m-instruct"]
    input_tokens = { type = "flat", amount = "0.20", per_units = 1_000_000 }
    output_tokens = { type = "graduated", per_units = 1_000_000, tiers = [
        { up_to = 10_000_000, price = "0.80" },
        { price = "0.60" },                 # no up_to: the open-ended last tier
    ] }
    [prices."*"]
    embedding_tokens = { type = "volume", tiers = [
        { up_to = 1_000_000, price = "0.10", per_units = 1_000_000 },
        { price = "0.05", per_units = 1_000_000, flat_fee = "1.00" },
    ] }
    requests = { type = "package", amount = "0.50", size = 1000 }

    [model_groups]                        # optional: models priced as one group
    "smollm2-135m-instruct" = "small-chat"

    # Plans, by code. A plan named like a current one replaces it for its customers;
    # a new code is a new option (compared, and usable in [assign]).
    [plans.starter]
    kind = "subscription"                 # free | subscription | prepaid | enterprise
    fee = "25.00"                         # subscription and enterprise: per month
    included = { input_tokens = 2_000_000, output_tokens = 1_000_000 }
    [plans.payg]
    kind = "prepaid"
    [plans.enterprise]
    kind = "enterprise"
    fee = "1500.00"
    [plans.free]
    kind = "free"
    allowances = { input_tokens = 100_000, requests = 1000, compute_seconds = "unlimited" }
    [plans.pro]                           # a new plan, priced like "payg" today,
    kind = "subscription"                 # then [prices], then its own changes
    fee = "99.00"
    based_on = "payg"
    [plans.pro.prices."*"]
    input_tokens = { type = "flat", amount = "0.10", per_units = 1_000_000 }

    [assign]                              # optional: organisation (name or id) -> plan
    "demo-acme" = "enterprise"

Charge types are billing's own (``billing.charges``): ``flat`` (amount per
``per_units``), ``graduated`` and ``volume`` tiers (``up_to``, ``price``, optional
``flat_fee`` and ``per_units``, which may also be given once for all tiers), and
``package`` (``amount`` per ``size`` units, a started package paid in full). The
document is turned into billing's serialization format and parsed by it, so the
simulator prices with exactly the rules invoices use, and rejects what billing
rejects, naming the field.

Prices are changes, never a whole new book: ``[prices]`` overrides the same
(target, metric) prices of every subscription and prepaid plan (redefined or not;
fees and allowances of plans not under ``[plans]`` stay), and a plan's own
``prices`` override those. A plan under ``[plans]`` starts from the book of the
current plan with its code, or of ``based_on``; a new plan without ``based_on``
starts from the book today's priced plans share, if they share one.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelmint.billing.errors import InvalidPlan, InvalidPriceBook
from modelmint.billing.plans import Plan
from modelmint.billing.price_book import PriceBook
from modelmint.billing.serialization import (
    Json,
    plan_from_dict,
    price_book_from_dict,
    price_book_to_dict,
)
from modelmint.errors import InvalidRequest

__all__ = ["CandidatePrices", "load_candidate", "merge_books", "parse_candidate"]

_UNLIMITED = "unlimited"
_TIERED = ("graduated", "volume")


def merge_books(currency: str, *books: PriceBook | None) -> PriceBook | None:
    """One price book in ``currency`` from ``books``, each overriding the prices (per
    target and metric) and model groups of those before it; None if all are None."""
    present = [book for book in books if book is not None]
    if not present:
        return None
    prices: dict[Any, Any] = {}
    groups: dict[str, str] = {}
    for book in present:
        prices.update(book.prices)
        groups.update(book.model_groups)
    return PriceBook(currency, prices, groups)


@dataclass(frozen=True)
class CandidatePrices:
    """What a candidate file proposes: price changes, plans by code, assignments.

    ``prices`` holds the ``[prices]`` section as a price book of *changes*: merged over
    each priced plan's own book, so a file names only the prices it changes.
    ``plan_documents`` are the ``[plans]`` as billing documents without a version
    (and, priced ones, without their base book), completed by ``plan``.
    """

    currency: str | None
    prices: PriceBook | None
    plan_documents: Mapping[str, Json] = field(default_factory=dict)
    assign: Mapping[str, str] = field(default_factory=dict)

    def plan(self, code: str, *, version: int, currency: str, base: PriceBook | None) -> Plan:
        """The candidate plan ``code`` as version ``version``. A priced plan's book is
        ``base`` (the current book it starts from), then ``[prices]``, then its own."""
        document = dict(self.plan_documents[code])
        document.pop("based_on", None)
        document["version"] = version
        if document["kind"] in ("subscription", "enterprise"):
            document["fee"] = {"amount": document["fee"], "currency": currency}
        if document["kind"] == "free":
            document["currency"] = currency
        if document["kind"] in ("subscription", "prepaid"):
            own = document.pop("price_book", None)
            own_book = None if own is None else price_book_from_dict({**own, "currency": currency})
            book = merge_books(currency, base, self.prices, own_book)
            if book is None:
                raise InvalidPlan(
                    f"plans.{code}: a {document['kind']} plan needs prices: give "
                    f'[plans.{code}.prices], [prices] or based_on = "<current plan>"',
                    param=f"plans.{code}",
                )
            document["price_book"] = price_book_to_dict(book)
        return plan_from_dict(document, where=f"plans.{code}")


def load_candidate(path: Path) -> CandidatePrices:
    """Returns the ``CandidatePrices`` of the TOML file at ``path`` (``InvalidRequest`` if it
    cannot be read or is malformed)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}", param="prices") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidRequest(f"{path} is not valid TOML: {exc}", param="prices") from None
    return parse_candidate(data)


def _table(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{where}: expected a table, got {value!r}", param=where)
    return value


def _charge(raw: object, where: str) -> Json:
    """A TOML charge as billing's charge document (tier starts filled in)."""
    charge = dict(_table(raw, where))
    kind = charge.get("type")
    if kind not in _TIERED:
        return charge
    tiers = charge.get("tiers")
    if not isinstance(tiers, list) or not tiers:
        raise InvalidPriceBook(f"{where}.tiers: expected a list of tiers", param=f"{where}.tiers")
    shared = charge.pop("per_units", None)
    start: object = 0
    documents = []
    for index, raw_tier in enumerate(tiers):
        tier = dict(_table(raw_tier, f"{where}.tiers[{index}]"))
        if shared is not None:
            tier.setdefault("per_units", shared)
        tier["start"] = start
        tier.setdefault("up_to", None)
        start = tier["up_to"]
        documents.append(tier)
    charge["tiers"] = documents
    return charge


def _price_book(prices: object, groups: object, where: str, currency: str) -> PriceBook:
    entries = []
    for target, metrics in _table(prices, where).items():
        for metric, charge in _table(metrics, f"{where}.{target}").items():
            at = f"{where}.{target}.{metric}"
            entries.append({"target": target, "metric": metric, "charge": _charge(charge, at)})
    document = {
        "currency": currency,
        "prices": entries,
        "model_groups": dict(_table(groups or {}, "model_groups")),
    }
    return price_book_from_dict(document, where)


def _allowances(raw: object, where: str) -> Json:
    return {
        metric: None if quantity == _UNLIMITED else quantity
        for metric, quantity in _table(raw, where).items()
    }


def _plan_document(code: str, raw: object, currency: str) -> Json:
    where = f"plans.{code}"
    table = dict(_table(raw, where))
    kind = table.pop("kind", None)
    if kind not in ("free", "subscription", "prepaid", "enterprise"):
        raise InvalidPlan(
            f"{where}.kind: {kind!r} is not one of free, subscription, prepaid, enterprise",
            param=f"{where}.kind",
        )
    document: Json = {"kind": kind, "code": code}
    if kind in ("subscription", "enterprise"):
        if "fee" not in table:
            raise InvalidPlan(f"{where}: a {kind} plan needs a fee", param=f"{where}.fee")
        document["fee"] = table.pop("fee")
    if kind == "subscription":
        document["included"] = table.pop("included", {})
    if kind == "free":
        document["allowances"] = _allowances(table.pop("allowances", {}), f"{where}.allowances")
    if "based_on" in table:
        document["based_on"] = str(table.pop("based_on"))
    if "prices" in table:
        if kind not in ("subscription", "prepaid"):
            raise InvalidPlan(f"{where}: a {kind} plan takes no prices", param=f"{where}.prices")
        book = _price_book(
            table.pop("prices"), table.pop("model_groups", None), f"{where}.prices", currency
        )
        document["price_book"] = price_book_to_dict(book)
    if table:
        raise InvalidPlan(f"{where}: unknown fields {sorted(table)}", param=where)
    return document


def parse_candidate(data: Mapping[str, Any]) -> CandidatePrices:
    """Returns the ``CandidatePrices`` of a parsed TOML document (see the module docstring)."""
    known = {"currency", "prices", "model_groups", "plans", "assign"}
    unknown = set(data) - known
    if unknown:
        raise InvalidRequest(
            f"unknown top-level keys {sorted(unknown)}; expected some of {sorted(known)}",
            param="prices",
        )
    currency = data.get("currency")
    if currency is not None and not isinstance(currency, str):
        raise InvalidRequest('currency must be a string such as "USD"', param="currency")
    # Price books are checked now in the stated currency (or USD as a stand-in); the
    # simulator re-reads them in the report's currency.
    book_currency = currency or "USD"
    book = None
    if "prices" in data or "model_groups" in data:
        book = _price_book(
            data.get("prices", {}), data.get("model_groups"), "prices", book_currency
        )
    plans = {
        code: _plan_document(code, raw, book_currency)
        for code, raw in _table(data.get("plans", {}), "plans").items()
    }
    assign = {str(org): str(code) for org, code in _table(data.get("assign", {}), "assign").items()}
    return CandidatePrices(currency, book, plans, assign)
