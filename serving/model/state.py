"""Which model answers right now: loading it, warming it, and hot-swapping a newer version.

Plain asyncio, no HTTP. Blocking MLflow and model calls run in worker threads; the current
model is only replaced on the event loop, in one assignment, so a request sees one whole
model: the one (and the batcher) it started with, even if a swap happens meanwhile.

Faults are reported as a state, not as a stream of retries: the registry being unreachable
or the designated version failing to load becomes ``last_reload_error`` (with since when)
and the reload-failing gauge, logged once when it starts or changes and once when it clears.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd

from serving.errors import ModelLoadError, RegistryUnavailableError, ServingError
from serving.middleware.metrics import ServingMetrics
from serving.model.batcher import Batcher, Record
from serving.model.inference import (
    FramePredictions,
    PredictionRow,
    RequestModels,
    build_request_models,
    predict_frame,
    predict_rows,
    warm_up_records,
)
from serving.model.ref import ModelRef
from serving.model.store import (
    LoadedModel,
    bounded_mlflow_calls,
    load_model,
    resolve_version,
)

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

REGISTRY_DEADLINE_FLOOR_SECONDS = 5.0
"""Shortest wait for one registry answer. The wait is the poll interval, so that a hung
registry shows within two intervals, but never shorter than this: a busy SQLite store or
a loaded machine must not read as an outage when polling every fraction of a second."""


@dataclass(frozen=True)
class BatchingOptions:
    """How requests are merged into model calls (see :mod:`serving.model.batcher`)."""

    max_batch_size: int = 256
    max_wait_seconds: float = 0.002


@dataclass(frozen=True)
class ActiveModel:
    """A loaded model, the request models from its signature, and its batcher."""

    loaded: LoadedModel
    requests: RequestModels
    batcher: Batcher[PredictionRow]

    async def predict(self, records: list[Record]) -> list[PredictionRow]:
        """Predict validated records on this model, merged with other requests' records into
        shared model calls: the entry point for per-row answers, on every route."""
        return await self.batcher.submit(records)

    async def predict_frame(self, frame: pd.DataFrame, *, proba: bool) -> FramePredictions:
        """Predict a whole validated frame (a bulk request) in one model call, as arrays.

        It runs on the same thread as the batches, in its turn, so a bulk request never
        competes with them for the cores; ``proba`` asks for the class probabilities too.

        Raises:
            PredictionFailedError: the model failed on this frame (the cause is logged).
        """
        call = functools.partial(predict_frame, self.loaded, frame, proba=proba)
        return await self.batcher.run_alone(call, rows=len(frame))

    @property
    def bulk_rows(self) -> int:
        """Requests of at least this many rows are predicted as frames: they are too large
        to share a batch anyway, and smaller ones gain more from being merged."""
        return self.batcher.max_batch_size


@dataclass(frozen=True)
class ReloadError:
    """What is wrong right now: the registry cannot be asked, or the version it designates
    cannot be loaded. Cleared once the registry answers with the version that serves."""

    version: str | None
    """The version that failed to load, or None when the registry could not be asked."""
    error_type: str
    """The domain error's type, e.g. ``registry_unavailable`` or ``model_artifact_error``."""
    message: str
    since: float
    """Unix time this fault (same version, same type) was first seen."""
    at: float
    """Unix time of the latest failed attempt."""

    def is_same_fault(self, version: str | None, error_type: str) -> bool:
        # Not the message: it may carry details (elapsed seconds) that change every poll.
        return (self.version, self.error_type) == (version, error_type)


def prepare(loaded: LoadedModel) -> RequestModels:
    """Build the request models and warm the model up, before it may answer anyone.

    Warming predicts the logged input example (or a synthetic row from the signature),
    so the first real request does not pay for lazy initialisation.

    Raises:
        ModelLoadError: the model fails on its own logged input example.
    """
    requests = build_request_models(loaded.columns)
    records, logged = warm_up_records(loaded)
    label = f"model '{loaded.name}' version {loaded.version}"
    try:
        predict_rows(loaded, records)
    except Exception as exc:
        if logged:
            raise ModelLoadError(
                f"{label} fails to predict its own logged input example ({exc}); it was not "
                "swapped in. Re-log the model, or promote a working version."
            ) from exc
        logger.warning("Warm-up of %s on a synthetic row failed (ignored): %s", label, exc)
    return requests


def _freeze_long_lived_objects() -> None:
    """Move every object alive now (modules, settings, the model just swapped in) out of
    reach of the cyclic garbage collector (``gc.freeze``).

    A full collection walks every tracked object: about 250,000 once MLflow, scikit-learn
    and the model are loaded, 120 ms here, during which no request moves. Bulk requests
    allocate enough containers to trigger one every few requests (a 200+ ms stall in one
    10,000-row request out of ~10, and in the p99 of single-row load). Objects freed by
    reference counting (a replaced model, when its last request is done) are still freed.
    """
    gc.freeze()


