"""DynamicBatcher with a tiny pure-Python batch function: grouping, order, refusals, cost.

The worker is held busy by a gate (a function that blocks on an event) whenever a test
needs requests to queue up behind a running batch; nothing waits on the clock except
the deadline test, which waits for the deadline itself.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from modelmint.errors import BackendError, InvalidRequest, ServiceUnavailable, UpstreamTimeout
from modelmint.serving.dynamic_batching import Batched, BatchLimits, DynamicBatcher

# Generous: a correct batcher answers these in milliseconds; a broken one must fail, not hang.
PATIENCE_S = 10.0


class Model:
    """Doubles numbers; records every batch; can hold the worker inside a batch."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.hold = threading.Event()
        self.hold.set()  # open unless a test closes it
        self.entered = threading.Event()

    def __call__(self, items: list[int]) -> list[int]:
        self.batches.append(list(items))
        self.entered.set()
        if not self.hold.wait(PATIENCE_S):
            raise RuntimeError("the test never released the batch")
        if -1 in items:
            raise ValueError("the model cannot take -1")
        if -2 in items:
            raise InvalidRequest("-2 is not a valid input", param="input")
        return [2 * x for x in items]

    async def busy_with(self, batcher: DynamicBatcher[int, int], item: int) -> asyncio.Task[Any]:
        """Start a request and return once the worker is inside its batch, held there."""
        self.hold.clear()
        self.entered.clear()
        task = asyncio.create_task(batcher.submit([item]))
        assert await asyncio.to_thread(self.entered.wait, PATIENCE_S)
        return task


@pytest.fixture
def model() -> Model:
    return Model()


@pytest.fixture
def labels() -> tuple[str, str]:
    return f"test-{uuid.uuid4().hex[:8]}", "dep-test"


def _batcher(
    model: Model, labels: tuple[str, str], limits: BatchLimits
) -> DynamicBatcher[int, int]:
    name, deployment = labels
    batcher = DynamicBatcher(model, limits, model=name, deployment=deployment)
    batcher.start()
    return batcher


@pytest.fixture
async def batcher(model: Model, labels: tuple[str, str]) -> AsyncIterator[DynamicBatcher[int, int]]:
    batcher = _batcher(model, labels, BatchLimits(max_batch_size=8, max_wait_ms=0, max_queue=16))
    yield batcher
    model.hold.set()
    await batcher.close()


def _sample(name: str, labels: tuple[str, str], **extra: str) -> float:
    model, deployment = labels
    value = REGISTRY.get_sample_value(
        f"modelmint_batcher_{name}", {"model": model, "deployment": deployment, **extra}
    )
    return value or 0.0


async def _queued(*requests: asyncio.Task[Batched[int]]) -> None:
    """Let freshly created submit tasks run up to their first wait: they are then queued."""
    await asyncio.sleep(0)
    assert not any(r.done() for r in requests)


async def test_each_caller_gets_its_own_results_in_order(
    batcher: DynamicBatcher[int, int],
) -> None:
    inputs = [[1, 2, 3], [10], [7, 8, 9, 10, 11], [4, 5]]
    answers = await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(items) for items in inputs)), PATIENCE_S
    )
    assert [a.results for a in answers] == [[2 * x for x in items] for items in inputs]


async def test_requests_that_arrive_during_a_batch_run_together_in_the_next(
    batcher: DynamicBatcher[int, int], model: Model
) -> None:
    first = await model.busy_with(batcher, 100)
    waiting = [asyncio.create_task(batcher.submit([i, i + 1])) for i in (1, 3, 5)]
    await _queued(*waiting)
    assert batcher.queued == 3
    model.hold.set()
    answers = await asyncio.wait_for(asyncio.gather(first, *waiting), PATIENCE_S)
    assert model.batches == [[100], [1, 2, 3, 4, 5, 6]]
    assert [a.results for a in answers[1:]] == [[2, 4], [6, 8], [10, 12]]


async def test_a_full_batch_starts_without_waiting_for_more(
    model: Model, labels: tuple[str, str]
) -> None:
    # A minute of max_wait_ms: only a full batch can start before the test gives up.
    batcher = _batcher(model, labels, BatchLimits(max_batch_size=4, max_wait_ms=60_000))
    try:
        answer = await asyncio.wait_for(batcher.submit([1, 2, 3, 4]), PATIENCE_S)
    finally:
        await batcher.close()
    assert answer.results == [2, 4, 6, 8]
    assert model.batches == [[1, 2, 3, 4]]


