"""The simulator's TOML: billing's own charge models and plans, errors naming the field."""

from __future__ import annotations

import tomllib
from decimal import Decimal
from pathlib import Path

import pytest

from modelmint.analytics.price_file import load_candidate, merge_books, parse_candidate
from modelmint.billing import (
    FlatRate,
    GraduatedTiers,
    InvalidPlan,
    InvalidPriceBook,
    Metric,
    PackagePrice,
    PrepaidPlan,
    PriceBook,
    SubscriptionPlan,
    VolumeTiers,
)
from modelmint.errors import InvalidRequest

D = Decimal

DOCUMENT = """
currency = "EUR"
[prices.chat]
input_tokens = { type = "flat", amount = "0.20", per_units = 1_000_000 }
output_tokens = { type = "graduated", per_units = 1_000_000, tiers = [
    { up_to = 1_000, price = "2" }, { price = "1", flat_fee = "0.5" },
] }
[prices."*"]
embedding_tokens = { type = "volume", tiers = [{ up_to = 10, price = "1" }, { price = "0.5" }] }
requests = { type = "package", amount = "0.50", size = 1000 }
[plans.team]
kind = "subscription"
fee = "49.00"
included = { input_tokens = 1000 }
[plans.free]
kind = "free"
allowances = { requests = 10, compute_seconds = "unlimited" }
[assign]
acme = "team"
"""


def test_a_candidate_file_becomes_billing_objects() -> None:
    candidate = parse_candidate(tomllib.loads(DOCUMENT))
    assert candidate.currency == "EUR" and candidate.assign == {"acme": "team"}
    book = candidate.prices
    assert book is not None
    assert book.find("chat", Metric.INPUT_TOKENS).charge == FlatRate(D("0.20"), 1_000_000)  # type: ignore[union-attr]
    output = book.lookup("chat", Metric.OUTPUT_TOKENS).charge
    assert isinstance(output, GraduatedTiers)
    assert [(t.start, t.up_to, t.per_units) for t in output.tiers] == [
        (0, 1000, 1_000_000), (1000, None, 1_000_000)
    ]  # fmt: skip
    assert isinstance(book.lookup("x", Metric.EMBEDDING_TOKENS).charge, VolumeTiers)
    assert book.lookup("x", Metric.REQUESTS).charge == PackagePrice(D("0.50"), 1000)
    team = candidate.plan("team", version=3, currency="EUR", base=None)
    assert isinstance(team, SubscriptionPlan) and team.version == 3
    assert team.fee.amount == D("49.00") and team.allowance(Metric.INPUT_TOKENS) == 1000
    free = candidate.plan("free", version=1, currency="EUR", base=None)
    assert free.allowance(Metric.COMPUTE_SECONDS) is None


def test_prices_override_the_book_they_start_from() -> None:
    base = PriceBook(
        "EUR",
        {
            ("chat", Metric.INPUT_TOKENS): FlatRate(D("9")),
            ("other", Metric.INPUT_TOKENS): FlatRate(D("7")),
        },
    )
    candidate = parse_candidate(
        tomllib.loads('[prices.chat]\ninput_tokens = { type = "flat", amount = "1" }')
    )
    merged = merge_books("EUR", base, candidate.prices)
    assert merged is not None
    assert merged.lookup("chat", Metric.INPUT_TOKENS).charge == FlatRate(D("1"))
    assert merged.lookup("other", Metric.INPUT_TOKENS).charge == FlatRate(D("7"))
    payg = parse_candidate(tomllib.loads('[plans.p]\nkind = "prepaid"'))
    with pytest.raises(InvalidPlan, match="needs prices"):
        payg.plan("p", version=1, currency="EUR", base=None)
    assert isinstance(payg.plan("p", version=1, currency="EUR", base=base), PrepaidPlan)


@pytest.mark.parametrize(
    ("text", "error", "where"),
    [
        ('[prices.a]\ninput_tokens = { type = "flat", amount = 0.2 }', InvalidPriceBook, "prices"),
        ('[prices.a]\nbogus = { type = "flat", amount = "1" }', InvalidPriceBook, "bogus"),
        ('[prices.a]\ninput_tokens = { type = "tiered" }', InvalidPriceBook, "type"),
        ('[plans.x]\nkind = "gold"', InvalidPlan, "plans.x.kind"),
        ('[plans.x]\nkind = "enterprise"', InvalidPlan, "fee"),
        ('[plans.x]\nkind = "free"\nextra = 1', InvalidPlan, "unknown fields"),
        ('price = "1"', InvalidRequest, "unknown top-level"),
    ],
)
def test_mistakes_are_refused_naming_the_field(
    text: str, error: type[InvalidRequest], where: str
) -> None:
    with pytest.raises(error, match=where):
        parse_candidate(tomllib.loads(text))


def test_unreadable_files_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="cannot read"):
        load_candidate(tmp_path / "missing.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[prices\n")
    with pytest.raises(InvalidRequest, match="not valid TOML"):
        load_candidate(broken)
