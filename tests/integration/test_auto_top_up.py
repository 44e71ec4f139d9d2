"""Auto top-up under concurrent paid traffic through the gateway, charged through
localstripe, with three checkers racing as three gateway processes would."""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

from sqlalchemy import select

from modelmint import billing_admin
from modelmint.billing import PrepaidPlan
from modelmint.payments.collection import AUTO_TOP_UP, Payments
from modelmint.payments.stripe_provider import StripeProvider
from modelmint.storage.db import Database
from modelmint.storage.tables import Payment, UsageRecord
from tests.integration.test_gateway_billing import PRICES, ask, subscribe
from tests.integration.test_gateway_remote import (  # noqa: F401 - fixtures
    Gateway,
    gateway,
    upstream,
)
from tests.support.localstripe import GOOD_CARD, SECRET_KEY, WEBHOOK_SECRET, LocalStripe
from tests.support.mock_upstream import MockUpstream


def desk(database: Database, localstripe: LocalStripe) -> Payments:
    provider = StripeProvider(
        SECRET_KEY, webhook_secret=WEBHOOK_SECRET, api_base=localstripe.api_base
    )
    return Payments(database, provider)


async def test_auto_top_up_fires_once_when_traffic_crosses_the_threshold(
    gateway: Gateway,  # noqa: F811
    upstream: MockUpstream,  # noqa: F811
    localstripe: LocalStripe,
) -> None:
    await gateway.serve("mock", upstream)
    subscribe(gateway, PrepaidPlan("payg", 1, PRICES), credit="1.00")  # about 7 answers
    payments = desk(gateway.database, localstripe)
    payments.save_method("acme", payment_method=localstripe.card(GOOD_CARD))
    payments.set_auto_top_up("acme", below="0.60", amount="5.00", currency="USD")
    url = gateway.database.url.render_as_string(hide_password=False)
    checkers = [desk(Database(url), localstripe) for _ in range(3)]
    done = threading.Event()
    fired: list[str] = []

    def check(payments: Payments) -> None:
        while not done.is_set():
            fired.extend(p["id"] for p in payments.run_auto_top_ups())
            done.wait(0.01)

    threads = [threading.Thread(target=check, args=(c,)) for c in checkers]
    for thread in threads:
        thread.start()
    served = refused = 0
    try:
        for _ in range(8):  # 8 waves of 4 concurrent requests: 32 asked, at most 4.48
            outcomes = await asyncio.gather(
                *(ask(gateway) for _ in range(4)), return_exceptions=True
            )
            served += sum(1 for o in outcomes if o is None)
            refused += sum(1 for o in outcomes if o is not None)
    finally:
        done.set()
        for thread in threads:
            thread.join()
        for checker in checkers:
            checker._db.dispose()
    rows = await gateway.usage_rows()

    assert served >= 20 and served + refused == 32
    assert len(fired) == 1  # one top-up, whichever checker won
    with gateway.database.session() as session:
        [top_up] = session.scalars(select(Payment).where(Payment.kind == AUTO_TOP_UP)).all()
        spent = sum(
            (r.charge or Decimal(0) for r in session.scalars(select(UsageRecord))), Decimal(0)
        )
        balance = Decimal(billing_admin.wallet_balance(session, "acme", "USD")["balance"])
    assert (top_up.status, top_up.amount_minor) == ("succeeded", 500)
    assert len([r for r in rows if r.status_code == 200]) == served  # refusals: recorded 402s
    assert balance == Decimal("6.00") - spent
    assert balance >= Decimal("0.60")  # above the threshold again: nothing more fires
    assert payments.run_auto_top_ups() == []
    account = payments.account("acme")
    assert account["auto_top_up"] == {"below": "0.60", "amount": "5.00", "currency": "USD"}
