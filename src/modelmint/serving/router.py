"""Public model name -> deployment -> running backend.

The router keeps the route table in memory and re-reads it from the database in
the background, so a model added by another process (or the CLI) becomes
callable within a second without a restart, and no request waits on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass

from modelmint.errors import ModelNotFound, ServiceUnavailable
from modelmint.registry.catalog import DeploymentSpec, RouteSpec
from modelmint.serving.backend import Backend, EmbeddingBackend, PredictionBackend, TextBackend

__all__ = ["Router", "Target"]

log = logging.getLogger(__name__)

# Failed rollouts rolled back in one refresh, each exposing the one it replaced; deeper
# chains finish on the next refreshes.
_MAX_ROLLBACKS = 5


@dataclass(frozen=True, slots=True)
class Target:
    deployment: DeploymentSpec
    backend: Backend


class Router:
    def __init__(
        self,
        load_routes: Callable[[], dict[str, RouteSpec]],
        build: Callable[[DeploymentSpec], Backend],
        *,
        refresh_s: float = 1.0,
        version: Callable[[], object] | None = None,
        started: Callable[[str], None] | None = None,
        failed: Callable[[str, str], bool] | None = None,
    ) -> None:
        self._load_routes = load_routes
        # A cheap fingerprint of the route table: the full table is re-read only when it
        # changes, so the once-a-second check costs one tiny query, not an ORM load.
        self._version = version
        self._seen: object = None
        self._build = build
        # Where starts are recorded (the registry): ``failed`` answers whether it rolled
        # the deployment's rollout back, i.e. whether the routes must be read again.
        self._started = started
        self._failed_hook = failed
        self._refresh_s = refresh_s
        self._routes: dict[str, RouteSpec] = {}
        self._backends: dict[str, Backend] = {}
        self._failed: dict[str, str] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self.ready = False

    @property
    def routes(self) -> dict[str, RouteSpec]:
        return self._routes

    def serving(self) -> list[str]:
        """Public names with at least one running deployment."""
        return sorted(
            name
            for name, route in self._routes.items()
            if any(d.id in self._backends for d in route.deployments)
        )

    def unavailable(self) -> list[str]:
        """Public names routed here whose every deployment failed to start."""
        return sorted(
            name
            for name, route in self._routes.items()
            if all(d.id in self._failed for d in route.deployments)
        )

    async def start(self) -> None:
        await self.refresh()
        self.ready = True
        self._task = asyncio.create_task(self._refresh_forever(), name="router-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for backend in self._backends.values():
            await backend.close()
        self._backends.clear()

    async def refresh(self) -> None:
        """Re-read the routes; start backends of new deployments, stop retired ones.

        Retired backends stop last: a new deployment that fails to start rolls its
        rollout back in the registry, the routes are read again, and the deployment it
        was to replace, still running here, keeps serving without a gap.
        """
        async with self._lock:
            for _ in range(_MAX_ROLLBACKS):
                routes = await asyncio.to_thread(self._load_routes)
                wanted = {d.id: d for r in routes.values() for d in r.deployments}
                if not await self._start_new(wanted):
                    break
            for dep_id in set(self._backends) - set(wanted):
                await self._backends.pop(dep_id).close()
            self._routes = routes

    async def _start_new(self, wanted: dict[str, DeploymentSpec]) -> bool:
        """Start what is not running yet; True when a failure rolled a rollout back."""
        rolled_back = False
        for dep_id, spec in wanted.items():
            if dep_id in self._backends or dep_id in self._failed:
                continue
            if spec.error is not None:
                # Failed in another gateway (or an earlier run): all of them agree.
                self._failed[dep_id] = spec.error
                continue
            try:
                backend = await self._start(spec)
            except Exception as exc:
                # One broken deployment must not take the others down.
                error = str(exc) or type(exc).__name__
                log.error("deployment %s (%s) failed to start: %s", dep_id, spec.public_name, error)
                self._failed[dep_id] = error
                rolled_back |= await self._record(self._failed_hook, dep_id, error)
                continue
            self._backends[dep_id] = backend
            log.info("deployment %s serving %s", dep_id, spec.public_name)
            await self._record(self._started, dep_id)
        return rolled_back

    async def _start(self, spec: DeploymentSpec) -> Backend:
        backend = self._build(spec)
        try:
            _check_serves(backend, spec)
            await backend.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await backend.close()  # whatever it loaded before failing
            raise
        return backend

    async def _record(self, hook: Callable[..., object] | None, *args: str) -> bool:
        if hook is None:
            return False
        try:
            return bool(await asyncio.to_thread(hook, *args))
        except Exception as exc:  # the database may be down; serving goes on
            log.warning("recording the start of deployment %s failed: %s", args[0], exc)
            return False

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                if self._version is not None:
                    seen = await asyncio.to_thread(self._version)
                    if seen == self._seen:
                        continue
                    self._seen = seen
                await self.refresh()
            except Exception as exc:  # the database may be down; keep serving what we have
                log.warning("route refresh failed: %s", exc)

    def route(self, public_name: str) -> RouteSpec:
        route = self._routes.get(public_name)
        if route is None:
            raise ModelNotFound(f"the model {public_name!r} does not exist", param="model")
        return route

    def pick(self, route: RouteSpec) -> Target:
        """One deployment of the route, chosen at random in proportion to its weight."""
        live = [d for d in route.deployments if d.id in self._backends and d.weight > 0]
        if not live:
            if all(d.id in self._failed for d in route.deployments):
                # The reason may name server paths: operators read it in `models list`.
                raise ServiceUnavailable(f"the model {route.public_name!r} failed to start")
            raise ServiceUnavailable(f"the model {route.public_name!r} has no running deployment")
        chosen = live[0] if len(live) == 1 else random.choices(live, [d.weight for d in live])[0]
        return Target(chosen, self._backends[chosen.id])


_TASK_PROTOCOLS: dict[str, type] = {
    "chat": TextBackend,
    "embedding": EmbeddingBackend,
    "classification": PredictionBackend,
    "recommendation": PredictionBackend,
}


def _check_serves(backend: Backend, spec: DeploymentSpec) -> None:
    """Refuse, once at start, a backend that cannot serve its deployment's task."""
    protocol = _TASK_PROTOCOLS.get(spec.task)
    if protocol is None or not isinstance(backend, protocol):
        raise TypeError(f"backend {spec.backend!r} cannot serve the task {spec.task!r}")
