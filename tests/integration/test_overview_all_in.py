"""The overview's cost with idle hours: an hourly deployment costs its hours, busy or not."""

from __future__ import annotations

from decimal import Decimal

from modelmint.billing.periods import Period
from modelmint.clock import utcnow
from modelmint.dashboard.pages.overview import all_in_cost
from modelmint.registry.bundled import register_bundled_models
from modelmint.storage.db import Database


def test_idle_hours_of_hourly_deployments_are_counted_whole(database: Database) -> None:
    window = Period.containing(utcnow())
    with database.session() as session:
        assert all_in_cost(session, window, "USD", Decimal("1.5")) is None  # nothing hourly
        register_bundled_models(session, Decimal("0.10"))
    with database.session() as session:
        # Two bundled deployments, created this hour and idle: one started hour each,
        # replacing none of the measured cost (they served nothing).
        assert all_in_cost(session, window, "USD", Decimal("1.5")) == Decimal("1.70")
