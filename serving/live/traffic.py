"""Predicting a request with the champion and, beside it, the challenger. No HTTP.

Every prediction route calls :meth:`LiveTraffic.predict`; it returns the answer that goes
back to the client and which version gave it, and logs every version's answer to the
prediction log under the request's key (``request_id``, ``row``) with the live columns
(``contracts.LIVE_COLUMNS``: role, served, latency, error).

- **No challenger** (none in Staging, mode ``off``, refused, or rolled back): the champion
  answers, as before; the added cost is two clock reads.
- **Shadow**: the champion answers; once it has, the request joins the shadow queue (at most
  ``shadow_max_in_flight`` requests wait; beyond that a request is not shadowed, and counted),
  so it never delays the answer. One worker drains the queue: the records of every queued
  request go to the challenger in one call (a request that fails in the merged call is then
  predicted alone, as the batcher does), so shadowing costs an append per request, not a task.
  Each request's answer or failure (error, or no answer within ``timeout_seconds``) is logged
  with ``served`` false, counted, and compared with the champion's (the agreement rate); the
  client never sees it.
- **Canary**: a request whose routing key hashes under ``canary_percent``
  (:mod:`serving.live.routing`) is answered by the challenger; if it fails or times out, the
  champion answers instead (the failure is logged and counted, never sent). The champion
  also predicts the requests the challenger answered, in the background as in shadow mode,
  so the log holds both versions' answers for every canary request: the paired evidence
  ``live-gate`` judges. The canary judge (:mod:`serving.live.judge`) watches both versions'
  errors and p99 latency and rolls the challenger back when it is out of bounds.

Each worker process routes, judges and rolls back on its own; the registry tag one of them
writes makes the others drop the challenger at their next poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from pipeline.contracts import CHALLENGER_ROLE, CHAMPION_ROLE
from serving.live.judge import RollbackBounds, RollbackJudge
from serving.live.routing import goes_to_challenger
from serving.middleware.metrics import ServingMetrics
from serving.model.challenger import ChallengerHolder
from serving.model.inference import FramePredictions, PredictionRow, Record
from serving.model.state import ActiveModel
from serving.model.store import LoadedModel
from serving.prediction_log import PredictionLog
from serving.settings import ChallengerMode

logger = logging.getLogger(__name__)

Inputs: TypeAlias = list[Record] | pd.DataFrame
Outputs: TypeAlias = list[PredictionRow] | FramePredictions

_ERROR_CHARS = 300
SHADOW_GATHER_SECONDS = 0.25
"""Longest the shadow worker lets requests queue up before predicting them together."""
SHADOW_BATCH_ROWS = 256
"""Rows queued that end the wait at once: a model call's fixed cost (the frame, the
preprocessing's checks: about 3.5 ms measured for a scaled logistic regression) is then paid
once per 256 rows, and the merged call stays short enough not to hold the cores for long."""
_REGRESSION_AGREEMENT = 0.01
"""Two regressors agree on a row when their values are within 1% of each other."""


@dataclass(frozen=True)
class Answer:
    """What goes back to the client, and the version that gave it."""

    loaded: LoadedModel
    outputs: Any
    """``list[PredictionRow]`` for records, :class:`FramePredictions` for a frame."""
    role: str


@dataclass(frozen=True)
class LiveOptions:
    mode: ChallengerMode
    canary_percent: float
    timeout_seconds: float
    shadow_max_in_flight: int
    bounds: RollbackBounds


@dataclass(frozen=True)
class _ShadowJob:
    """A request waiting for a version's answer off the request path."""

    request_id: str
    active: ActiveModel
    inputs: Inputs
    proba: bool
    answered: Outputs
    """The served answer the shadow answer is compared with."""
    role: str


@dataclass(frozen=True)
class _Outcome:
    outputs: Any
    seconds: float
    error: str | None
    timed_out: bool = False


