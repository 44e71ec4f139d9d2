"""The price of billing in the metering writer alone: one batch, unbilled against paid.

    make bench-writer            (or: .venv/bin/python -m bench.writer)

The gateway bench measures billing through HTTP, where a paid request's extra work is
a few hundred microseconds inside a few milliseconds that wander from one second to
the next. This one times only the part of a request that waits for the database: the
metering writer storing a batch (``UsageStore.write``, with the real ``Charger``),
in process, on one database that both kinds of batch share. Each round writes an
unbilled batch (no plan: the usage rows and the rollups) and then a paid one (the
bench's prepaid plan, admitted against a real wallet lease: the same rows, charged,
with the usage totals and the lease added to in the same transaction), so that both
sides of every pair meet the same moment of the machine. Batches of 1 are what a lone
request (concurrency 1) waits for; batches of 32 what a busy gateway commits.

It prints, per database and batch size, the median time of each kind of batch and
``writer_<db>_batch<n>_paid_extra_us``: the median over the rounds of the paid batch
minus the unbilled one beside it, and checks that every paid batch took the quick
way (``one_trip``) and that the lease was charged exactly what the batches cost.

    .venv/bin/python -m bench.writer --rounds 500 --only postgres
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path

from prometheus_client import REGISTRY
from sqlalchemy import text

from bench.common import BENCH_HOME, ROOT, say
from bench.gateway import postgres_database, provision
from modelmint.charging.lease_store import DatabaseLeaseStore
from modelmint.charging.leases import Pool
from modelmint.charging.settlement import Charger
from modelmint.clock import utcnow
from modelmint.ids import new_id
from modelmint.metering.events import UsageEvent
from modelmint.metering.store import UsageStore
from modelmint.storage.db import Database

SIZES = (1, 32)


@dataclass(frozen=True)
class Account:
    """Who the bench's events are from, and the lease its paid events were admitted on."""

    organization_id: str
    api_key_id: str
    deployment_id: str
    model_version_id: str
    lease_id: str


def event(account: Account, paid: bool) -> UsageEvent:
    """One chat completion as the gateway records it (13 tokens in, 9 out)."""
    unbilled = UsageEvent(
        id=new_id("req"),
        created_at=utcnow(),
        organization_id=account.organization_id,
        api_key_id=account.api_key_id,
        model="mock",
        endpoint="chat.completions",
        status_code=200,
        input_tokens=13,
        output_tokens=9,
        latency_ms=1,
        deployment_id=account.deployment_id,
        model_version_id=account.model_version_id,
        finish_reason="stop",
    )
    if not paid:
        return unbilled
    return replace(
        unbilled,
        plan_code="bench-payg",
        plan_version=1,
        currency="USD",
        wallet_lease=account.lease_id,
        lease_worst=Decimal("0.001"),
    )


@contextlib.contextmanager
def provisioned(name: str, workdir: Path, database_url: str | None) -> Iterator[Database]:
    """A ModelMint database with the gateway bench's prepaid organisation in it."""
    home = workdir / name
    env = {"MODELMINT_HOME": str(home), "MODELMINT_LOAD_BUNDLED_MODELS": "false"}
    if database_url:
        env["MODELMINT_DATABASE_URL"] = database_url
    # The mock upstream is never called: only its model's deployment is needed.
    provision(env, "http://127.0.0.1:9/v1", workdir, prepaid=True)
    database = Database(database_url or f"sqlite:///{home / 'modelmint.db'}")
    try:
        yield database
    finally:
        database.engine.dispose()


def account(database: Database, leases: DatabaseLeaseStore) -> Account:
    with database.engine.connect() as connection:
        organization_id, api_key_id = connection.execute(
            text("SELECT organization_id, id FROM api_keys")
        ).one()
        deployment_id, version_id = connection.execute(
            text("SELECT id, model_version_id FROM deployments WHERE public_name = 'mock'")
        ).one()
    granted = leases.open(Pool.wallet(organization_id, "USD"), Decimal(100_000), Decimal(1))
    if granted is None:
        raise SystemExit("the bench wallet could not lease credit")
    return Account(organization_id, api_key_id, deployment_id, version_id, granted.lease_id)


