"""Price books: most specific price wins (model, then group, then the * default)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from modelmint.billing import FlatRate, InvalidPriceBook, Metric, PriceBook, PriceNotFound

D = Decimal
SPECIAL = FlatRate(D("0.01"))
GROUP = FlatRate(D("0.02"))
DEFAULT = FlatRate(D("0.03"))


def book() -> PriceBook:
    return PriceBook(
        "usd",
        {
            ("smollm2-135m-instruct", Metric.OUTPUT_TOKENS): SPECIAL,
            ("small-chat", Metric.OUTPUT_TOKENS): GROUP,
            ("small-chat", Metric.INPUT_TOKENS): GROUP,
            ("*", Metric.OUTPUT_TOKENS): DEFAULT,
        },
        model_groups={"smollm2-135m-instruct": "small-chat", "tinyllama": "small-chat"},
    )


def test_the_model_price_beats_the_group_and_the_default() -> None:
    match = book().lookup("smollm2-135m-instruct", Metric.OUTPUT_TOKENS)
    assert (match.target, match.charge) == ("smollm2-135m-instruct", SPECIAL)


def test_a_model_without_its_own_price_falls_back_to_its_group() -> None:
    match = book().lookup("tinyllama", Metric.OUTPUT_TOKENS)
    assert (match.target, match.charge) == ("small-chat", GROUP)
    assert book().lookup("smollm2-135m-instruct", Metric.INPUT_TOKENS).target == "small-chat"


def test_an_ungrouped_model_falls_back_to_the_default() -> None:
    match = book().lookup("big-model", Metric.OUTPUT_TOKENS)
    assert (match.target, match.charge) == ("*", DEFAULT)
    assert book().price("big-model", Metric.OUTPUT_TOKENS, 100) == D("3.00")


def test_a_missing_price_is_an_error_not_a_free_ride() -> None:
    with pytest.raises(PriceNotFound, match="requests of model 'big-model'") as caught:
        book().lookup("big-model", Metric.REQUESTS)
    assert caught.value.status_code == 404
    assert book().find("big-model", Metric.REQUESTS) is None


def test_the_currency_is_normalised() -> None:
    assert book().currency == "USD"


def test_a_name_that_is_both_model_and_group_is_ambiguous() -> None:
    with pytest.raises(InvalidPriceBook, match="both models and groups"):
        PriceBook("USD", {}, model_groups={"a": "b", "b": "c"})


def test_the_default_target_cannot_be_a_model_or_group() -> None:
    with pytest.raises(InvalidPriceBook, match="default target"):
        PriceBook("USD", {}, model_groups={"*": "small-chat"})


def test_price_keys_must_use_metrics() -> None:
    with pytest.raises(InvalidPriceBook, match="is not a Metric"):
        PriceBook("USD", {("*", "tokens"): DEFAULT})  # type: ignore[dict-item]


def test_a_price_book_cannot_be_changed_after_it_is_built() -> None:
    prices = book().prices
    with pytest.raises(TypeError):
        prices[("x", Metric.REQUESTS)] = DEFAULT  # type: ignore[index]