class LiveTraffic:
    """Routes requests between champion and challenger; see the module docstring."""

    def __init__(
        self,
        challenger: ChallengerHolder | None,
        options: LiveOptions,
        metrics: ServingMetrics,
        log: PredictionLog | None,
    ) -> None:
        self.holder = challenger
        self.options = options
        self.judge = RollbackJudge(options.bounds)
        self._metrics = metrics
        self._log = log
        self._judged: str | None = None
        """The challenger version the judge's outcomes are about."""
        self._shadow_queue: deque[_ShadowJob] = deque()
        self._shadow_rows = 0
        """Rows in the queue."""
        self._shadow_wakeup: asyncio.Event | None = None
        self._shadow_full: asyncio.Event | None = None
        self._shadow_worker: asyncio.Task[None] | None = None
        self._shadow_busy = 0
        """Jobs taken from the queue whose answers are not logged yet."""
        self.shadow_dropped = 0

    @property
    def mode(self) -> ChallengerMode:
        return self.options.mode

    def challenger(self) -> ActiveModel | None:
        """The challenger requests may go to now; None when there is none to use."""
        holder = self.holder
        return None if holder is None else holder.active

    async def predict(
        self,
        request_id: str,
        champion: ActiveModel,
        inputs: Inputs,
        *,
        proba: bool = True,
        routing_key: str | None = None,
        canary: bool = True,
    ) -> Answer:
        """Answer ``inputs`` (validated records, or a bulk frame) and log every version's
        answer; see the module docstring. ``routing_key`` defaults to ``request_id``;
        ``canary`` false keeps the answer the champion's (a request naming its version).

        Raises:
            PredictionFailedError: the champion failed (a challenger's failure never raises).
        """
        challenger = self.challenger()
        if challenger is None:
            start = time.perf_counter()
            outputs = await _call(champion, inputs, proba)
            seconds = time.perf_counter() - start
            self._logged(request_id, champion.loaded, inputs, outputs, seconds, CHAMPION_ROLE)
            return Answer(champion.loaded, outputs, CHAMPION_ROLE)
        if self.options.mode == "canary":
            key = (routing_key or request_id) if canary else None
            return await self._canary(request_id, key, champion, challenger, inputs, proba)
        answer = await self._champion(request_id, champion, inputs, proba)
        self._shadow(request_id, challenger, inputs, proba, answer.outputs, CHALLENGER_ROLE)
        return answer

    def report_challenger(self) -> None:
        """Set the challenger's gauges in ``/metrics`` (which version, rolled back or not)."""
        holder = self.holder
        if holder is None:
            return
        loaded = holder.active.loaded if holder.active is not None else None
        self._metrics.challenger(
            None if loaded is None else loaded.name,
            None if loaded is None else loaded.version,
            self.options.mode,
            holder.rollback is not None,
        )

    async def close(self) -> None:
        """Let the queued shadow predictions finish (they are logged), then stop the worker."""
        worker = self._shadow_worker
        if worker is None:
            return
        while self._shadow_queue or self._shadow_busy:
            await asyncio.sleep(0.005)
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        self._shadow_worker = None

    # --- canary -------------------------------------------------------------------------

    async def _canary(
        self,
        request_id: str,
        key: str | None,
        champion: ActiveModel,
        challenger: ActiveModel,
        inputs: Inputs,
        proba: bool,
    ) -> Answer:
        self._follow(challenger)
        if key is None or not goes_to_challenger(key, self.options.canary_percent):
            answer = await self._champion(request_id, champion, inputs, proba)
            self._judge()
            return answer
        outcome = await self._attempt(challenger, inputs, proba)
        served = outcome.error is None
        self._record(request_id, challenger.loaded, inputs, outcome, CHALLENGER_ROLE, served)
        self.judge.record(CHALLENGER_ROLE, error=not served, seconds=outcome.seconds)
        if served:
            # The champion's answer for the same request, off the request path: the pair.
            self._shadow(request_id, champion, inputs, proba, outcome.outputs, CHAMPION_ROLE)
            self._judge()
            return Answer(challenger.loaded, outcome.outputs, CHALLENGER_ROLE)
        self._judge()
        return await self._champion(request_id, champion, inputs, proba)

    def _follow(self, challenger: ActiveModel) -> None:
        """A new challenger version: what the judge saw of the last one is forgotten."""
        if challenger.loaded.version != self._judged:
            self._judged = challenger.loaded.version
            self.judge.reset()

    def _judge(self) -> None:
        reason = self.judge.verdict()
        if reason is not None and self.holder is not None:
            self.holder.roll_back(reason)
            self.judge.reset()

    # --- each version -------------------------------------------------------------------

    async def _champion(
        self, request_id: str, champion: ActiveModel, inputs: Inputs, proba: bool
    ) -> Answer:
        start = time.perf_counter()
        outputs = await _call(champion, inputs, proba)
        seconds = time.perf_counter() - start
        self._logged(request_id, champion.loaded, inputs, outputs, seconds, CHAMPION_ROLE)
        self._metrics.live_outcome(CHAMPION_ROLE, "ok", seconds)
        if self.options.mode == "canary":
            self.judge.record(CHAMPION_ROLE, error=False, seconds=seconds)
        return Answer(champion.loaded, outputs, CHAMPION_ROLE)

    async def _attempt(self, active: ActiveModel, inputs: Inputs, proba: bool) -> _Outcome:
        """``active``'s prediction, or why it has none; never raises (but cancellation)."""
        start = time.perf_counter()
        try:
            # asyncio.timeout, not wait_for: no extra task per prediction.
            async with asyncio.timeout(self.options.timeout_seconds):
                outputs = await _call(active, inputs, proba)
        except TimeoutError:
            seconds = time.perf_counter() - start
            error = f"timeout: no answer within {self.options.timeout_seconds:g}s"
            return _Outcome(None, seconds, error, timed_out=True)
        except Exception as exc:
            return _Outcome(None, time.perf_counter() - start, _describe(exc))
        return _Outcome(outputs, time.perf_counter() - start, None)

    def _record(
        self,
        request_id: str,
        loaded: LoadedModel,
        inputs: Inputs,
        outcome: _Outcome,
        role: str,
        served: bool,
    ) -> None:
        """Log and count one version's outcome on a request."""
        if outcome.error is None:
            self._logged(request_id, loaded, inputs, outcome.outputs, outcome.seconds, role, served)
            self._metrics.live_outcome(role, "ok", outcome.seconds)
            return
        if self._log is not None:
            self._log.log_predictions(
                request_id,
                loaded,
                inputs,
                None,
                role=role,
                served=False,
                latency_ms=outcome.seconds * 1000,
                error=outcome.error,
            )
        self._metrics.live_outcome(role, "timeout" if outcome.timed_out else "error", None)
        logger.debug("%s version %s failed on %s: %s", role, loaded.version, request_id, outcome)

    def _logged(
        self,
        request_id: str,
        loaded: LoadedModel,
        inputs: Inputs,
        outputs: Outputs,
        seconds: float,
        role: str,
        served: bool = True,
    ) -> None:
        if self._log is not None:
            self._log.log_predictions(
                request_id,
                loaded,
                inputs,
                outputs,
                role=role,
                served=served,
                latency_ms=seconds * 1000,
            )

    # --- shadow -------------------------------------------------------------------------

    def _shadow(
        self,
        request_id: str,
        active: ActiveModel,
        inputs: Inputs,
        proba: bool,
        answered: Outputs,
        role: str,
    ) -> None:
        """Queue ``inputs`` for ``active`` off the request path; ``answered`` is the served
        answer it is compared with."""
        if len(self._shadow_queue) + self._shadow_busy >= self.options.shadow_max_in_flight:
            self.shadow_dropped += 1
            self._metrics.shadow_dropped.inc()
            return
        self._shadow_queue.append(_ShadowJob(request_id, active, inputs, proba, answered, role))
        self._shadow_rows += len(inputs)
        if self._shadow_worker is None:
            self._shadow_wakeup, self._shadow_full = asyncio.Event(), asyncio.Event()
            self._shadow_worker = asyncio.get_running_loop().create_task(
                self._drain_shadows(), name="shadow-worker"
            )
        assert self._shadow_wakeup is not None and self._shadow_full is not None
        self._shadow_wakeup.set()
        if self._shadow_rows >= SHADOW_BATCH_ROWS:
            self._shadow_full.set()

    async def _drain_shadows(self) -> None:
        """The shadow worker: everything queued goes to its version in one call per group."""
        wakeup, full = self._shadow_wakeup, self._shadow_full
        assert wakeup is not None and full is not None
        while True:
            if not self._shadow_queue:
                wakeup.clear()
                await wakeup.wait()
            # Nobody waits for a shadow answer: let requests gather so that one model call
            # (and its fixed cost) serves many of them.
            if self._shadow_rows < SHADOW_BATCH_ROWS:
                full.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(SHADOW_GATHER_SECONDS):
                        await full.wait()
            jobs = list(self._shadow_queue)
            self._shadow_queue.clear()
            self._shadow_rows = 0
            self._shadow_busy = len(jobs)
            try:
                for group in _groups(jobs):
                    await self._shadowed(group)
            except Exception:  # a bug: a shadow must never take anything down
                logger.exception("Shadow predictions of %d requests failed", len(jobs))
            finally:
                self._shadow_busy = 0

    async def _shadowed(self, jobs: list[_ShadowJob]) -> None:
        """Predict a group of queued requests (same version, records) in one call; a group
        whose merged call fails is predicted request by request, so only a culprit fails."""
        first = jobs[0]
        if len(jobs) > 1:
            merged: list[Record] = [r for job in jobs for r in job.inputs]
            outcome = await self._attempt(first.active, merged, first.proba)
            if outcome.error is None:
                self._shadows_done(jobs, outcome)
                return
        for job in jobs:
            self._shadow_done(job, await self._attempt(job.active, job.inputs, job.proba))

    def _shadows_done(self, jobs: list[_ShadowJob], outcome: _Outcome) -> None:
        """Log each request's slice of one merged call's answer; count them once (one call,
        one latency) and their agreement with the served answers once."""
        start = compared = agreed = 0
        for job in jobs:
            rows = len(job.inputs)
            part = outcome.outputs[start : start + rows]
            start += rows
            self._logged(
                job.request_id,
                job.active.loaded,
                job.inputs,
                part,
                outcome.seconds,
                job.role,
                served=False,
            )
            pair = agreement(job.active.loaded.task, job.answered, part)
            compared, agreed = compared + pair[0], agreed + pair[1]
        self._metrics.live_outcome(jobs[0].role, "ok", outcome.seconds, requests=len(jobs))
        self._metrics.agreement(compared, agreed)

    def _shadow_done(self, job: _ShadowJob, outcome: _Outcome) -> None:
        self._record(job.request_id, job.active.loaded, job.inputs, outcome, job.role, False)
        if outcome.error is None:
            compared, agreed = agreement(job.active.loaded.task, job.answered, outcome.outputs)
            self._metrics.agreement(compared, agreed)


