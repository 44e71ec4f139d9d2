"""The pricing simulator on a generated month of real, charged usage.

Candidate == current prices must reproduce the actual revenue exactly (usage
charges to the last unit, fees to the cent); a price change must move revenue by
what an independent computation from the raw rows says; elasticity must move demand
against the price.
"""

from __future__ import annotations

import tomllib
from decimal import Decimal

import pytest

from modelmint.analytics.price_file import CandidatePrices, parse_candidate
from modelmint.analytics.simulator import OrgSimulation, Simulation, simulate
from modelmint.billing.errors import InvalidPlan, InvalidPriceBook
from modelmint.storage import Database
from tests.integration.test_analytics import (
    CHAT,
    EMBED,
    OCTOBER,
    REMOTE,
    World,
    money,
    raw_rows,
    world,
)

__all__ = ["world"]  # the fixture, shared with the analytics tests' generated month

D = Decimal
PER_MILLION = 1_000_000

# The demo plans of ``demo.billing``, restated in the simulator's TOML.
CURRENT_PRICES = """
currency = "USD"

[prices."smollm2-135m-instruct"]
input_tokens = { type = "flat", amount = "0.15", per_units = 1_000_000 }
output_tokens = { type = "flat", amount = "0.60", per_units = 1_000_000 }

[prices."all-minilm-l6-v2"]
embedding_tokens = { type = "flat", amount = "0.02", per_units = 1_000_000 }

[prices."*"]
input_tokens = { type = "flat", amount = "0.50", per_units = 1_000_000 }
output_tokens = { type = "graduated", per_units = 1_000_000, tiers = [
    { up_to = 10_000_000, price = "1.50" },
    { price = "1.00" },
] }
embedding_tokens = { type = "flat", amount = "0.10", per_units = 1_000_000 }
requests = { type = "flat", amount = "0" }
compute_seconds = { type = "flat", amount = "0" }

[plans.starter]
kind = "subscription"
fee = "20.00"
included = { input_tokens = 1_000_000, output_tokens = 1_000_000 }

[plans.enterprise]
kind = "enterprise"
fee = "2000.00"
"""


def candidate(text: str) -> CandidatePrices:
    return parse_candidate(tomllib.loads(text))


def run(database: Database, prices: CandidatePrices, elasticity: str | None = None) -> Simulation:
    with database.session() as session:
        return simulate(
            session, prices, OCTOBER, elasticity=None if elasticity is None else D(elasticity)
        )


def charges_in_october(database: Database, org: str) -> Decimal:
    return sum(
        (
            money(r["charge"])
            for r in raw_rows(database)
            if r["organization_id"] == org and OCTOBER.contains(r["created_at"])
        ),
        D(0),
    )


@pytest.mark.parametrize("text", ["", CURRENT_PRICES], ids=["nothing-changed", "restated"])
def test_current_prices_reproduce_actual_revenue_exactly(world: World, text: str) -> None:
    result = run(world.database, candidate(text))
    by_org = {o.organization_id: o for o in result.organizations}
    assert set(by_org) == {world.orgs[n] for n in ("acme", "bolt", "cask", "dune", "echo")}
    for org, simulated in by_org.items():
        independent = charges_in_october(world.database, org) + world.fees.get(org, D(0))
        assert simulated.actual_revenue == independent, simulated.name
        assert simulated.simulated_revenue == independent, simulated.name
        assert simulated.change == 0
    assert result.simulated_revenue == result.actual_revenue > 0


def test_a_price_change_moves_revenue_by_exactly_its_effect(world: World) -> None:
    doubled = CURRENT_PRICES.replace(
        'input_tokens = { type = "flat", amount = "0.15"',
        'input_tokens = { type = "flat", amount = "0.30"',
    )
    result = run(world.database, candidate(doubled))
    cask = next(o for o in result.organizations if o.name == "cask")  # pay as you go
    chat_input = sum(
        r["input_tokens"]
        for r in raw_rows(world.database)
        if r["organization_id"] == world.orgs["cask"]
        and r["model"] == CHAT
        and r["status_code"] == 200
        and OCTOBER.contains(r["created_at"])
    )
    assert cask.change == D("0.15") * chat_input / PER_MILLION
    dune = next(o for o in result.organizations if o.name == "dune")
    assert dune.change == 0  # a licence: usage is not charged
    # A file naming only the changed price: the rest of each plan's book stays.
    only = (
        '[prices."smollm2-135m-instruct"]\n'
        'input_tokens = { type = "flat", amount = "0.30", per_units = 1_000_000 }'
    )
    short = run(world.database, candidate(only))
    assert [(o.name, o.simulated_revenue) for o in short.organizations] == [
        (o.name, o.simulated_revenue) for o in result.organizations
    ]


