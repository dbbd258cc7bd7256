"""The challenger: the version in Staging (alias ``challenger``), loaded beside the champion.

It is loaded, warmed and checked exactly like the champion (the same :class:`ModelHolder`
machinery) and refreshed on the champion's poll, right after it. What differs:

- no version in Staging any more (promoted, archived) drops it: nothing is served instead;
- a version whose inputs or task differ from the champion's is not swapped in (the champion's
  request models validate every request, so it could not answer them); ``/model`` says why,
  and it is not downloaded again until the challenger or the champion changes;
- its faults are its own state: the champion keeps serving and stays ready;
- a rollback (:meth:`ChallengerHolder.roll_back`, decided by the canary judge) drops it and
  records ``contracts.CANARY_ROLLBACK_TAG`` on its version, off the event loop, retried on the
  poll while the registry cannot take it. A version already carrying the tag (set by another
  worker, or before a restart) is not loaded; a new version in Staging starts afresh.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Literal

from pipeline.contracts import CANARY_ROLLBACK_TAG, CHALLENGER_STAGE
from serving.errors import NoVersionInStageError, ServingError
from serving.model.inference import RequestModels
from serving.model.ref import ModelRef
from serving.model.state import ActiveModel, BatchingOptions, ModelHolder
from serving.model.store import LoadedModel, resolve_version, set_rollback_tag

logger = logging.getLogger(__name__)

ChallengerState = Literal[
    "none", "waiting", "loading", "active", "refused", "failed", "rolled_back"
]


@dataclass(frozen=True)
class Refusal:
    """A challenger version that cannot stand beside this champion version, and why."""

    version: str
    champion_version: str
    reason: str


@dataclass(frozen=True)
class Rollback:
    """The challenger version no request goes to any more, why, and whether the registry
    knows (the tag is written)."""

    version: str
    reason: str
    at: float
    recorded: bool = False

    @property
    def tag_value(self) -> str:
        when = datetime.fromtimestamp(self.at, tz=UTC).isoformat(timespec="seconds")
        return f"rolled back at {when}: {self.reason}"


def challenger_ref(champion: ModelRef) -> ModelRef:
    """Where the challenger of a champion reference lives: the same model, in Staging."""
    return ModelRef(name=champion.name, kind="stage", value=CHALLENGER_STAGE)


def incompatibility(challenger: LoadedModel, champion: LoadedModel) -> str | None:
    """Why ``challenger`` cannot answer the champion's requests, in words; None if it can."""
    if challenger.task != champion.task:
        return (
            f"challenger version {challenger.version} is a {challenger.task} model and "
            f"champion version {champion.version} a {champion.task} one"
        )
    if challenger.columns != champion.columns:
        ours = ", ".join(f"{c.name} ({c.type})" for c in challenger.columns)
        theirs = ", ".join(f"{c.name} ({c.type})" for c in champion.columns)
        return (
            f"the input columns of challenger version {challenger.version} [{ours}] differ "
            f"from champion version {champion.version}'s [{theirs}]"
        )
    if challenger.has_proba != champion.has_proba:
        return (
            f"challenger version {challenger.version} "
            f"{'has' if challenger.has_proba else 'lacks'} class probabilities and champion "
            f"version {champion.version} {'has' if champion.has_proba else 'lacks'} them"
        )
    return None


