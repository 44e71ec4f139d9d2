"""Price books: which charge model prices each (model, metric), in one currency.

A price is keyed by a *target* and a metric. The target is a model's public name,
the name of a model group ("small-chat" for every small chat model), or ``*`` for
the default. A lookup tries the most specific target first:

    (model, metric) -> (model's group, metric) -> ("*", metric) -> PriceNotFound

so a new model in a priced group is billed from day one, and a model that needs a
special price gets one without touching the group. A missing price is an error,
never a silent zero: serving a model nobody priced would give it away.

Group membership lives in the book (``model_groups``) because it is a pricing
decision: which models are sold together at one price.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType

from modelmint.billing.charges import ChargeModel
from modelmint.billing.errors import InvalidPriceBook, PriceNotFound
from modelmint.billing.exact import Quantity
from modelmint.billing.metrics import Metric
from modelmint.billing.money import Money

__all__ = ["DEFAULT_TARGET", "PriceBook", "PriceMatch"]

DEFAULT_TARGET = "*"


@dataclass(frozen=True, slots=True)
class PriceMatch:
    """The price a lookup found, and the target (model, group or ``*``) it was found under."""

    target: str
    metric: Metric
    charge: ChargeModel


@dataclass(frozen=True)
class PriceBook:
    """Prices in ``currency`` keyed by ``(target, metric)``; immutable once built."""

    currency: str
    prices: Mapping[tuple[str, Metric], ChargeModel] = field(hash=False)
    model_groups: Mapping[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "currency", Money.zero(self.currency).currency)
        groups = dict(self.model_groups)
        group_names = set(groups.values())
        for model, group in groups.items():
            if not model or not group:
                raise InvalidPriceBook("model_groups: model and group names must not be empty")
            if DEFAULT_TARGET in (model, group):
                raise InvalidPriceBook(f"model_groups: {DEFAULT_TARGET!r} is the default target")
        clash = group_names & set(groups)
        if clash:
            # A name that is both a model and a group would make a lookup ambiguous.
            raise InvalidPriceBook(f"model_groups: {sorted(clash)} are both models and groups")
        prices: dict[tuple[str, Metric], ChargeModel] = {}
        for (target, metric), charge in self.prices.items():
            if not isinstance(target, str) or not target:
                raise InvalidPriceBook(f"price target must be a non-empty name, got {target!r}")
            if not isinstance(metric, Metric):
                raise InvalidPriceBook(f"price for {target!r}: {metric!r} is not a Metric")
            if not callable(getattr(charge, "price", None)):
                raise InvalidPriceBook(f"price for ({target}, {metric}) is not a charge model")
            prices[(target, metric)] = charge
        object.__setattr__(self, "prices", MappingProxyType(prices))
        object.__setattr__(self, "model_groups", MappingProxyType(groups))

    def find(self, model: str, metric: Metric) -> PriceMatch | None:
        """The most specific price for ``model`` and ``metric``, or None."""
        group = self.model_groups.get(model)
        for target in (model, group, DEFAULT_TARGET):
            if target is None:
                continue
            charge = self.prices.get((target, metric))
            if charge is not None:
                return PriceMatch(target, metric, charge)
        return None

    def lookup(self, model: str, metric: Metric) -> PriceMatch:
        """Like ``find`` but a missing price raises ``PriceNotFound``."""
        match = self.find(model, metric)
        if match is None:
            raise PriceNotFound(
                f"no price for {metric.value} of model {model!r} "
                f"(group {self.model_groups.get(model)!r}) and no {DEFAULT_TARGET!r} default",
                param="model",
            )
        return match

    def price(self, model: str, metric: Metric, quantity: Quantity) -> Decimal:
        """Exact, unrounded amount for ``quantity`` units of ``metric`` on ``model``."""
        return self.lookup(model, metric).charge.price(quantity)