async def test_a_request_larger_than_a_batch_runs_over_several_batches(
    model: Model, labels: tuple[str, str]
) -> None:
    batcher = _batcher(model, labels, BatchLimits(max_batch_size=3, max_wait_ms=0))
    try:
        answer = await asyncio.wait_for(batcher.submit(list(range(7))), PATIENCE_S)
    finally:
        await batcher.close()
    assert model.batches == [[0, 1, 2], [3, 4, 5], [6]]
    assert answer.results == [0, 2, 4, 6, 8, 10, 12]


async def test_a_full_queue_answers_503_with_retry_after(
    model: Model, labels: tuple[str, str]
) -> None:
    batcher = _batcher(model, labels, BatchLimits(max_batch_size=8, max_wait_ms=0, max_queue=2))
    try:
        running = await model.busy_with(batcher, 0)
        waiting = [asyncio.create_task(batcher.submit([i])) for i in (1, 2)]
        await _queued(*waiting)
        with pytest.raises(ServiceUnavailable) as refused:
            await batcher.submit([3])
        assert refused.value.status_code == 503
        assert refused.value.retry_after is not None and refused.value.retry_after > 0
        model.hold.set()
        answers = await asyncio.wait_for(asyncio.gather(running, *waiting), PATIENCE_S)
    finally:
        model.hold.set()
        await batcher.close()
    assert [a.results for a in answers] == [[0], [2], [4]]
    assert 3 not in [x for batch in model.batches for x in batch]
    assert _sample("dropped_total", labels, reason="queue_full") == 1


async def test_a_request_not_started_before_its_deadline_gets_504_and_never_runs(
    batcher: DynamicBatcher[int, int], model: Model, labels: tuple[str, str]
) -> None:
    running = await model.busy_with(batcher, 0)
    with pytest.raises(UpstreamTimeout) as late:
        await asyncio.wait_for(batcher.submit([42], timeout_ms=20), PATIENCE_S)
    assert late.value.status_code == 504
    assert late.value.code == "queue_timeout"
    assert batcher.queued == 0
    model.hold.set()
    await asyncio.wait_for(running, PATIENCE_S)
    after = await asyncio.wait_for(batcher.submit([5]), PATIENCE_S)
    assert after.results == [10]
    assert model.batches == [[0], [5]]
    assert _sample("dropped_total", labels, reason="timeout") == 1


async def test_a_started_request_is_not_cut_by_its_deadline(
    batcher: DynamicBatcher[int, int], model: Model
) -> None:
    model.hold.clear()
    model.entered.clear()
    task = asyncio.create_task(batcher.submit([9], timeout_ms=20))
    assert await asyncio.to_thread(model.entered.wait, PATIENCE_S)
    # Held in its batch well past the deadline: the answer still comes.
    done, _ = await asyncio.wait({task}, timeout=0.1)
    assert not done
    model.hold.set()
    answer = await asyncio.wait_for(task, PATIENCE_S)
    assert answer.results == [18]


async def test_a_caller_cancelled_while_queued_is_removed_and_never_computed(
    batcher: DynamicBatcher[int, int], model: Model, labels: tuple[str, str]
) -> None:
    running = await model.busy_with(batcher, 0)
    gone = asyncio.create_task(batcher.submit([77, 78]))
    stays = asyncio.create_task(batcher.submit([1]))
    await _queued(gone, stays)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert batcher.queued == 1
    model.hold.set()
    answers = await asyncio.wait_for(asyncio.gather(running, stays), PATIENCE_S)
    assert [a.results for a in answers] == [[0], [2]]
    assert model.batches == [[0], [1]]
    assert _sample("dropped_total", labels, reason="cancelled") == 1


async def test_a_failing_batch_fails_only_its_own_callers(
    batcher: DynamicBatcher[int, int], model: Model
) -> None:
    running = await model.busy_with(batcher, 0)
    doomed = [asyncio.create_task(batcher.submit(items)) for items in ([-1], [3, 4])]
    await _queued(*doomed)
    model.hold.set()
    first, *failed = await asyncio.wait_for(
        asyncio.gather(running, *doomed, return_exceptions=True), PATIENCE_S
    )
    assert isinstance(first, Batched) and first.results == [0]
    # The two queued callers shared the batch that raised: both get 502, nobody else does.
    assert all(isinstance(e, BackendError) and e.status_code == 502 for e in failed)
    assert failed[0] is not failed[1]  # one exception object per caller
    later = await asyncio.wait_for(batcher.submit([6]), PATIENCE_S)
    assert later.results == [12]


