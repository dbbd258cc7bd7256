"""batcher: concurrent submissions merge into one call, split back in order; no HTTP, no model.

The predict functions here are fakes that record each call, so what the batcher did is
asserted structurally (calls, stats), never by wall-clock timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from serving.errors import PredictionFailedError
from serving.model.batcher import Batcher, Record

T = TypeVar("T")
HOUR = 3600.0


def run(coro: Awaitable[T]) -> T:
    async def with_timeout() -> T:
        return await asyncio.wait_for(coro, timeout=10)

    return asyncio.run(with_timeout())


class Model:
    """A fake model: doubles ``x``; blocks each call until released when ``gated``."""

    def __init__(self, *, gated: bool = False, fail_on: int | None = None) -> None:
        self.calls: list[list[int]] = []
        self.release = threading.Event()
        self.started = threading.Event()
        if not gated:
            self.release.set()
        self.fail_on = fail_on

    def __call__(self, records: list[Record]) -> list[int]:
        xs = [int(r["x"]) for r in records]
        self.calls.append(xs)
        self.started.set()
        assert self.release.wait(timeout=10)
        if self.fail_on is not None and self.fail_on in xs:
            raise ValueError(f"cannot predict x={self.fail_on}")
        return [2 * x for x in xs]


def rows(*xs: int) -> list[Record]:
    return [{"x": x} for x in xs]


async def started(batcher: Batcher[Any], model: Model) -> None:
    """Wait (off the loop) until the model is running its first call."""
    assert await asyncio.to_thread(model.started.wait, 10)


async def queued(batcher: Batcher[Any], depth: int) -> None:
    while batcher.queue_depth < depth:
        await asyncio.sleep(0)


def make(model: Callable[[list[Record]], list[int]], **options: Any) -> Batcher[int]:
    batcher: Batcher[int] = Batcher(model, name="fake", **options)
    batcher.start()
    return batcher


def test_a_request_on_an_idle_batcher_is_predicted_at_once_without_waiting_for_company() -> None:
    async def scenario() -> None:
        batcher = make(Model(), max_wait_seconds=HOUR)
        # With an hour of max wait, only an immediate flush can answer within the timeout.
        assert await batcher.submit(rows(1, 2)) == [2, 4]
        assert batcher.stats.timer_waits == 0
        assert batcher.stats.batches == 1
        await batcher.close()

    run(scenario())


def test_requests_queued_while_a_batch_runs_are_merged_into_one_call_and_split_in_order() -> None:
    async def scenario() -> None:
        model = Model(gated=True)
        batcher = make(model, max_wait_seconds=0)
        first = asyncio.create_task(batcher.submit(rows(0)))
        await started(batcher, model)
        sizes = [1, 3, 1, 2, 5]
        requests = [rows(*range(10 * i, 10 * i + n)) for i, n in enumerate(sizes, start=1)]
        tasks = [asyncio.create_task(batcher.submit(r)) for r in requests]
        await queued(batcher, len(tasks))
        model.release.set()
        assert await first == [0]
        results = await asyncio.gather(*tasks)
        for request, result in zip(requests, results, strict=True):
            assert result == [2 * r["x"] for r in request]
        assert model.calls[1] == [r["x"] for request in requests for r in request]
        assert len(model.calls) == 2
        assert batcher.stats.largest_batch_requests == len(sizes)
        assert batcher.stats.largest_batch_rows == sum(sizes)
        await batcher.close()

    run(scenario())


def test_a_full_batch_goes_at_once_instead_of_waiting_out_max_wait() -> None:
    async def scenario() -> None:
        model = Model(gated=True)
        batcher = make(model, max_batch_size=4, max_wait_seconds=HOUR)
        first = asyncio.create_task(batcher.submit(rows(0)))
        await started(batcher, model)
        tasks = [asyncio.create_task(batcher.submit(rows(i, i))) for i in (1, 2)]
        await queued(batcher, 2)
        model.release.set()
        await first
        # Four rows fill the batch: no waiting the hour for more.
        assert await asyncio.gather(*tasks) == [[2, 2], [4, 4]]
        assert model.calls == [[0], [1, 1, 2, 2]]
        await batcher.close()

    run(scenario())


def test_after_a_busy_period_a_partial_batch_waits_at_most_max_wait_for_company() -> None:
    async def scenario() -> None:
        model = Model(gated=True)
        batcher = make(model, max_batch_size=100, max_wait_seconds=0.01)
        first = asyncio.create_task(batcher.submit(rows(0)))
        await started(batcher, model)
        second = asyncio.create_task(batcher.submit(rows(1)))
        await queued(batcher, 1)
        model.release.set()
        assert await first == [0]
        assert await second == [2]
        assert batcher.stats.timer_waits == 1
        await batcher.close()

    run(scenario())


def test_batches_never_exceed_max_rows_and_a_larger_request_goes_alone_unsplit() -> None:
    async def scenario() -> None:
        model = Model(gated=True)
        batcher = make(model, max_batch_size=4, max_wait_seconds=0)
        first = asyncio.create_task(batcher.submit(rows(0)))
        await started(batcher, model)
        big = asyncio.create_task(batcher.submit(rows(*range(1, 8))))
        small = [asyncio.create_task(batcher.submit(rows(x))) for x in (8, 9, 10)]
        await queued(batcher, 4)
        model.release.set()
        await first
        assert await big == [2 * x for x in range(1, 8)]
        assert await asyncio.gather(*small) == [[16], [18], [20]]
        assert model.calls == [[0], list(range(1, 8)), [8, 9, 10]]
        await batcher.close()

    run(scenario())


def test_when_a_merged_batch_fails_only_the_culprit_request_fails() -> None:
    async def scenario() -> None:
        model = Model(gated=True, fail_on=13)
        batcher = make(model, max_wait_seconds=0)
        first = asyncio.create_task(batcher.submit(rows(0)))
        await started(batcher, model)
        good = [asyncio.create_task(batcher.submit(rows(x))) for x in (11, 12)]
        bad = asyncio.create_task(batcher.submit(rows(13, 14)))
        await queued(batcher, 3)
        model.release.set()
        await first
        assert await asyncio.gather(*good) == [[22], [24]]
        with pytest.raises(PredictionFailedError) as info:
            await bad
        assert info.value.status_code == 500
        assert "logged on the server" in info.value.message
        assert "x=13" not in info.value.message
        assert isinstance(info.value.__cause__, ValueError)
        assert batcher.stats.fallbacks == 1
        assert model.calls[1:] == [[11, 12, 13, 14], [11], [12], [13, 14]]
        await batcher.close()

    run(scenario())


def test_a_failing_request_alone_fails_with_a_prediction_error() -> None:
    async def scenario() -> None:
        batcher = make(Model(fail_on=1))
        with pytest.raises(PredictionFailedError):
            await batcher.submit(rows(1))
        assert await batcher.submit(rows(2)) == [4]
        await batcher.close()

    run(scenario())


def test_a_model_failing_on_every_request_logs_one_traceback_then_counts_the_repeats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A broken model (a challenger under shadow traffic, say) must not flood the log."""

    async def fail(batcher: Batcher[int], times: int) -> None:
        for _ in range(times):
            with pytest.raises(PredictionFailedError):
                await batcher.submit(rows(1))

    async def scenario() -> None:
        batcher = make(Model(fail_on=1))
        await fail(batcher, 20)
        tracebacks = [r for r in caplog.records if r.exc_info]
        assert len(tracebacks) == 1 and "cannot predict x=1" in caplog.text
        assert "more times" not in caplog.text
        # Once the summing-up interval has passed, the next failure says how many were counted.
        batcher._failures.every_seconds = 0.0
        await fail(batcher, 1)
        assert "Model fake failed 19 more times the same way" in caplog.text
        assert len([r for r in caplog.records if r.exc_info]) == 2
        await batcher.close()

    with caplog.at_level("ERROR", logger="serving.model.batcher"):
        run(scenario())


