"""The payment collection a process's settings describe, or None when payments are off."""

from __future__ import annotations

import os

from modelmint.config import Settings
from modelmint.payments.collection import Payments
from modelmint.payments.dunning import DunningSchedule
from modelmint.payments.stripe_provider import StripeProvider
from modelmint.storage.db import Database

__all__ = ["configured_payments"]


def configured_payments(settings: Settings, database: Database) -> Payments | None:
    """Payments through Stripe when its secret key is in the environment, else None."""
    secret = os.environ.get(settings.stripe_secret_key_env)
    if not secret:
        return None
    provider = StripeProvider(
        secret,
        webhook_secret=os.environ.get(settings.stripe_webhook_secret_env) or None,
        publishable_key=os.environ.get(settings.stripe_publishable_key_env) or None,
        api_base=settings.stripe_api_base,
        tolerance_s=settings.stripe_webhook_tolerance_s,
    )
    schedule = DunningSchedule.parse(settings.payment_retry_days, settings.payment_grace_days)
    return Payments(database, provider, schedule=schedule)