async def test_an_error_of_ours_raised_by_the_model_passes_through(
    batcher: DynamicBatcher[int, int],
) -> None:
    with pytest.raises(InvalidRequest, match="-2 is not a valid input"):
        await asyncio.wait_for(batcher.submit([-2]), PATIENCE_S)


async def test_a_model_giving_the_wrong_number_of_results_is_a_backend_error(
    labels: tuple[str, str],
) -> None:
    batcher: DynamicBatcher[int, int] = DynamicBatcher(lambda items: items[:-1])
    batcher.start()
    try:
        with pytest.raises(BackendError, match="2 results for 3 inputs"):
            await asyncio.wait_for(batcher.submit([1, 2, 3]), PATIENCE_S)
    finally:
        await batcher.close()


async def test_engine_time_is_shared_by_cost_and_adds_up_to_the_busy_time(
    batcher: DynamicBatcher[int, int], model: Model, labels: tuple[str, str]
) -> None:
    running = await model.busy_with(batcher, 0)
    light = asyncio.create_task(batcher.submit([1, 2], costs=[1, 2]))
    heavy = asyncio.create_task(batcher.submit([3], costs=[9]))
    await _queued(light, heavy)
    model.hold.set()
    alone, a, b = await asyncio.wait_for(asyncio.gather(running, light, heavy), PATIENCE_S)
    busy_ms = _sample("busy_seconds_total", labels) * 1000.0
    # Two batches: [0] alone, then [1, 2, 3] with costs 1 + 2 + 9.
    assert model.batches == [[0], [1, 2, 3]]
    assert a.engine_ms > 0 and b.engine_ms > 0
    assert b.engine_ms == pytest.approx(3 * a.engine_ms, rel=1e-9)
    assert alone.engine_ms + a.engine_ms + b.engine_ms == pytest.approx(busy_ms, rel=1e-9)
    assert a.queue_ms >= 0 and b.queue_ms >= 0


async def test_items_without_cost_share_their_batch_evenly(
    model: Model, labels: tuple[str, str]
) -> None:
    batcher = _batcher(model, labels, BatchLimits(max_batch_size=8, max_wait_ms=0))
    try:
        running = await model.busy_with(batcher, 0)
        one = asyncio.create_task(batcher.submit([1], costs=[0]))
        three = asyncio.create_task(batcher.submit([2, 3, 4], costs=[0, 0, 0]))
        await _queued(one, three)
        model.hold.set()
        _, a, b = await asyncio.wait_for(asyncio.gather(running, one, three), PATIENCE_S)
    finally:
        model.hold.set()
        await batcher.close()
    assert b.engine_ms == pytest.approx(3 * a.engine_ms, rel=1e-9)


async def test_closing_answers_503_to_requests_still_waiting(
    batcher: DynamicBatcher[int, int], model: Model
) -> None:
    running = await model.busy_with(batcher, 0)
    waiting = asyncio.create_task(batcher.submit([1]))
    await _queued(waiting)
    closing = asyncio.create_task(batcher.close())
    await asyncio.sleep(0)  # close() has marked the batcher as stopping
    model.hold.set()
    await asyncio.wait_for(closing, PATIENCE_S)
    assert (await running).results == [0]
    with pytest.raises(ServiceUnavailable):
        await asyncio.wait_for(waiting, PATIENCE_S)
    with pytest.raises(ServiceUnavailable):
        await batcher.submit([2])


def test_limits_come_from_a_deployment_config_and_are_checked() -> None:
    limits = BatchLimits.from_config({"max_batch_size": "16", "max_wait_ms": 1.5})
    assert (limits.max_batch_size, limits.max_wait_ms) == (16, 1.5)
    assert limits.max_queue == BatchLimits().max_queue
    for bad in ({"max_batch_size": 0}, {"max_wait_ms": -1}, {"max_queue": "many"}):
        with pytest.raises(InvalidRequest):
            BatchLimits.from_config(bad)
