"""Demo traffic sent through the real gateway HTTP API, as a customer's client would.

``run_demo`` talks to a running ModelMint only over HTTP: the admin API creates the
demo organisations (``demo-*``), subscribes them to the demo plans from the start of
the window (funding prepaid wallets), makes a key for each, then every planned
request goes to ``/v1/...`` with that key, so usage, charges, rollups and invoices
are made by the platform itself, never written here.

Time travel. A month of history needs requests dated in the past. Each request
carries ``X-ModelMint-Demo-Time`` (when to meter it) and ``X-ModelMint-Admin-Token``.
The gateway honours them only when it runs with ``MODELMINT_DEMO_TIME_TRAVEL=true``,
only with the right admin token, and only for organisations whose name starts with
``demo-``; it then dates the usage record (and so its charges and rollups) at that
instant and echoes the header in its answer. A server that does not confirm is
sent the traffic undated (everything lands now), and the result says so.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import aiohttp

from modelmint.billing.serialization import plan_to_dict
from modelmint.clock import utcnow
from modelmint.demo.billing import DEMO_CURRENCY, demo_plans
from modelmint.demo.names import DEMO_ADMIN_HEADER, DEMO_TIME_HEADER
from modelmint.demo.traffic import DemoCustomer, DemoRequest, customers, schedule, window_start
from modelmint.errors import InvalidRequest, ServiceUnavailable

__all__ = ["DemoResult", "DemoSettings", "run_demo"]

# Promotional credit for each prepaid demo customer: more than a demo month spends.
_PREPAID_CREDIT = "50.00"
_KEY_NAME = "demo-traffic"


@dataclass(frozen=True, slots=True)
class DemoSettings:
    base_url: str  # the server, e.g. http://127.0.0.1:8000
    admin_token: str
    days: int = 30
    organizations: int = 20
    requests: int = 2000
    concurrency: int = 8
    seed: int = 7


@dataclass(frozen=True, slots=True)
class DemoResult:
    """What a run did: the organisations, requests by HTTP status (0: no answer), and
    whether the server dated them in the past."""

    organizations: tuple[str, ...]
    window_start: datetime
    statuses: dict[int, int] = field(default_factory=dict)
    backdated: bool = False

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def answered(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)


class _Admin:
    """The admin API, as the demo needs it."""

    def __init__(self, http: aiohttp.ClientSession, base_url: str, token: str) -> None:
        self._http = http
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"}

    async def call(
        self, method: str, path: str, body: object = None, ok: Sequence[int] = ()
    ) -> Any:
        async with self._http.request(
            method, self._base + path, json=body, headers=self._headers
        ) as response:
            payload = await response.json(content_type=None)
            if response.status >= 400 and response.status not in ok:
                message = (payload or {}).get("error", {}).get("message", response.reason)
                raise InvalidRequest(f"{method} {path}: {response.status} {message}")
            return payload


async def _models(admin: _Admin) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"chat": [], "embedding": []}
    for route in await admin.call("GET", "/admin/models"):
        if route["task"] in found:
            found[route["task"]].append(route["name"])
    return found


async def _ensure_plans(admin: _Admin) -> None:
    published = {plan["code"] for plan in await admin.call("GET", "/admin/billing/plans")}
    for plan in demo_plans():
        if plan.code not in published:
            await admin.call("POST", "/admin/billing/plans", plan_to_dict(plan))


async def _ensure_customer(admin: _Admin, customer: DemoCustomer, start: datetime) -> str:
    """Create the organisation and its subscription if new; returns a fresh API key."""
    await admin.call("POST", "/admin/organizations", {"name": customer.name}, ok=(409,))
    path = f"/admin/billing/organizations/{customer.name}"
    if not await admin.call("GET", f"{path}/subscriptions"):
        since = start + timedelta(days=customer.joins_day)
        await admin.call(
            "POST", f"{path}/subscriptions", {"plan": customer.plan, "at": since.isoformat()}
        )
        if customer.plan == "payg":
            await admin.call("POST", f"{path}/wallet", {"currency": DEMO_CURRENCY}, ok=(409,))
            grant = {
                "amount": _PREPAID_CREDIT,
                "currency": DEMO_CURRENCY,
                "reference": "demo traffic",
            }
            await admin.call("POST", f"{path}/wallet/grants", grant)
    created = await admin.call(
        "POST", "/admin/keys", {"organization": customer.name, "name": _KEY_NAME}
    )
    return str(created["key"])


# Error codes with which a server refuses to date a request in the past.
_DATING_REFUSED = ("demo_time_travel_disabled", "invalid_admin_token")


async def _send(
    http: aiohttp.ClientSession,
    base_url: str,
    request: DemoRequest,
    key: str,
    admin_token: str | None,
) -> tuple[int, bool | None]:
    """POST one request; returns its status (0: no answer) and whether it was dated in
    the past: True (the answer names its date), False (the server refused to date it:
    time travel off, or a wrong admin token) or None (the answer cannot tell: a refusal
    before the model ran, a bad request)."""
    headers = {"Authorization": f"Bearer {key}"}
    if admin_token is not None:
        headers[DEMO_TIME_HEADER] = request.at.isoformat()
        headers[DEMO_ADMIN_HEADER] = admin_token
    try:
        async with http.post(
            base_url + request.path, json=request.body, headers=headers
        ) as response:
            body = await response.read()
            if DEMO_TIME_HEADER.lower() in {h.lower() for h in response.headers}:
                return response.status, True
            return response.status, (False if _refused_dating(body) else None)
    except (aiohttp.ClientError, TimeoutError):
        return 0, None


def _refused_dating(body: bytes) -> bool:
    return any(code.encode() in body for code in _DATING_REFUSED)


async def _replay(
    http: aiohttp.ClientSession,
    settings: DemoSettings,
    planned: list[DemoRequest],
    keys: dict[str, str],
    progress: Callable[[int], None],
) -> tuple[Counter[int], bool]:
    base = settings.base_url.rstrip("/")
    statuses: Counter[int] = Counter()
    # The first answers tell whether the server honours time travel: one that names
    # its date, or one that refuses to date it (then it is sent again, dated now).
    # Answers that cannot tell (a free tier's 402, a bad request) leave it open.
    token: str | None = settings.admin_token
    backdated = False
    rest = list(planned)
    while rest and token is not None and not backdated:
        request = rest.pop(0)
        status, dated = await _send(http, base, request, keys[request.customer], token)
        if status == 0:
            raise ServiceUnavailable(f"no answer from {base}; is `modelmint up` running there?")
        if dated is False:
            token = None
            status, _ = await _send(http, base, request, keys[request.customer], None)
        backdated = dated is True
        statuses[status] += 1
        progress(1)
    queue: asyncio.Queue[DemoRequest] = asyncio.Queue()
    for request in rest:
        queue.put_nowait(request)

    async def worker() -> None:
        while not queue.empty():
            request = queue.get_nowait()
            code, _ = await _send(http, base, request, keys[request.customer], token)
            statuses[code] += 1
            progress(1)

    await asyncio.gather(*(worker() for _ in range(max(1, settings.concurrency))))
    return statuses, backdated


async def run_demo(
    settings: DemoSettings,
    *,
    on_plan: Callable[[int], None] = lambda total: None,
    progress: Callable[[int], None] = lambda done: None,
    now: datetime | None = None,
) -> DemoResult:
    """Create the demo customers and replay their month through the gateway. Returns
    a ``DemoResult``; ``on_plan`` learns how many requests will be sent, ``progress`` is
    told as each completes."""
    moment = now or utcnow()
    start = window_start(moment, settings.days)
    demo = customers(settings.organizations, settings.days, seed=settings.seed)
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        admin = _Admin(http, settings.base_url, settings.admin_token)
        models = await _models(admin)
        if not models["chat"] and not models["embedding"]:
            raise InvalidRequest("the server serves no chat or embedding model to demo")
        await _ensure_plans(admin)
        keys = {c.name: await _ensure_customer(admin, c, start) for c in demo}
        planned = schedule(
            demo, days=settings.days, requests=settings.requests, now=moment, models=models,
            seed=settings.seed,
        )  # fmt: skip
        on_plan(len(planned))
        statuses, backdated = await _replay(http, settings, planned, keys, progress)
        if backdated:
            for customer in demo:
                if customer.churn_day is not None:
                    at = start + timedelta(days=customer.churn_day)
                    path = f"/admin/billing/organizations/{customer.name}/subscription/cancel"
                    await admin.call("POST", path, {"at": at.isoformat()}, ok=(409,))
    return DemoResult(tuple(c.name for c in demo), start, dict(statuses), backdated)
