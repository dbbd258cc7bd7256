"""Adaptive micro-batching: concurrent requests to one model share one predict call. No HTTP.

Each loaded model has one :class:`Batcher`. Callers :meth:`~Batcher.submit` their validated
records and await their own predictions; a worker task merges what is queued into one batch,
runs the model on it in a dedicated thread (one batch at a time per model, so two batches
never compete for the cores) and hands each caller its slice, in order.

Adaptive: a request that arrives while the model is idle is predicted at once, alone. Only
requests that arrive while a batch is running queue up; when that batch ends they go
together, after waiting at most ``max_wait_seconds`` for more company if the batch is not
full yet. A request is one queue entry however many records it holds: it is never split,
and one larger than ``max_batch_size`` goes alone.

A request may also bring its own model call (:meth:`~Batcher.run_alone`, e.g. one call on a
whole DataFrame for a bulk request): it takes its turn in the same queue and the same thread,
alone, so it never competes with the batches for the cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from serving.errors import PredictionFailedError, ServingError

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
Record = dict[str, Any]
PredictFn = Callable[[list[Record]], Sequence[T]]
"""Predict many records with one model call; one output per record, in order."""


@dataclass
class BatcherStats:
    """What the batcher did so far (read by tests and logs; metrics use the callbacks)."""

    batches: int = 0
    largest_batch_rows: int = 0
    largest_batch_requests: int = 0
    timer_waits: int = 0
    """Batches that waited for company (only ever after a busy period)."""
    fallbacks: int = 0
    """Merged batches that failed and were re-predicted one request at a time."""


class _FailureLog:
    """One log line per fault, not per request: a model that fails on every request (a broken
    challenger under shadow traffic, say) would otherwise write a traceback per request.

    The first failure of a kind (exception type and message) is logged with its traceback;
    repeats are counted and summed up in one line at most every ``every_seconds``. Called
    from the model's thread and from ``asyncio.to_thread``, hence the lock."""

    def __init__(self, name: str, every_seconds: float = 60.0) -> None:
        self.name = name
        self.every_seconds = every_seconds
        self._lock = threading.Lock()
        self._kind: tuple[str, str] | None = None
        self._repeats = 0
        self._since = 0.0

    def failed(self, rows: int, exc: BaseException) -> None:
        kind = (type(exc).__name__, str(exc)[:200])
        now = time.monotonic()
        with self._lock:
            if kind == self._kind and now - self._since < self.every_seconds:
                self._repeats += 1
                return
            repeats, self._kind, self._repeats, self._since = self._repeats, kind, 0, now
        if repeats:
            logger.error(
                "Model %s failed %d more times the same way since that was logged",
                self.name,
                repeats,
            )
        logger.error(
            "Model %s failed to predict a request of %d rows (repeats are counted, not logged)",
            self.name,
            rows,
            exc_info=exc,
        )


@dataclass(eq=False)
class _Entry:
    records: list[Record]
    future: asyncio.Future[Any]
    arrived_while_busy: bool
    call: Callable[[], Any] | None = None
    """A request's own model call, run alone instead of predicting ``records``."""
    call_rows: int = 0
    rows: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows = self.call_rows if self.call is not None else len(self.records)


