"""Charge models: exact formulas, checked against brute-force references."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint.billing import (
    FlatRate,
    GraduatedTiers,
    InvalidPriceBook,
    InvalidQuantity,
    PackagePrice,
    Tier,
    VolumeTiers,
    tiers_up_to,
)

D = Decimal

THREE_TIERS = tiers_up_to((1000, D("0.10")), (5000, D("0.08")), (None, D("0.05")))


# -- flat rate ------------------------------------------------------------------------


def test_a_price_per_million_tokens_stays_exact_per_token() -> None:
    rate = FlatRate(D("0.15"), per_units=1_000_000)
    assert rate.unit_price == D("0.00000015")
    assert rate.price(1) == D("0.00000015")
    assert rate.price(37) == D("0.00000555")
    assert rate.price(1_000_000) == D("0.15")
    assert rate.price(0) == 0


def test_per_units_must_give_a_terminating_decimal() -> None:
    with pytest.raises(InvalidPriceBook, match="per_units=3"):
        FlatRate(D("1"), per_units=3)
    with pytest.raises(InvalidPriceBook, match="positive"):
        FlatRate(D("1"), per_units=0)
    assert FlatRate(D("1"), per_units=1024).unit_price == D("0.0009765625")


def test_negative_price_is_refused() -> None:
    with pytest.raises(InvalidPriceBook, match="must not be negative"):
        FlatRate(D("-0.01"))
    with pytest.raises(InvalidPriceBook, match="tier price must not be negative"):
        Tier(0, None, D("-1"))
    with pytest.raises(InvalidPriceBook, match="flat fee must not be negative"):
        Tier(0, None, D("1"), flat_fee=D("-5"))
    with pytest.raises(InvalidPriceBook, match="package amount must not be negative"):
        PackagePrice(D("-5"), 10)


def test_float_prices_and_quantities_are_type_errors() -> None:
    with pytest.raises(TypeError, match="float"):
        FlatRate(0.15)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        FlatRate(D("0.15")).price(1.5)  # type: ignore[arg-type]


def test_negative_quantity_is_refused() -> None:
    with pytest.raises(InvalidQuantity, match="must not be negative"):
        FlatRate(D("1")).price(-1)
    with pytest.raises(InvalidQuantity):
        GraduatedTiers(THREE_TIERS).price(D("-0.5"))


# -- tier validation ------------------------------------------------------------------


def test_overlapping_tiers_are_refused() -> None:
    tiers = (Tier(0, 100, D("1")), Tier(50, None, D("0.5")))
    with pytest.raises(InvalidPriceBook, match=r"tier 2 \(50, ∞\] overlaps tier 1 \(0, 100\]"):
        GraduatedTiers(tiers)


def test_a_gap_between_tiers_is_refused() -> None:
    tiers = (Tier(0, 100, D("1")), Tier(150, None, D("0.5")))
    with pytest.raises(InvalidPriceBook, match=r"gap between tier 1 \(0, 100\] and tier 2"):
        VolumeTiers(tiers)


def test_unsorted_tiers_are_refused() -> None:
    tiers = (Tier(0, 100, D("1")), Tier(200, None, D("0.5")), Tier(100, 200, D("0.7")))
    with pytest.raises(InvalidPriceBook, match="not sorted"):
        GraduatedTiers(tiers)


@pytest.mark.parametrize(
    ("tiers", "problem"),
    [
        ((), "at least one tier"),
        ((Tier(10, None, D("1")),), "must start at 0"),
        ((Tier(0, 100, D("1")),), "must be open-ended"),
        ((Tier(0, None, D("1")), Tier(100, None, D("1"))), "open-ended but is not the last"),
        ((Tier(0, 0, D("1")), Tier(0, None, D("1"))), "empty or inverted"),
    ],
)
def test_malformed_tiers_name_the_problem(tiers: tuple[Tier, ...], problem: str) -> None:
    with pytest.raises(InvalidPriceBook, match=problem):
        GraduatedTiers(tiers)


# -- examples ---------------------------------------------------------------------------


def test_graduated_prices_each_tier_at_its_own_rate() -> None:
    graduated = GraduatedTiers(THREE_TIERS)
    assert graduated.price(0) == 0
    assert graduated.price(1000) == D("100.00")
    assert graduated.price(1500) == D("140.00")
    assert graduated.price(6000) == D("470.00")


def test_a_graduated_flat_fee_is_due_once_a_unit_reaches_the_tier() -> None:
    tiers = tiers_up_to((1000, D("0.10")), (None, D("0.08"), D("5")))
    graduated = GraduatedTiers(tiers)
    assert graduated.price(1000) == D("100.00")
    assert graduated.price(1001) == D("105.08")
    assert graduated.price(2000) == D("185.00")


def test_volume_prices_all_units_at_the_tier_the_total_reaches() -> None:
    volume = VolumeTiers(THREE_TIERS)
    assert volume.price(0) == 0
    assert volume.price(1000) == D("100.00")
    assert volume.price(1001) == D("80.08")
    assert volume.price(6000) == D("300.00")


def test_volume_monotonicity_is_detected_at_tier_bounds() -> None:
    cheaper = VolumeTiers(tiers_up_to((100, D("1")), (None, D("0.5"))))
    assert not cheaper.is_monotone  # 100 units cost 100, 101 units cost 50.50
    with_fee = VolumeTiers(tiers_up_to((100, D("1")), (None, D("0.5"), D("50"))))
    assert with_fee.is_monotone
    assert GraduatedTiers(THREE_TIERS).is_monotone


def test_packages_round_partial_packages_up() -> None:
    package = PackagePrice(D("5.00"), 1000)
    assert package.price(0) == 0
    assert package.price(1) == D("5.00")
    assert package.price(1000) == D("5.00")
    assert package.price(1001) == D("10.00")
    assert PackagePrice(D("1"), 2).price(D("2.5")) == D("2")
    with pytest.raises(InvalidPriceBook, match="package size"):
        PackagePrice(D("1"), 0)


def test_tiers_priced_per_million_stay_exact() -> None:
    tiers = tiers_up_to((1_000_000, D("0.15")), (None, D("0.10")), per_units=1_000_000)
    graduated = GraduatedTiers(tiers)
    assert graduated.price(1_000_001) == D("0.1500001")
    assert graduated.price(3) == D("0.00000045")


def test_fractional_quantities_price_exactly() -> None:
    assert GraduatedTiers(THREE_TIERS).price(D("1000.5")) == D("100.04")
    assert FlatRate(D("0.0001")).price(D("12.345")) == D("0.0012345")


# -- properties against brute force ---------------------------------------------------

prices = st.decimals(min_value=0, max_value=D("10"), places=6, allow_nan=False)


@st.composite
def tier_tables(draw: st.DrawFn) -> tuple[Tier, ...]:
    widths = draw(st.lists(st.integers(1, 60), min_size=0, max_size=4))
    bounds: list[int | None] = []
    total = 0
    for width in widths:
        total += width
        bounds.append(total)
    bounds.append(None)
    entries = [(bound, draw(prices), draw(st.sampled_from([D(0), D("2.5")]))) for bound in bounds]
    return tiers_up_to(*entries)


def _tier_of_unit(tiers: tuple[Tier, ...], unit: int) -> Tier:
    """The tier that holds the unit numbered ``unit`` (1-based), read off the table."""
    matches = [t for t in tiers if t.start < unit and (t.up_to is None or unit <= t.up_to)]
    assert len(matches) == 1
    return matches[0]


def graduated_reference(tiers: tuple[Tier, ...], quantity: int) -> Decimal:
    """Price each unit one by one; pay each touched tier's flat fee once."""
    total = D(0)
    touched: set[int] = set()
    for unit in range(1, quantity + 1):
        tier = _tier_of_unit(tiers, unit)
        total += tier.price
        if id(tier) not in touched:
            touched.add(id(tier))
            total += tier.flat_fee
    return total