def test_close_answers_every_queued_request_then_stops_and_later_requests_still_answer() -> None:
    async def scenario() -> None:
        model = Model(gated=True)
        batcher = make(model, max_wait_seconds=HOUR)
        first = asyncio.create_task(batcher.submit(rows(0)))
        await started(batcher, model)
        queued_tasks = [asyncio.create_task(batcher.submit(rows(x))) for x in (1, 2)]
        await queued(batcher, 2)
        closing = asyncio.create_task(batcher.close())
        model.release.set()
        await closing
        assert not batcher.running
        assert [await first, *await asyncio.gather(*queued_tasks)] == [[0], [2], [4]]
        # A request that picked this batcher just before a swap still gets its answer.
        assert await batcher.submit(rows(5)) == [10]

    run(scenario())


def test_a_caller_that_goes_away_does_not_disturb_the_others() -> None:
    async def scenario() -> None:
        model = Model(gated=True)
        batcher = make(model, max_wait_seconds=0)
        first = asyncio.create_task(batcher.submit(rows(0)))
        await started(batcher, model)
        gone = asyncio.create_task(batcher.submit(rows(1)))
        kept = asyncio.create_task(batcher.submit(rows(2)))
        await queued(batcher, 2)
        gone.cancel()
        model.release.set()
        await first
        assert await kept == [4]
        assert gone.cancelled()
        assert model.calls[1] == [2]
        await batcher.close()

    run(scenario())