class Batcher(Generic[T]):
    """Queue, merge and predict the requests of one model; see the module docstring."""

    def __init__(
        self,
        predict: PredictFn[T],
        *,
        max_batch_size: int = 256,
        max_wait_seconds: float = 0.002,
        name: str = "model",
        on_batch: Callable[[int], None] | None = None,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be at least 1")
        self._predict = predict
        self.max_batch_size = max_batch_size
        self.max_wait_seconds = max(0.0, max_wait_seconds)
        self.name = name
        self._on_batch = on_batch
        self._on_fallback = on_fallback
        self.stats = BatcherStats()
        self._failures = _FailureLog(name)
        self._pending: deque[_Entry] = deque()
        self._pending_rows = 0
        self._pending_calls = 0
        self._busy = False
        self._closing = False
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch (not counting the batch being predicted)."""
        return len(self._pending)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        """Start the worker task; call from the event loop that will submit requests."""
        if self._task is not None:
            return
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"predict-{self.name}"
        )
        self._task = asyncio.get_running_loop().create_task(
            self._work(), name=f"batcher-{self.name}"
        )

    async def submit(self, records: list[Record]) -> list[T]:
        """Predict ``records`` (one request) as part of a batch; return their outputs in order.

        Raises:
            PredictionFailedError: the model failed on these records (even predicted alone).
        """
        if self._task is None or self._closing:
            # Stopped (an older model after a swap): predict alone rather than fail.
            return await asyncio.to_thread(self._predict_alone, records)
        future: asyncio.Future[list[T]] = asyncio.get_running_loop().create_future()
        self._pending.append(_Entry(records, future, arrived_while_busy=self._busy))
        self._pending_rows += len(records)
        self._wakeup.set()
        return await future

    async def run_alone(self, call: Callable[[], R], *, rows: int) -> R:
        """Run ``call`` (one request's own model call on ``rows`` rows) on the model's thread,
        in its turn with the batches and never merged with them; return what it returns.

        Raises:
            PredictionFailedError: ``call`` raised (the error is logged, not passed on).
        """
        if self._task is None or self._closing:
            return await asyncio.to_thread(self._call_alone, call, rows)
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append(
            _Entry([], future, arrived_while_busy=self._busy, call=call, call_rows=rows)
        )
        self._pending_calls += 1
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        """Finish every queued request, then stop the worker and its thread."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while await self._has_pending():
            head = self._pending[0]
            if head.arrived_while_busy and head.call is None and not self._closing:
                await self._wait_for_company(loop)
            entries = self._take()
            if entries:
                _settle(entries, await self._run_batch(loop, entries))

    async def _has_pending(self) -> bool:
        """Wait until a request is queued: True, or False once closing with none left."""
        while not self._pending:
            if self._closing:
                return False
            self._wakeup.clear()
            await self._wakeup.wait()
        return True

    async def _run_batch(self, loop: asyncio.AbstractEventLoop, entries: list[_Entry]) -> list[Any]:
        """The outcome of each entry (its outputs, or the error to raise), from the model's
        thread."""
        self._busy = True
        try:
            outcomes: list[Any] = await loop.run_in_executor(self._executor, self._run, entries)
        except asyncio.CancelledError:
            for entry in entries:
                entry.future.cancel()
            raise
        except Exception:  # the executor itself failed: nobody may hang
            logger.exception("Batcher %s could not run a batch", self.name)
            outcomes = [PredictionFailedError.for_request() for _ in entries]
        finally:
            self._busy = False
        return outcomes

    async def _wait_for_company(self, loop: asyncio.AbstractEventLoop) -> None:
        """After a busy period, wait up to ``max_wait_seconds`` for the batch to fill (not
        once a request with its own call is queued: nothing behind it can join the batch)."""
        if self.max_wait_seconds <= 0 or not self._may_fill():
            return
        self.stats.timer_waits += 1
        deadline = loop.time() + self.max_wait_seconds
        while self._may_fill() and not self._closing:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            self._wakeup.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()
            except TimeoutError:
                return

    def _may_fill(self) -> bool:
        return self._pending_rows < self.max_batch_size and not self._pending_calls

    def _take(self) -> list[_Entry]:
        """The next batch: the oldest request, then more while they fit in max_batch_size.

        A request with its own call goes alone."""
        entries: list[_Entry] = []
        rows = 0
        while self._pending:
            entry = self._pending[0]
            if entries and (entry.call is not None or rows + entry.rows > self.max_batch_size):
                break
            self._pending.popleft()
            if entry.call is None:
                self._pending_rows -= entry.rows
            else:
                self._pending_calls -= 1
            if entry.future.done():  # cancelled while queued
                continue
            entries.append(entry)
            rows += entry.rows
            if entry.call is not None:
                break
        if entries:
            self.stats.batches += 1
            self.stats.largest_batch_rows = max(self.stats.largest_batch_rows, rows)
            self.stats.largest_batch_requests = max(self.stats.largest_batch_requests, len(entries))
            if self._on_batch is not None:
                self._on_batch(rows)
        return entries

    def _run(self, entries: list[_Entry]) -> list[Any]:
        """In the model's thread: one call for the whole batch, or one per request if it fails."""
        if len(entries) == 1:
            entry = entries[0]
            try:
                if entry.call is not None:
                    return [self._call_alone(entry.call, entry.rows)]
                return [self._predict_alone(entry.records)]
            except ServingError as exc:
                return [exc]
        records = [record for entry in entries for record in entry.records]
        try:
            outputs = self._checked(records)
        except Exception:
            logger.warning(
                "Model %s failed on a batch of %d requests (%d rows); predicting each alone",
                self.name,
                len(entries),
                len(records),
            )
            self.stats.fallbacks += 1
            if self._on_fallback is not None:
                self._on_fallback()
            results: list[list[T] | BaseException] = []
            for entry in entries:
                try:
                    results.append(self._predict_alone(entry.records))
                except ServingError as exc:
                    results.append(exc)
            return results
        results = []
        start = 0
        for entry in entries:
            results.append(outputs[start : start + entry.rows])
            start += entry.rows
        return results

    def _predict_alone(self, records: list[Record]) -> list[T]:
        try:
            return self._checked(records)
        except ServingError:
            raise  # the request's own fault (e.g. values the model overflows on): pass it on
        except Exception as exc:
            self._failures.failed(len(records), exc)
            raise PredictionFailedError.for_request() from exc

    def _call_alone(self, call: Callable[[], R], rows: int) -> R:
        try:
            return call()
        except ServingError:
            raise
        except Exception as exc:
            self._failures.failed(rows, exc)
            raise PredictionFailedError.for_request() from exc

    def _checked(self, records: list[Record]) -> list[T]:
        outputs = list(self._predict(records))
        if len(outputs) != len(records):
            raise RuntimeError(f"the model returned {len(outputs)} outputs for {len(records)} rows")
        return outputs


def _settle(entries: list[_Entry], outcomes: list[Any]) -> None:
    """Hand each waiting caller its outcome: the outputs, or the error to raise."""
    for entry, outcome in zip(entries, outcomes, strict=True):
        if entry.future.done():  # the caller went away
            continue
        if isinstance(outcome, BaseException):
            entry.future.set_exception(outcome)
        else:
            entry.future.set_result(outcome)
