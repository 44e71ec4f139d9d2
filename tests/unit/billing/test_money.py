"""Money: exact amounts, one currency at a time, no floats, one rounding rule."""

from __future__ import annotations

from decimal import Decimal, localcontext
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelmint.billing import CurrencyMismatch, InvalidMoney, Money, minor_units


def usd(text: str) -> Money:
    return Money.parse(text, "USD")


def test_parse_keeps_the_exact_decimal() -> None:
    assert usd("12.50").amount == Decimal("12.50")
    assert usd(" 12.50 ") == usd("12.5")
    assert Money.parse("-3", "eur") == Money(Decimal(-3), "EUR")


@pytest.mark.parametrize("text", ["abc", "", "12,50", "1.2.3", "$5"])
def test_parse_refuses_non_numeric_text(text: str) -> None:
    with pytest.raises(InvalidMoney, match="not a decimal number"):
        usd(text)


@pytest.mark.parametrize("text", ["NaN", "sNaN", "Infinity", "-inf"])
def test_parse_refuses_nan_and_infinity(text: str) -> None:
    with pytest.raises(InvalidMoney, match="not a finite number"):
        usd(text)


def test_parse_refuses_absurd_magnitudes() -> None:
    with pytest.raises(InvalidMoney, match="decimal places"):
        usd("1e-41")
    with pytest.raises(InvalidMoney, match="integer digits"):
        usd("1e18")


def test_float_is_refused_everywhere() -> None:
    with pytest.raises(TypeError, match="float"):
        Money(0.1, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        Money.of(0.1, "USD")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="float"):
        usd("1") * 0.5
    with pytest.raises(TypeError):
        Money.parse(1.5, "USD")  # type: ignore[arg-type]


def test_a_decimal_nan_is_refused() -> None:
    with pytest.raises(InvalidMoney, match="finite"):
        Money(Decimal("NaN"), "USD")


@pytest.mark.parametrize("code", ["US", "USDT", "U$D", "12A", ""])
def test_currency_must_be_a_three_letter_code(code: str) -> None:
    with pytest.raises(InvalidMoney, match="ISO 4217"):
        Money(Decimal(1), code)


def test_arithmetic_across_currencies_raises() -> None:
    with pytest.raises(CurrencyMismatch, match="USD and EUR"):
        usd("1") + Money.of(1, "EUR")
    with pytest.raises(CurrencyMismatch):
        usd("1") - Money.of(1, "EUR")
    with pytest.raises(CurrencyMismatch):
        assert usd("1") < Money.of(2, "EUR")
    assert usd("1") != Money.of(1, "EUR")  # equality is false, not an error


def test_arithmetic_is_exact_whatever_the_ambient_context() -> None:
    per_token = Money.of("0.15", "USD") * Decimal("0.000001")
    assert per_token.amount == Decimal("0.00000015")
    with localcontext() as ctx:
        ctx.prec = 3  # a careless caller must not make billing round
        assert (per_token * 37).amount == Decimal("0.00000555")
        assert (usd("1.23456") + usd("0.00001")).amount == Decimal("1.23457")


def test_multiplication_ordering_and_helpers() -> None:
    assert 3 * usd("1.10") == usd("3.30")
    assert usd("2") > usd("1.99")
    assert usd("2") >= usd("2.00")
    assert -usd("2") == usd("-2")
    assert abs(usd("-2")) == usd("2")
    assert Money.total([usd("1"), usd("2.5")], "USD") == usd("3.5")
    assert Money.zero("JPY").is_zero
    assert str(Money.of("0.00000015", "USD")) == "0.00000015 USD"


def test_minor_units_per_currency() -> None:
    assert minor_units("USD") == 2
    assert minor_units("EUR") == 2
    assert minor_units("JPY") == 0
    assert minor_units("BHD") == 3
    assert minor_units("XTS") == 2  # unknown codes default to hundredths


@pytest.mark.parametrize(
    ("amount", "currency", "rounded"),
    [
        ("0.125", "USD", "0.12"),  # tie to even: down
        ("0.135", "USD", "0.14"),  # tie to even: up
        ("-0.125", "USD", "-0.12"),
        ("0.12500001", "USD", "0.13"),  # not a tie
        ("2.5", "JPY", "2"),
        ("3.5", "JPY", "4"),
        ("1.0005", "BHD", "1.000"),
    ],
)
def test_quantize_rounds_half_even_to_minor_units(amount: str, currency: str, rounded: str) -> None:
    result = Money.parse(amount, currency).quantize()
    assert result.amount == Decimal(rounded)
    assert result.amount.as_tuple().exponent == Decimal(rounded).as_tuple().exponent


def test_rounded_fractions_use_the_same_rule() -> None:
    assert Money.rounded(Fraction(1, 3), "USD") == usd("0.33")
    assert Money.rounded(Fraction(1, 200), "USD") == usd("0.00")  # 0.005 ties to even
    assert Money.rounded(Fraction(3, 200), "USD") == usd("0.02")  # 0.015 ties to even
    assert Money.rounded(Fraction(5, 2), "JPY") == Money.of(2, "JPY")


def test_minor_unit_conversion_never_rounds_silently() -> None:
    assert usd("12.50").to_minor_units() == 1250
    assert Money.from_minor_units(1250, "USD") == usd("12.50")
    assert Money.from_minor_units(1250, "JPY") == Money.of(1250, "JPY")
    with pytest.raises(InvalidMoney, match="quantize"):
        usd("0.005").to_minor_units()


@settings(max_examples=200)
@given(
    st.decimals(
        min_value=Decimal("-1000000"),
        max_value=Decimal("1000000"),
        places=8,
        allow_nan=False,
        allow_infinity=False,
    )
)
def test_decimal_and_fraction_rounding_agree(amount: Decimal) -> None:
    assert Money(amount, "USD").quantize() == Money.rounded(Fraction(amount), "USD")
    assert abs(Money(amount, "USD").quantize().amount - amount) <= Decimal("0.005")