def test_max_batch_size_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch_size must be at least 1"):
        Batcher(Model(), max_batch_size=0)


# --- a request's own call (run_alone) ------------------------------------------------------


def test_a_call_of_its_own_runs_on_the_model_thread_in_turn_and_is_never_merged() -> None:
    async def scenario() -> None:
        model = Model(gated=True)
        batcher = make(model, max_wait_seconds=0)
        order: list[str] = []
        threads: set[str] = set()

        def own_call() -> str:
            order.append(f"call after {len(model.calls)} batches")
            threads.add(threading.current_thread().name)
            return "frame answer"

        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await started(batcher, model)
        threads.add(await asyncio.to_thread(lambda: "probe"))  # not the model thread
        before = asyncio.ensure_future(batcher.submit(rows(2)))
        call = asyncio.ensure_future(batcher.run_alone(own_call, rows=10_000))
        after = asyncio.ensure_future(batcher.submit(rows(3)))
        await queued(batcher, 3)
        model.release.set()
        assert await call == "frame answer"
        assert (await first, await before, await after) == ([2], [4], [6])
        assert model.calls == [[1], [2], [3]]  # 2 and 3 were not merged across the call
        assert order == ["call after 2 batches"]
        assert any(name.startswith("predict-fake") for name in threads)
        assert batcher.stats.largest_batch_rows == 10_000
        await batcher.close()

    run(scenario())


def test_a_failing_call_of_its_own_is_a_prediction_failed_error_for_that_request_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        batcher = make(Model())

        def broken() -> None:
            raise RuntimeError("boom in the frame")

        with pytest.raises(PredictionFailedError):
            await batcher.run_alone(broken, rows=5)
        assert await batcher.submit(rows(4)) == [8]
        await batcher.close()
        # A stopped batcher (an older model after a swap) still answers, in a thread.
        assert await batcher.run_alone(lambda: 42, rows=1) == 42

    run(scenario())
    assert "boom in the frame" in caplog.text


def test_a_queued_call_of_its_own_ends_the_wait_for_company_of_the_batch_before_it() -> None:
    async def scenario() -> None:
        model = Model(gated=True)
        batcher = make(model, max_wait_seconds=HOUR)
        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await started(batcher, model)
        waiting = asyncio.ensure_future(batcher.submit(rows(2)))
        call = asyncio.ensure_future(batcher.run_alone(lambda: "done", rows=500))
        await queued(batcher, 2)
        model.release.set()
        # With an hour of max wait, only skipping the wait can answer within the timeout.
        assert (await first, await waiting, await call) == ([2], [4], "done")
        await batcher.close()

    run(scenario())
