"""How the demo replay finds out whether a server dates its requests in the past, against
a small real HTTP server standing in for the gateway."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from modelmint.demo.names import DEMO_TIME_HEADER
from modelmint.demo.replay import DemoSettings, _replay
from modelmint.demo.traffic import DemoRequest

Answer = Callable[[web.Request, int], web.Response]


def planned(count: int) -> list[DemoRequest]:
    start = datetime(2026, 11, 1, tzinfo=UTC)
    return [
        DemoRequest(start + timedelta(hours=n), "demo-a", "/v1/chat/completions", {"n": n})
        for n in range(count)
    ]


async def replay(answer: Answer, count: int) -> tuple[bool, list[bool], dict[int, int]]:
    """Replay ``count`` requests at a server whose answer to the n-th is ``answer``;
    returns whether the replay saw them dated, and which requests carried a date."""
    dated: list[bool] = []

    async def handle(request: web.Request) -> web.Response:
        dated.append(DEMO_TIME_HEADER in request.headers)
        return answer(request, len(dated) - 1)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    server = TestServer(app)
    await server.start_server()
    try:
        settings = DemoSettings(str(server.make_url("")), "admin", concurrency=1)
        async with aiohttp.ClientSession() as http:
            statuses, backdated = await _replay(
                http, settings, planned(count), {"demo-a": "key"}, lambda n: None
            )
    finally:
        await server.close()
    return backdated, dated, dict(statuses)


def honours_after_refusals(request: web.Request, n: int) -> web.Response:
    if n < 2:  # a free tier's cap, a bad request: no model ran, nothing dated
        return web.json_response({"error": {"code": "insufficient_quota"}}, status=402)
    return web.json_response(
        {}, headers={DEMO_TIME_HEADER: request.headers.get(DEMO_TIME_HEADER, "")}
    )


def time_travel_off(request: web.Request, n: int) -> web.Response:
    if DEMO_TIME_HEADER in request.headers:
        body = {"error": {"code": "demo_time_travel_disabled"}}
        return web.json_response(body, status=403)
    return web.json_response({})


async def test_answers_that_cannot_tell_do_not_decide_against_dating() -> None:
    backdated, dated, statuses = await replay(honours_after_refusals, 5)
    assert backdated
    assert dated == [True] * 5  # every request asked to be dated
    assert statuses == {402: 2, 200: 3}


async def test_a_server_without_time_travel_gets_the_refused_request_again_undated() -> None:
    backdated, dated, statuses = await replay(time_travel_off, 4)
    assert not backdated
    assert dated == [True, False, False, False, False]  # the first one twice
    assert statuses == {200: 4}