class ModelHolder:
    """Holds the active model (or why there is none) and keeps it up to date."""

    def __init__(
        self,
        ref: ModelRef,
        tracking_uri: str,
        poll_seconds: float,
        on_change: Callable[[ActiveModel], None] | None = None,
        *,
        batching: BatchingOptions | None = None,
        metrics: ServingMetrics | None = None,
    ) -> None:
        self.ref = ref
        self.tracking_uri = tracking_uri
        self.poll_seconds = poll_seconds
        self.active: ActiveModel | None = None
        self.reason: str = f"The model {ref} is still loading: retry in a few seconds."
        self.last_reload_error: ReloadError | None = None
        self.first_attempt = asyncio.Event()
        self._on_change = on_change
        self._batching = batching or BatchingOptions()
        self._metrics = metrics
        self._draining: set[asyncio.Task[None]] = set()
        self._draining_batchers: set[Batcher[PredictionRow]] = set()
        self.registry_deadline = max(poll_seconds, REGISTRY_DEADLINE_FLOOR_SECONDS)
        self._asking: asyncio.Future[Any] | None = None
        self._asking_since = 0.0
        self._answered_once = False
        self.follower: ModelHolder | None = None
        """Refreshed on this holder's poll, right after it (the challenger's holder)."""
        if metrics is not None:
            metrics.watch_queue(lambda: self.queue_depth)

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch, on the active model and on any still draining."""
        depth = sum(b.queue_depth for b in self._draining_batchers)
        return depth + (self.active.batcher.queue_depth if self.active is not None else 0)

    async def watch(self) -> None:
        """Load the model now, then every ``poll_seconds``: retry while none is loaded and
        swap in the version the reference points at when it changes (stage or alias)."""
        with bounded_mlflow_calls(self.registry_deadline):
            while True:
                try:
                    await self.refresh_safely()
                    if self.follower is not None:
                        # The challenger, on the same poll, after the champion: it is judged
                        # against the champion just resolved.
                        await self.follower.refresh_safely()
                finally:
                    self.first_attempt.set()
                await asyncio.sleep(self.poll_seconds)

    async def refresh_safely(self) -> None:
        """:meth:`refresh`, with a failure no domain error describes reported as a fault."""
        try:
            await self.refresh()
        except Exception as exc:  # a bug or a failure no domain error describes yet
            error = ModelLoadError(f"Refreshing {self.ref} failed unexpectedly: {exc}")
            self._failed(None, error, cause=exc)

    async def refresh(self) -> bool:
        """Load the referenced model if none is loaded or a newer one is designated.

        Returns True when a model was (re)loaded and swapped in.
        """
        current = self.active
        if current is not None and self.ref.kind == "version":
            return False  # an explicit version never changes
        try:
            resolved = await self._ask_registry(resolve_version, self.ref, self.tracking_uri)
        except ServingError as exc:
            self._failed(None, exc)
            return False
        if current is not None and resolved.version == current.loaded.version:
            self._cleared()
            return False
        return await self._load(resolved.version)

    async def _load(self, version: str) -> bool:
        """Load, warm and swap in ``version``; a failure keeps what serves and is reported."""
        current = self.active
        error = self.last_reload_error
        retrying = error is not None and error.version == version
        logger.log(
            logging.DEBUG if retrying else logging.INFO,
            "%s now points at version %s (serving %s): loading it",
            self.ref,
            version,
            "none" if current is None else current.loaded.version,
        )
        try:
            loaded = await asyncio.to_thread(load_model, self.ref, self.tracking_uri)
            requests = await asyncio.to_thread(prepare, loaded)
        except ServingError as exc:
            self._failed(version, exc)
            return False
        except Exception as exc:  # a bug or a failure no domain error describes yet
            message = f"Loading version {version} of {self.ref} failed unexpectedly: {exc}"
            self._failed(version, ModelLoadError(message), cause=exc)
            return False
        self._swap(loaded, requests)
        return True

    async def _ask_registry(self, call: Callable[..., _T], *args: Any) -> _T:
        """Run a blocking registry call in a worker thread, waiting ``registry_deadline`` at
        most: a hung registry is reported as unreachable instead of stalling the poll loop.

        The first call of the process waits as long as it takes: it also imports and sets up
        MLflow's store (seconds on a busy machine), and with no model loaded yet the server
        says "loading" anyway. A call still running is not abandoned for a new one (threads
        would pile up while the registry hangs); until it returns, each poll reports the
        registry as unanswering.
        """
        asking = self._asking
        if asking is not None and not asking.done():
            waited = time.monotonic() - self._asking_since
            raise RegistryUnavailableError(
                f"The MLflow registry at {self.tracking_uri} has not answered for "
                f"{waited:.0f}s: it is unreachable or overloaded."
            )
        future = asyncio.ensure_future(asyncio.to_thread(call, *args))
        future.add_done_callback(_retrieve)
        self._asking, self._asking_since = future, time.monotonic()
        deadline = self.registry_deadline if self._answered_once else None
        done, _ = await asyncio.wait({future}, timeout=deadline)
        if not done:
            raise RegistryUnavailableError(
                f"The MLflow registry at {self.tracking_uri} did not answer within "
                f"{self.registry_deadline:g}s: it is unreachable or overloaded."
            )
        result = future.result()
        self._answered_once = True
        return result

    async def close(self) -> None:
        """Let every batcher finish what it has queued, then stop them."""
        if self.active is not None:
            self._drain(self.active.batcher)
        if self._draining:
            await asyncio.gather(*self._draining, return_exceptions=True)

    def _swap(self, loaded: LoadedModel, requests: RequestModels) -> None:
        batcher: Batcher[PredictionRow] = Batcher(
            functools.partial(predict_rows, loaded),
            max_batch_size=self._batching.max_batch_size,
            max_wait_seconds=self._batching.max_wait_seconds,
            name=f"{loaded.name}-v{loaded.version}",
            on_batch=self._metrics.batch_size.observe if self._metrics else None,
            on_fallback=self._metrics.batch_fallbacks.inc if self._metrics else None,
        )
        batcher.start()
        previous = self.active
        active = ActiveModel(loaded=loaded, requests=requests, batcher=batcher)
        self.active = active  # the swap: one assignment on the event loop
        self.last_reload_error = None  # the "Serving model" line below says it is over
        if previous is not None:
            self._drain(previous.batcher)
        if self._metrics is not None:
            self._metrics.model_loaded(loaded.name, loaded.version)
        logger.info(
            "Serving model '%s' version %s (%s)", loaded.name, loaded.version, loaded.reference
        )
        if self._on_change is not None:
            self._on_change(active)
        _freeze_long_lived_objects()

    def _drain(self, batcher: Batcher[PredictionRow]) -> None:
        """Stop ``batcher`` once its queued requests are answered, in the background."""
        self._draining_batchers.add(batcher)

        async def drain() -> None:
            try:
                await batcher.close()
            finally:
                self._draining_batchers.discard(batcher)

        task = asyncio.get_running_loop().create_task(drain(), name=f"drain-{batcher.name}")
        self._draining.add(task)
        task.add_done_callback(self._draining.discard)

    def _failed(
        self, version: str | None, error: ServingError, *, cause: BaseException | None = None
    ) -> None:
        """Record a failed poll or load; log it only when the fault is new or changed."""
        now = time.time()
        previous = self.last_reload_error
        changed = previous is None or not previous.is_same_fault(version, error.error_type)
        since = now if changed or previous is None else previous.since
        self.last_reload_error = ReloadError(
            version=version, error_type=error.error_type, message=error.message, since=since, at=now
        )
        if self.active is None:
            self.reason = f"No model is loaded yet. {error.message}"
        if self._metrics is not None:
            self._metrics.model_load_failed(error.error_type)
        if changed:
            self._log_fault(error.message, cause)

    def _log_fault(self, message: str, cause: BaseException | None) -> None:
        # A traceback only for a failure no domain error describes (``cause``), and only
        # this once: the next polls failing the same way are not logged.
        if self.active is None:
            logger.warning(
                "Model %s not loaded (retrying every %gs, logged again when this changes): %s",
                self.ref,
                self.poll_seconds,
                message,
                exc_info=cause,
            )
        else:
            logger.warning(
                "Keeping model version %s (retrying every %gs, logged again when this changes): %s",
                self.active.loaded.version,
                self.poll_seconds,
                message,
                exc_info=cause,
            )

    def _cleared(self) -> None:
        """The registry answers and designates the version serving: no fault any more."""
        previous = self.last_reload_error
        if previous is None:
            return
        self.last_reload_error = None
        if self._metrics is not None:
            self._metrics.fault_cleared()
        assert self.active is not None
        logger.info(
            "Recovered after %.0fs: %s resolves to version %s, which is serving (was: %s)",
            time.time() - previous.since,
            self.ref,
            self.active.loaded.version,
            previous.error_type,
        )


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark the outcome of a registry call as seen, even one given up on (no asyncio
    "exception was never retrieved" noise); its failure was reported by the poll."""
    if not future.cancelled():
        future.exception()