def _groups(jobs: list[_ShadowJob]) -> list[list[_ShadowJob]]:
    """Jobs in arrival order, grouped so that one call can answer each group: record requests
    for the same loaded version and ``proba`` together; every frame (bulk) request alone."""
    groups: dict[tuple[int, bool], list[_ShadowJob]] = {}
    alone: list[list[_ShadowJob]] = []
    for job in jobs:
        if isinstance(job.inputs, pd.DataFrame):
            alone.append([job])
        else:
            groups.setdefault((id(job.active), job.proba), []).append(job)
    return [*groups.values(), *alone]


async def _call(active: ActiveModel, inputs: Inputs, proba: bool) -> Outputs:
    if isinstance(inputs, pd.DataFrame):
        return await active.predict_frame(inputs, proba=proba)
    return await active.predict(inputs)


def _describe(exc: BaseException) -> str:
    """Why a version failed, short: the error and its cause (the model's own exception)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text[:_ERROR_CHARS]


def agreement(task: str, first: Outputs, second: Outputs) -> tuple[int, int]:
    """Rows both answered, and how many of them alike: the same label, or values within 1%
    of each other for a regressor."""
    a, b = _answers(task, first), _answers(task, second)
    if len(a) != len(b) or not len(a):
        return 0, 0
    if task == "regression":
        x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        scale = np.maximum(np.abs(x), np.abs(y))
        close = np.abs(x - y) <= _REGRESSION_AGREEMENT * scale
        return len(a), int(np.count_nonzero(close))
    return len(a), sum(str(p) == str(q) for p, q in zip(a, b, strict=True))


def _answers(task: str, outputs: Outputs) -> Sequence[Any]:
    if isinstance(outputs, FramePredictions):
        return list(outputs.outputs.tolist())
    key = "value" if task == "regression" else "label"
    return [row[key] for row in outputs]