def one_trips() -> float:
    """Batches the writer committed in one round trip so far (its Prometheus counter)."""
    value = REGISTRY.get_sample_value("modelmint_usage_batches_total", {"way": "one_trip"})
    return value or 0.0


def charged_through(database: Database, lease_id: str) -> bool:
    """Whether the lease was charged exactly the sum of the paid usage rows' charges
    (added up here: SQLite would add its text decimals as floats)."""
    with database.engine.connect() as connection:
        charges = connection.execute(
            text("SELECT charge FROM usage_records WHERE plan_code IS NOT NULL")
        ).scalars()
        total = sum((Decimal(str(charge)) for charge in charges), Decimal(0))
        consumed = connection.execute(
            text("SELECT consumed FROM billing_credit_leases WHERE id = :id"), {"id": lease_id}
        ).scalar_one()
    return total > 0 and total == Decimal(str(consumed))


def measure(database: Database, name: str, rounds: int, warmup: int) -> dict[int, bool]:
    """Time unbilled and paid batches of every size taking turns; print the figures.
    Returns, per size, whether the paid batches went the quick way and charged exactly."""
    leases = DatabaseLeaseStore(database, holder="bench-writer", ttl_s=3600)
    who = account(database, leases)
    store = UsageStore(database, Charger(None))
    exact: dict[int, bool] = {}
    try:
        for size in SIZES:
            times: dict[bool, list[float]] = {False: [], True: []}
            quick_before = one_trips()
            for index in range(warmup + rounds):
                for paid in (False, True):
                    batch = [event(who, paid) for _ in range(size)]
                    started = time.perf_counter()
                    store.write(batch)
                    elapsed = time.perf_counter() - started
                    if index >= warmup:
                        times[paid].append(elapsed * 1e6)
            # Every batch in one trip, paid and unbilled.
            expected = (warmup + rounds) * 2
            quick = one_trips() - quick_before == expected
            exact[size] = quick and charged_through(database, who.lease_id)
            report(name, size, times, exact[size])
    finally:
        store.close()
        leases.close(who.lease_id, Pool.wallet(who.organization_id, "USD"))
    return exact


def report(name: str, size: int, times: dict[bool, list[float]], exact: bool) -> None:
    free, paid = times[False], times[True]
    extra = [p - f for f, p in zip(free, paid, strict=True)]
    tag = f"writer_{name}_batch{size}"
    print(f"{tag}_unbilled_us: {statistics.median(free):.1f}")
    print(f"{tag}_paid_us: {statistics.median(paid):.1f}")
    print(f"{tag}_paid_extra_us: {statistics.median(extra):.1f}")
    print(f"{tag}_paid_quick_and_exact: {str(exact).lower()}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2000, help="pairs of batches per size")
    parser.add_argument("--warmup", type=int, default=200, help="pairs written first, untimed")
    parser.add_argument("--only", default="sqlite,postgres", help="sqlite, postgres or both")
    args = parser.parse_args()
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    if chosen - {"sqlite", "postgres"}:
        parser.error("--only takes sqlite and/or postgres")
    workdir = BENCH_HOME / f"writer-{time.strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True)
    say(f"work folder {workdir.relative_to(ROOT)}; {args.rounds} pairs per batch size")
    ok = True
    for name in ("sqlite", "postgres"):
        if name not in chosen:
            continue
        with contextlib.ExitStack() as stack:
            url = stack.enter_context(postgres_database()) if name == "postgres" else None
            if name == "postgres" and url is None:
                continue
            database = stack.enter_context(provisioned(name, workdir, url))
            ok &= all(measure(database, name, args.rounds, args.warmup).values())
    if not ok:
        raise SystemExit("a paid batch did not take the quick way or was not charged exactly")


if __name__ == "__main__":
    main()
