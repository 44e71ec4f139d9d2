"""The composition root: the running parts of one ModelMint process, built from settings
and wired together, and the one way the web faces get hold of them.

``Platform.build`` makes everything a process runs (router and backends, usage writer,
credit leases, the inference service, the API key cache, the demo clock, payments);
``start`` and ``close`` run their background work. The API (``gateway``), the dashboard
and the portal each take the running platform through ``PlatformDep`` and import this
module, never each other; nothing this module builds imports it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from modelmint.accounts.keys import KeyInfo, lookup_key_by_hash
from modelmint.billing_admin.webhooks import AlertDispatcher
from modelmint.charging.admission import SpendGuard
from modelmint.charging.lease_store import DatabaseLeaseStore, holder_name
from modelmint.charging.leases import CreditLeases
from modelmint.charging.reservations import release_stale
from modelmint.charging.settlement import Charger
from modelmint.config import Settings
from modelmint.demo.clock import DemoClock
from modelmint.feedback.samples import SampleRecorder
from modelmint.inference.key_cache import KeyCache
from modelmint.inference.service import InferenceService
from modelmint.limits import LocalRateLimiter, RateLimiter
from modelmint.limits.redis_limiter import RedisRateLimiter
from modelmint.metering import UsageWriter
from modelmint.payments.collection import Payments
from modelmint.payments.configured import configured_payments
from modelmint.registry.catalog import load_routes, routes_version
from modelmint.registry.deployment_status import record_start_failure, record_started
from modelmint.serving.factory import build_backend
from modelmint.serving.router import Router
from modelmint.storage.db import Database
from modelmint.web.throttle import LoginThrottle

__all__ = ["Platform", "PlatformDep"]

T = TypeVar("T")
log = logging.getLogger(__name__)


@dataclass
class Platform:
    settings: Settings
    database: Database
    router: Router
    writer: UsageWriter
    keys: KeyCache
    inference: InferenceService
    leases: CreditLeases
    # When each paid request is metered: now, unless a demo request may ask for the past.
    demo_clock: DemoClock
    # Collection through a payment provider; None when no provider key is configured.
    payments: Payments | None = None
    # Failed API-key and admin-token attempts per client address (see gateway.deps).
    auth_throttle: LoginThrottle = field(
        default_factory=lambda: LoginThrottle(max_failures=20, window_s=60.0)
    )

    @classmethod
    def build(cls, settings: Settings, database: Database | None = None) -> Platform:
        database = database or Database.from_settings(settings)

        def routes() -> dict[str, object]:
            with database.session() as session:
                return load_routes(session)  # type: ignore[return-value]

        def version() -> object:
            with database.session() as session:
                return routes_version(session)

        def lookup(digest: str) -> KeyInfo | None:
            with database.session() as session:
                return lookup_key_by_hash(session, digest)

        def started(deployment_id: str) -> None:
            with database.session() as session:
                record_started(session, deployment_id)

        def failed(deployment_id: str, error: str) -> bool:
            with database.session() as session:
                return record_start_failure(session, deployment_id, error)

        router = Router(
            routes,  # type: ignore[arg-type]
            lambda spec: build_backend(spec, settings),
            refresh_s=settings.cache_ttl_s,
            version=version,
            started=started,
            failed=failed,
        )
        ttl = settings.credit_lease_ttl_s
        leases = CreditLeases(
            DatabaseLeaseStore(database, holder=holder_name(), ttl_s=ttl), ttl_s=ttl
        )
        writer = UsageWriter(database, charging=Charger(leases))
        limiter: RateLimiter
        if settings.redis_url:
            limiter = RedisRateLimiter(settings.redis_url, lease_ttl_s=settings.lease_ttl_s)
        else:
            limiter = LocalRateLimiter()
        return cls(
            settings=settings,
            database=database,
            router=router,
            writer=writer,
            keys=KeyCache(lookup, ttl=settings.cache_ttl_s),
            leases=leases,
            demo_clock=DemoClock(settings, database),
            inference=InferenceService(
                router,
                writer,
                limiter,
                SpendGuard(
                    database,
                    ttl=settings.cache_ttl_s,
                    leases=leases,
                    writer_ok=lambda: writer.healthy,
                ),
                default_max_tokens=settings.default_max_tokens,
                timeout_s=settings.upstream_timeout_s,
            ),
            payments=configured_payments(settings, database),
        )

    _sweeper: asyncio.Task[None] | None = None
    _lease_sweeper: asyncio.Task[None] | None = None
    _payments_task: asyncio.Task[None] | None = None
    alerts: AlertDispatcher | None = None
    samples: SampleRecorder | None = None

    async def start(self) -> None:
        self.writer.start()
        await self.router.start()
        self._sweeper = asyncio.create_task(self._sweep_reservations(), name="reservation-sweep")
        await self.leases.start()
        self._lease_sweeper = asyncio.create_task(self._sweep_leases(), name="lease-sweep")
        # Retries spread over ~10 hours (30 s doubling, capped at an hour), so a receiver
        # that is down for a while still gets its alerts.
        self.alerts = AlertDispatcher(self.database, base_delay_s=30.0, max_attempts=12)
        await self.alerts.start()
        # Opt-in request samples: redacted and stored off the request path, purged
        # past each policy's retention by the same thread.
        self.samples = SampleRecorder(self.database, refresh_s=self.settings.cache_ttl_s)
        self.samples.start()
        self.inference.samples = self.samples
        if self.payments is not None:
            self._payments_task = asyncio.create_task(
                self._run_payments(self.payments), name="payments"
            )

    async def _sweep_reservations(self) -> None:
        """Release wallet reservations whose request died with its process."""
        older_than = timedelta(seconds=self.settings.reservation_ttl_s)
        while True:
            try:
                await asyncio.to_thread(release_stale, self.database, older_than)
            except Exception:
                log.exception("sweeping stale reservations failed; retrying later")
            await asyncio.sleep(min(60.0, self.settings.reservation_ttl_s / 4))

    async def _sweep_leases(self) -> None:
        """Return to their pools the credit leases of processes that died holding them."""
        store = DatabaseLeaseStore(
            self.database, holder="sweeper", ttl_s=self.settings.credit_lease_ttl_s
        )
        while True:
            await asyncio.sleep(min(10.0, self.settings.credit_lease_ttl_s / 3))
            try:
                await asyncio.to_thread(store.reclaim_expired)
            except Exception:
                log.exception("sweeping expired credit leases failed; retrying later")

    async def _run_payments(self, payments: Payments) -> None:
        """Auto top-ups every few seconds; dunning (retries due, blocks overdue) every
        minute. Several processes may run this: each payment is claimed under a lock."""
        last_dunning = 0.0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(5.0)
            try:
                await asyncio.to_thread(payments.run_auto_top_ups)
                if loop.time() - last_dunning >= 60.0:
                    last_dunning = loop.time()
                    await asyncio.to_thread(payments.run_dunning)
            except Exception:
                log.exception("collecting payments failed; retrying shortly")

    async def close(self) -> None:
        if self.samples is not None:
            self.inference.samples = None
            await asyncio.to_thread(self.samples.close)
        if self.alerts is not None:
            await self.alerts.close()
        for sweeper in (self._sweeper, self._lease_sweeper, self._payments_task):
            if sweeper is not None:
                sweeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sweeper
        limiter = self.inference.limiter
        if isinstance(limiter, RedisRateLimiter):
            await limiter.close()
        await self.router.close()
        self.writer.close()
        # After the writer drained: every request admitted against a lease is charged.
        await self.leases.close()
        self.database.dispose()

    async def in_session(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction on a worker thread (admin paths, never hot ones)."""

        def run() -> T:
            with self.database.session() as session:
                return work(session)

        return await asyncio.to_thread(run)


async def _platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


# The running platform, as a FastAPI dependency (``async``: a plain ``def`` dependency
# would cost a thread hop per request).
PlatformDep = Annotated[Platform, Depends(_platform)]