def volume_reference(tiers: tuple[Tier, ...], quantity: int) -> Decimal:
    if quantity == 0:
        return D(0)
    tier = _tier_of_unit(tiers, quantity)
    return sum((tier.price for _ in range(quantity)), D(0)) + tier.flat_fee


@settings(max_examples=150, deadline=None)
@given(tier_tables(), st.integers(0, 300))
def test_graduated_matches_pricing_unit_by_unit(tiers: tuple[Tier, ...], quantity: int) -> None:
    assert GraduatedTiers(tiers).price(quantity) == graduated_reference(tiers, quantity)


@settings(max_examples=150, deadline=None)
@given(tier_tables(), st.integers(0, 300))
def test_volume_matches_its_definition(tiers: tuple[Tier, ...], quantity: int) -> None:
    assert VolumeTiers(tiers).price(quantity) == volume_reference(tiers, quantity)


@settings(max_examples=150, deadline=None)
@given(prices, st.integers(1, 50), st.integers(0, 500))
def test_package_matches_counting_packages(amount: Decimal, size: int, quantity: int) -> None:
    packages, covered = 0, 0
    while covered < quantity:
        packages, covered = packages + 1, covered + size
    assert PackagePrice(amount, size).price(quantity) == amount * packages


@settings(max_examples=150, deadline=None)
@given(prices, st.sampled_from([1, 10, 1000, 1_000_000, 1024]), st.integers(0, 300))
def test_flat_rate_matches_adding_the_unit_price(amount: Decimal, per: int, quantity: int) -> None:
    rate = FlatRate(amount, per)
    assert rate.price(quantity) == sum((rate.unit_price for _ in range(quantity)), D(0))


@settings(max_examples=100, deadline=None)
@given(tier_tables(), st.lists(st.integers(0, 80), max_size=12))
def test_request_charges_telescope_to_the_period_price(
    tiers: tuple[Tier, ...], requests: list[int]
) -> None:
    for model in (GraduatedTiers(tiers), VolumeTiers(tiers)):
        running, charged = 0, D(0)
        for size in requests:
            charged += model.price(running + size) - model.price(running)
            running += size
        assert charged == model.price(running)


@st.composite
def charge_models(draw: st.DrawFn) -> object:
    kind = draw(st.sampled_from(["flat", "graduated", "volume", "package"]))
    if kind == "flat":
        return FlatRate(draw(prices), draw(st.sampled_from([1, 10, 1000])))
    if kind == "package":
        return PackagePrice(draw(prices), draw(st.integers(1, 50)))
    tiers = draw(tier_tables())
    return GraduatedTiers(tiers) if kind == "graduated" else VolumeTiers(tiers)


@settings(max_examples=300, deadline=None)
@given(charge_models(), st.integers(0, 400))
def test_max_increase_bounds_what_a_request_can_cost_at_any_point_of_the_period(
    model: FlatRate | GraduatedTiers | VolumeTiers | PackagePrice, quantity: int
) -> None:
    # Brute force over every starting point of the running total that matters (tier
    # bounds are below 300): what admission reserves is never less than the charge.
    bound = model.max_increase(quantity)
    worst = max(model.price(before + quantity) - model.price(before) for before in range(0, 320))
    assert bound >= worst
    if isinstance(model, FlatRate | PackagePrice):
        assert bound == model.price(quantity)  # and not wastefully large where it is exact
