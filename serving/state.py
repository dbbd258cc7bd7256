"""Which model answers right now: loading it, retrying, and swapping in a newer version.

Plain asyncio, no HTTP. Blocking MLflow calls run in worker threads; the current model is
only replaced on the event loop, in one assignment, so a request sees one whole model.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from serving.errors import ServingError
from serving.inference import RequestModels, build_request_models
from serving.model_ref import ModelRef
from serving.model_store import LoadedModel, load_model, resolve_version

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveModel:
    """A loaded model together with the request models generated from its signature."""

    loaded: LoadedModel
    requests: RequestModels


def activate(loaded: LoadedModel) -> ActiveModel:
    """Prepare a loaded model for serving."""
    return ActiveModel(loaded=loaded, requests=build_request_models(loaded.columns))


class ModelHolder:
    """Holds the active model (or why there is none) and keeps it up to date."""

    def __init__(
        self,
        ref: ModelRef,
        tracking_uri: str,
        poll_seconds: float,
        on_change: Callable[[ActiveModel], None] | None = None,
    ) -> None:
        self.ref = ref
        self.tracking_uri = tracking_uri
        self.poll_seconds = poll_seconds
        self.active: ActiveModel | None = None
        self.reason: str = f"The model {ref} is still loading: retry in a few seconds."
        self.first_attempt = asyncio.Event()
        self._on_change = on_change

    async def watch(self) -> None:
        """Load the model now, then every ``poll_seconds``: retry while none is loaded and
        swap in the version the reference points at when it changes (stage or alias)."""
        while True:
            try:
                await self.refresh()
            except Exception:
                logger.exception("Unexpected error while refreshing model %s", self.ref)
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

        Returns True when a model was (re)loaded.
        """
        current = self.active
        if current is not None:
            if self.ref.kind == "version":
                return False
            try:
                resolved = await asyncio.to_thread(resolve_version, self.ref, self.tracking_uri)
            except ServingError as exc:
                logger.warning("Keeping model version %s: %s", current.loaded.version, exc)
                return False
            if resolved.version == current.loaded.version:
                return False
            logger.info(
                "%s now points at version %s (serving %s): loading it",
                self.ref,
                resolved.version,
                current.loaded.version,
            )
        try:
            loaded = await asyncio.to_thread(load_model, self.ref, self.tracking_uri)
            active = await asyncio.to_thread(activate, loaded)
        except ServingError as exc:
            if current is None:
                self.reason = f"No model is loaded yet. {exc.message}"
                logger.warning(
                    "Model %s not loaded (retrying every %.1fs): %s",
                    self.ref,
                    self.poll_seconds,
                    exc,
                )
            else:
                logger.warning("Keeping model version %s: %s", current.loaded.version, exc)
            return False
        self.active = active
        logger.info(
            "Serving model '%s' version %s (%s)", loaded.name, loaded.version, loaded.reference
        )
        if self._on_change is not None:
            self._on_change(active)
        return True