def test_elasticity_moves_demand_against_the_price(world: World) -> None:
    dearer = CURRENT_PRICES.replace('"0.15"', '"0.45"').replace('"0.60"', '"1.80"')
    cheaper = CURRENT_PRICES.replace('"0.15"', '"0.05"').replace('"0.60"', '"0.20"')
    base_up, elastic_up = (
        run(world.database, candidate(dearer)),
        run(world.database, candidate(dearer), "-0.5"),
    )
    base_down, elastic_down = (
        run(world.database, candidate(cheaper)),
        run(world.database, candidate(cheaper), "-0.5"),
    )
    cask = world.orgs["cask"]

    def org(result: Simulation) -> OrgSimulation:
        return next(o for o in result.organizations if o.organization_id == cask)

    up, up_e = org(base_up), org(elastic_up)
    down, down_e = org(base_down), org(elastic_down)
    assert up.simulated_revenue > up.actual_revenue
    assert up_e.simulated_revenue < up.simulated_revenue
    assert up_e.simulated_cost < up.actual_cost
    assert down_e.simulated_revenue > down.simulated_revenue
    assert down_e.simulated_cost > down.actual_cost
    assert elastic_up.elasticity == D("-0.5")


def test_assigning_an_unbilled_customer_prices_its_observed_usage(world: World) -> None:
    result = run(world.database, candidate(CURRENT_PRICES + '\n[assign]\nfern = "payg"\n'))
    fern = next(o for o in result.organizations if o.name == "fern")
    expected = D(0)
    for r in raw_rows(world.database):
        if r["organization_id"] != world.orgs["fern"] or not OCTOBER.contains(r["created_at"]):
            continue
        if r["status_code"] != 200:
            continue
        if r["model"] == CHAT:
            expected += (
                D("0.15") * r["input_tokens"] + D("0.60") * r["output_tokens"]
            ) / PER_MILLION
        elif r["model"] == EMBED:
            expected += D("0.02") * r["input_tokens"] / PER_MILLION
        else:
            assert r["model"] == REMOTE
            expected += (
                D("0.50") * r["input_tokens"] + D("1.50") * r["output_tokens"]
            ) / PER_MILLION
    assert (fern.actual_revenue, fern.simulated_revenue) == (D(0), expected)
    assert fern.current_plan == "" and fern.candidate_plan == "payg"


def test_plan_kinds_are_compared_on_the_same_usage(world: World) -> None:
    pro = (
        '[plans.pro]\nkind = "subscription"\nfee = "99.00"\nincluded = { input_tokens = 5_000_000 }'
    )
    result = run(world.database, candidate(f"{CURRENT_PRICES}\n{pro}\n"))
    options = {o.plan: o for o in result.plan_options}
    assert set(options) == {"free", "starter", "payg", "enterprise", "pro"}
    everyone = len(world.orgs)
    assert options["enterprise"].customers == everyone
    assert options["enterprise"].revenue == D("2000.00") * everyone
    assert options["starter"].revenue >= D("20.00") * everyone
    assert sum(o.cheapest_for for o in options.values()) == everyone
    assert options["free"].revenue == 0 and options["free"].customers < everyone


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('[prices."*"]\ninput_tokens = { type = "flat", amount = 0.15 }', InvalidPriceBook),
        ('[plans.x]\nkind = "gold"', InvalidPlan),
        ('[plans.x]\nkind = "subscription"', InvalidPlan),
        (  # the last tier must be open-ended
            '[prices."*"]\nrequests = { type = "volume", tiers = [{ up_to = 10, price = "1" }] }',
            InvalidPriceBook,
        ),
    ],
)
def test_malformed_candidates_are_refused_with_the_field_named(
    text: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        candidate(text)
