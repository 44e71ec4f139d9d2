"""The engine's outbox: a step's events reach the streams, and a hand-off waits for them."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from modelmint.serving.llama_outbox import Outbox
from modelmint.serving.llama_sequence import EngineCharge, Job
from modelmint.serving.types import SamplingParams


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, as the server's is to the engine."""
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running

    async def cancel_tasks() -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(cancel_tasks(), running).result(timeout=10)
    running.call_soon_threadsafe(running.stop)
    thread.join(timeout=10)
    running.close()


def job_on(loop: asyncio.AbstractEventLoop) -> Job:
    async def make() -> Job:
        return Job(
            tokens=[1, 2, 3],
            max_tokens=4,
            sampling=SamplingParams(max_tokens=4),
            penalties=(0.0, 0.0),
            grammar=None,
            logprobs=-1,
            queue=asyncio.Queue(),
            loop=loop,
            done=loop.create_future(),
            charge=EngineCharge(),
        )

    return asyncio.run_coroutine_threadsafe(make(), loop).result(timeout=10)


def consume(loop: asyncio.AbstractEventLoop, job: Job, sent: list[Any]) -> None:
    """A stream task that 'sends' each event it gets, as the server's stream does."""

    async def follow() -> None:
        while True:
            kind, value = await job.queue.get()
            sent.append((kind, value))

    loop.call_soon_threadsafe(lambda: loop.create_task(follow()))


def test_a_hand_off_returns_once_the_stream_has_handled_the_step(
    loop: asyncio.AbstractEventLoop,
) -> None:
    job, sent = job_on(loop), list[Any]()
    consume(loop, job, sent)
    outbox = Outbox()
    for token in ("Hel", "lo"):
        # The loop is busy for a while (another request's work): without the hand-off,
        # the flush would return at once, before the stream could take the token.
        loop.call_soon_threadsafe(time.sleep, 0.2)
        outbox.post(job, "token", token)
        outbox.flush(handoff_s=10.0)
        assert sent[-1:] == [("token", token)]
    assert sent == [("token", "Hel"), ("token", "lo")]


def test_a_busy_event_loop_holds_the_engine_no_longer_than_the_hand_off(
    loop: asyncio.AbstractEventLoop,
) -> None:
    job, sent = job_on(loop), list[Any]()
    consume(loop, job, sent)
    release = threading.Event()
    loop.call_soon_threadsafe(release.wait)  # the loop is busy until released
    outbox = Outbox()
    outbox.post(job, "token", "x")
    outbox.flush(handoff_s=0.05)  # returns although the loop could not take the token
    assert sent == []
    release.set()
    outbox.flush(handoff_s=10.0)  # nothing posted: nothing to wait for
    asyncio.run_coroutine_threadsafe(asyncio.sleep(0), loop).result(timeout=10)
    assert sent == [("token", "x")]


def test_done_resolves_the_job_and_nothing_waits_without_a_hand_off(
    loop: asyncio.AbstractEventLoop,
) -> None:
    job = job_on(loop)
    outbox = Outbox()
    outbox.post(job, "done")
    outbox.flush()
    asyncio.run_coroutine_threadsafe(asyncio.wait_for(job.done, 10), loop).result(timeout=10)
    assert job.done.done()
