"""Which model answers right now: loading it, warming it, and hot-swapping a newer version.

Plain asyncio, no HTTP. Blocking MLflow and model calls run in worker threads; the current
model is only replaced on the event loop, in one assignment, so a request sees one whole
model: the one (and the batcher) it started with, even if a swap happens meanwhile.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from serving.errors import ModelLoadError, ServingError
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
from serving.model.store import LoadedModel, load_model, resolve_version

logger = logging.getLogger(__name__)


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
    """Why the last attempt to load a (new) version failed."""

    version: str | None
    """The version that failed to load, or None when the registry could not be asked."""
    message: str
    at: float
    """Unix time of the failure."""


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
        while True:
            try:
                await self.refresh()
            except Exception as exc:
                logger.exception("Unexpected error while refreshing model %s", self.ref)
                self._failed(None, f"Refreshing {self.ref} failed unexpectedly: {exc}")
                if self.active is None:
                    self.reason = (
                        f"No model is loaded yet: loading {self.ref} failed unexpectedly. "
                        "The server log has the details; the server keeps retrying."
                    )
            finally:
                self.first_attempt.set()
            await asyncio.sleep(self.poll_seconds)

    async def refresh(self) -> bool:
        """Load the referenced model if none is loaded or a newer one is designated.

        Returns True when a model was (re)loaded and swapped in.
        """
        current = self.active
        target: str | None = None
        if current is not None:
            if self.ref.kind == "version":
                return False
            try:
                resolved = await asyncio.to_thread(resolve_version, self.ref, self.tracking_uri)
            except ServingError as exc:
                self._failed(None, exc.message)
                return False
            if resolved.version == current.loaded.version:
                self.last_reload_error = None
                return False
            target = resolved.version
            logger.info(
                "%s now points at version %s (serving %s): loading it",
                self.ref,
                resolved.version,
                current.loaded.version,
            )
        try:
            loaded = await asyncio.to_thread(load_model, self.ref, self.tracking_uri)
            requests = await asyncio.to_thread(prepare, loaded)
        except ServingError as exc:
            if current is None:
                self.reason = f"No model is loaded yet. {exc.message}"
            self._failed(target, exc.message)
            return False
        self._swap(loaded, requests)
        return True

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
        self.last_reload_error = None
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

    def _failed(self, version: str | None, message: str) -> None:
        self.last_reload_error = ReloadError(version=version, message=message, at=time.time())
        if self._metrics is not None:
            self._metrics.model_load_failed()
        if self.active is None:
            logger.warning(
                "Model %s not loaded (retrying every %.1fs): %s",
                self.ref,
                self.poll_seconds,
                message,
            )
        else:
            logger.warning(
                "Keeping model version %s (retrying every %.1fs): %s",
                self.active.loaded.version,
                self.poll_seconds,
                message,
            )