class ChallengerHolder(ModelHolder):
    """Holds the challenger (or why there is none); see the module docstring."""

    def __init__(
        self,
        champion: ModelHolder,
        *,
        batching: BatchingOptions | None = None,
    ) -> None:
        super().__init__(
            challenger_ref(champion.ref),
            champion.tracking_uri,
            champion.poll_seconds,
            batching=batching,
        )
        self.champion = champion
        self.reason = f"Looking for a version of '{champion.ref.name}' in {CHALLENGER_STAGE}."
        self.refusal: Refusal | None = None
        self.rollback: Rollback | None = None
        self.version: str | None = None
        """The version in Staging at the last poll (loaded or not); None when there is none."""
        self._recording: asyncio.Task[None] | None = None
        self._record_error: str | None = None

    @property
    def state(self) -> ChallengerState:
        if self.rollback is not None:
            return "rolled_back"
        if self.active is not None:
            return "active"
        if self.version is None:
            return "none"
        if self.refusal is not None:
            return "refused"
        if self.champion.active is None:
            return "waiting"
        return "failed" if self.last_reload_error is not None else "loading"

    async def refresh(self) -> bool:
        try:
            resolved = await self._ask_registry(resolve_version, self.ref, self.tracking_uri)
        except NoVersionInStageError:
            self._gone()
            return False
        except ServingError as exc:
            self._failed(None, exc)
            return False
        if resolved.version != self.version:
            self._new_version(resolved.version)
        if self.rollback is None and resolved.rollback is not None:
            # Rolled back by another worker or before a restart: never routed to again.
            self._roll_back(
                Rollback(resolved.version, resolved.rollback, time.time(), recorded=True)
            )
        rollback = self.rollback
        if rollback is not None:
            if not rollback.recorded:
                await self._record(rollback, on_poll=True)
            return False
        champion = self.champion.active
        if champion is None:
            self.reason = "Waiting for the champion to load before loading the challenger."
            return False
        if self.active is not None:
            self._check_beside(champion.loaded)
            return False
        refusal = self.refusal
        if refusal is not None and refusal.champion_version == champion.loaded.version:
            return False  # refused against this champion already: not downloaded again
        return await self._load(resolved.version)

    def _check_beside(self, champion: LoadedModel) -> None:
        """The loaded challenger still fits the champion (which may have changed under it)."""
        assert self.active is not None
        why = incompatibility(self.active.loaded, champion)
        if why is None:
            self._cleared()
            return
        self._refuse(self.active.loaded.version, champion.version, why)
        self._drop()

    def _swap(self, loaded: LoadedModel, requests: RequestModels) -> None:
        champion = self.champion.active
        why = None if champion is None else incompatibility(loaded, champion.loaded)
        if champion is None or why is not None:
            if champion is not None and why is not None:
                self._refuse(loaded.version, champion.loaded.version, why)
            return
        self.refusal = None
        super()._swap(loaded, requests)

    def _failed(
        self, version: str | None, error: ServingError, *, cause: BaseException | None = None
    ) -> None:
        super()._failed(version, error, cause=cause)
        if self.active is None:
            self.reason = f"The challenger is not loaded: {error.message}"

    def roll_back(self, reason: str) -> None:
        """Stop sending requests to the challenger now (canary and shadow), and record it on
        the registry in the background. Called on the event loop by the canary judge."""
        active = self.active
        if active is None or self.rollback is not None:
            return
        rollback = Rollback(active.loaded.version, reason, time.time())
        self._roll_back(rollback)
        self._recording = asyncio.get_running_loop().create_task(
            self._record(rollback, on_poll=False), name="challenger-rollback-tag"
        )

    def _roll_back(self, rollback: Rollback) -> None:
        self.rollback = rollback
        self.reason = f"Challenger version {rollback.version} was rolled back: {rollback.reason}"
        self._drop()
        logger.warning(
            "Rolled back challenger '%s' version %s (no request goes to it any more): %s",
            self.ref.name,
            rollback.version,
            rollback.reason,
        )

    async def _record(self, rollback: Rollback, *, on_poll: bool) -> None:
        """Set the rollback tag on the registry; a failure is retried at the next poll."""
        args = (self.tracking_uri, self.ref.name, rollback.version, rollback.tag_value)
        try:
            if on_poll:
                await self._ask_registry(set_rollback_tag, *args)
            else:
                await asyncio.to_thread(set_rollback_tag, *args)
        except Exception as exc:
            # Logged when the failure starts or changes, not at every poll that retries it.
            if self.rollback is rollback and str(exc) != self._record_error:
                self._record_error = str(exc)
                logger.warning(
                    "Could not set %s on '%s' version %s (retried at every poll): %s",
                    CANARY_ROLLBACK_TAG,
                    self.ref.name,
                    rollback.version,
                    exc,
                )
            return
        self._record_error = None
        if self.rollback is rollback:
            self.rollback = replace(rollback, recorded=True)
            logger.info(
                "Recorded the rollback of '%s' version %s on the registry (%s)",
                self.ref.name,
                rollback.version,
                CANARY_ROLLBACK_TAG,
            )

    def _new_version(self, version: str) -> None:
        """Another version is in Staging: whatever was decided about the last one is over."""
        if self.version is not None:
            logger.info(
                "A new challenger for '%s': version %s (was %s)",
                self.ref.name,
                version,
                self.version,
            )
        self.version = version
        self.rollback = None
        self.refusal = None

    def _gone(self) -> None:
        """No version in Staging any more: drop the challenger, forget its state."""
        self.last_reload_error = None
        if self.version is None:
            return
        logger.info(
            "No challenger for '%s' any more (version %s left %s)",
            self.ref.name,
            self.version,
            CHALLENGER_STAGE,
        )
        self.version = None
        self.rollback = None
        self.refusal = None
        self.reason = f"No version of '{self.ref.name}' is in {CHALLENGER_STAGE}."
        self._drop()

    def _refuse(self, version: str, champion_version: str, why: str) -> None:
        self.refusal = Refusal(version, champion_version, why)
        self.reason = f"The challenger is not loaded: {why}. Register one with the same inputs."
        logger.warning("Not loading challenger '%s' version %s: %s", self.ref.name, version, why)

    def _drop(self) -> None:
        """No request goes to the challenger any more; its queued ones are still answered."""
        active: ActiveModel | None = self.active
        if active is None:
            return
        self.active = None
        self._drain(active.batcher)
