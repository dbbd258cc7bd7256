"""Predicting a request with the champion and, beside it, the challenger. No HTTP.

Every prediction route calls :meth:`LiveTraffic.predict`; it returns the answer that goes
back to the client and which version gave it, and logs every version's answer to the
prediction log under the request's key (``request_id``, ``row``) with the live columns
(``contracts.LIVE_COLUMNS``: role, served, latency, error).

- **No challenger** (none in Staging, mode ``off``, refused, or rolled back): the champion
  answers, as before; the added cost is two clock reads.
- **Shadow**: the champion answers; once it has, the challenger predicts the same inputs in a
  background task (so it never delays the answer), at most ``shadow_max_in_flight`` requests
  at once (beyond that a request is not shadowed, and counted). Its answer or its failure
  (error, or no answer within ``timeout_seconds``) is logged with ``served`` false, counted,
  and compared with the champion's (the agreement rate); the client never sees it.
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
import logging
import time
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
        self._shadows: set[asyncio.Task[None]] = set()
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
        """Let the shadow predictions in flight finish (they are logged), then return."""
        if self._shadows:
            await asyncio.gather(*self._shadows, return_exceptions=True)

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
            outputs = await asyncio.wait_for(
                _call(active, inputs, proba), self.options.timeout_seconds
            )
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
        """Predict ``inputs`` with ``active`` in the background; ``answered`` is the served
        answer it is compared with."""
        if len(self._shadows) >= self.options.shadow_max_in_flight:
            self.shadow_dropped += 1
            self._metrics.shadow_dropped.inc()
            return
        task = asyncio.get_running_loop().create_task(
            self._shadowed(request_id, active, inputs, proba, answered, role)
        )
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    async def _shadowed(
        self,
        request_id: str,
        active: ActiveModel,
        inputs: Inputs,
        proba: bool,
        answered: Outputs,
        role: str,
    ) -> None:
        try:
            outcome = await self._attempt(active, inputs, proba)
            self._record(request_id, active.loaded, inputs, outcome, role, served=False)
            if outcome.error is None:
                compared, agreed = agreement(active.loaded.task, answered, outcome.outputs)
                self._metrics.agreement(compared, agreed)
        except Exception:  # a bug: a shadow must never take anything down
            logger.exception("Shadow prediction of %s on %s failed", role, request_id)


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
