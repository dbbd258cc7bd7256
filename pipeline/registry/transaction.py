"""A change of Production as one crash-safe transaction, and the reconcile that finishes it.

MLflow gives us separate writes (stage, alias, history tag, version tags) and no transaction
over them, so a process killed between two of them leaves the registry half changed. The
change is therefore recorded first, as an *intent* (the registered-model tag `txn.intent`,
written under the Production lock), then carried out in a fixed order, outcome last:

    intent -> stage (others archived) -> champion alias -> history event (with the txn id)
           -> outcome tags on the version (promoted.at/by, the gate's tags, gate.decision last)
           -> intent deleted -> lock released

`reconcile` runs under the lock at the start of every command that changes Production (and is
what `python -m pipeline doctor --repair` calls). It compares what is recorded with what is
observed and repairs the difference, whoever crashed where:

- an intent left behind is rolled forward (each step is idempotent; the history event is
  recognised by its txn id), or dropped when Production moved elsewhere since it was written;
- with no intent, the stage is the truth: one version in Production (extra ones archived),
  the champion alias on it, the history's last event pointing to it (a `repair` event is
  appended otherwise), and no `gate.decision=promoted` on a version that never held it.
"""

from __future__ import annotations

import json
import logging
import uuid
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import artifacts
from pipeline.errors import RegistryError
from pipeline.failpoints import failpoint
from pipeline.registry import production
from pipeline.tracking import STATUS_TAG, current_actor

logger = logging.getLogger(__name__)

INTENT_TAG = "txn.intent"
REPAIR_ACTION = "repair"
# Left on a version whose `gate.decision=promoted` an older pipeline wrote before a stage move
# that never happened: the tag is removed (the next gate judges the version again).
GATE_INTERRUPTED_TAG = "gate.interrupted"
ARCHIVED = "Archived"


@dataclass(frozen=True)
class Intent:
    """What a change of Production is about to do, recorded before any of it is done."""

    id: str
    action: str
    to_version: str
    from_version: str | None
    reason: str
    actor: str
    time: str
    # Version tags written last, on `to_version`, in this order (the gate's decision last).
    outcome_tags: dict[str, str] = field(default_factory=dict)

    def event(self) -> production.PromotionEvent:
        return production.PromotionEvent(
            time=self.time,
            actor=self.actor,
            action=self.action,
            from_version=self.from_version,
            to_version=self.to_version,
            reason=self.reason,
            txn=self.id,
        )

    @classmethod
    def parse(cls, name: str, text: str) -> Intent:
        try:
            return cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise RegistryError(
                f"the tag '{INTENT_TAG}' of registered model '{name}' is not a transaction "
                f"record this pipeline wrote ({exc}); delete that tag, then run "
                f"`python -m pipeline doctor --name {name} --repair`"
            ) from exc


@dataclass(frozen=True)
class RegistryState:
    """What the registry shows for one model, read without the lock."""

    name: str
    production_versions: tuple[str, ...]
    alias: str | None
    last_event: production.PromotionEvent | None
    history_targets: frozenset[str]
    false_promoted: tuple[str, ...]
    intent: Intent | None
    lock: dict[str, str] | None

    def problems(self) -> list[str]:
        """What reconcile would repair, in words; empty when the registry is consistent."""
        found = []
        if self.intent is not None:
            found.append(
                f"an interrupted {self.intent.action} of version {self.intent.to_version} "
                f"(transaction {self.intent.id}, {self.intent.time} by {self.intent.actor}) "
                "is still recorded"
            )
        found.extend(self._stage_problems())
        found.extend(
            f"version {v} is tagged gate.decision=promoted but never held Production"
            for v in self.false_promoted
        )
        if self.lock is not None and production.holder_is_dead(self.lock):
            found.append(
                f"the Production lock is held by a process that no longer runs "
                f"({production.describe_holder(self.lock)})"
            )
        return found

    def _stage_problems(self) -> list[str]:
        if len(self.production_versions) > 1:
            versions = ", ".join(self.production_versions)
            return [f"{len(self.production_versions)} versions are in Production: {versions}"]
        if not self.production_versions:
            return (
                []
                if self.alias is None
                else [f"champion is on version {self.alias} but no version is in Production"]
            )
        (current,) = self.production_versions
        found = []
        if self.alias != current:
            found.append(f"Production is version {current} but champion is on {self.alias}")
        last = self.last_event.to_version if self.last_event else None
        if last != current:
            found.append(f"Production is version {current} but the history's last event is {last}")
        return found


def observe(client: MlflowClient, name: str) -> RegistryState:
    """Read what reconcile compares: stages, alias, history, gate tags, intent and lock."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        raise RegistryError(f"registered model '{name}' does not exist") from exc
    versions = _versions(client, name)
    events = production.history(client, name)
    targets = frozenset(event.to_version for event in events)
    in_production = tuple(
        sorted((v for v, mv in versions.items() if _stage(mv) == "Production"), key=int)
    )
    intent_text = model.tags.get(INTENT_TAG)
    aliases = model.aliases or {}
    champion = aliases.get(production.CHAMPION_ALIAS)
    return RegistryState(
        name=name,
        production_versions=in_production,
        alias=None if champion is None else str(champion),
        last_event=events[0] if events else None,
        history_targets=targets,
        false_promoted=tuple(
            v
            for v, mv in sorted(versions.items(), key=lambda item: int(item[0]))
            if mv.tags.get(artifacts.GATE_DECISION) == "promoted"
            and v not in targets
            and v not in in_production
        ),
        intent=Intent.parse(name, intent_text) if intent_text else None,
        lock=production.lock_holder(client, name),
    )


def change_production(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    action: str,
    reason: str,
    outcome_tags: dict[str, str] | None = None,
) -> production.PromotionEvent:
    """Put `version` in Production as one transaction that any later command can finish."""
    with production.production_lock(client, name):
        reconcile(client, name)
        previous = production.production_version(client, name)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        actor = current_actor()
        intent = Intent(
            id=uuid.uuid4().hex,
            action=action,
            to_version=str(version),
            from_version=str(previous.version) if previous else None,
            reason=reason,
            actor=actor,
            time=now,
            outcome_tags={"promoted.at": now, "promoted.by": actor, **(outcome_tags or {})},
        )
        client.set_registered_model_tag(name, INTENT_TAG, json.dumps(asdict(intent)))
        failpoint("registry.after_intent")
        _carry_out(client, name, intent)
        failpoint("registry.before_unlock")
    logger.info(
        "%s: version %s of '%s' is now Production (was %s): %s",
        action,
        version,
        name,
        intent.from_version or "none",
        reason,
    )
    return intent.event()


def reconcile(client: MlflowClient, name: str) -> list[str]:
    """Repair what a crash left of a change of Production; call it under the lock.

    Returns the repairs made, in words (empty when there was nothing to do). Idempotent.
    """
    if not _model_exists(client, name):
        return []  # nothing registered yet: nothing to repair
    state = observe(client, name)
    repairs = []
    if state.intent is not None:
        repairs.append(_settle(client, name, state))
        state = observe(client, name)
    repairs.extend(_enforce_stage(client, name, state))
    repairs.extend(_untag_false_promotions(client, name, state))
    for repair in repairs:
        logger.warning("Repaired '%s': %s", name, repair)
    return repairs


def ensure_consistent(client: MlflowClient, name: str) -> list[str]:
    """Reconcile `name` when it needs it; takes the lock only then. Returns the repairs made."""
    if not _model_exists(client, name) or not observe(client, name).problems():
        return []
    with production.production_lock(client, name):
        return reconcile(client, name)


def _settle(client: MlflowClient, name: str, state: RegistryState) -> str:
    """Roll the recorded intent forward, or drop it when the registry moved on without it."""
    intent = state.intent
    assert intent is not None
    expected = {intent.from_version, intent.to_version} - {None}
    current = set(state.production_versions)
    target_exists = _version_exists(client, name, intent.to_version)
    if target_exists and (current <= expected):
        _carry_out(client, name, intent)
        return (
            f"finished the interrupted {intent.action} of version {intent.to_version} "
            f"(transaction {intent.id}, started {intent.time} by {intent.actor})"
        )
    client.delete_registered_model_tag(name, INTENT_TAG)
    seen = ", ".join(state.production_versions) or "none"
    return (
        f"dropped the interrupted {intent.action} of version {intent.to_version} "
        f"(transaction {intent.id}): Production is {seen}, not the {intent.from_version} it "
        "was decided against"
    )


def _carry_out(client: MlflowClient, name: str, intent: Intent) -> None:
    """Every write of the change after the intent; each one may already have been done."""
    current = production.production_version(client, name)
    if current is None or str(current.version) != intent.to_version:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(
                name, intent.to_version, production.PRODUCTION, archive_existing_versions=True
            )
    failpoint("registry.after_stage")
    client.set_registered_model_alias(name, production.CHAMPION_ALIAS, intent.to_version)
    failpoint("registry.after_alias")
    if not any(event.txn == intent.id for event in production.history(client, name)):
        production.append_history(client, name, intent.event())
    failpoint("registry.after_history")
    for key, value in intent.outcome_tags.items():
        client.set_model_version_tag(name, intent.to_version, key, value)
    _show_on_runs(client, name, intent)
    failpoint("registry.after_outcome")
    client.delete_registered_model_tag(name, INTENT_TAG)


def _show_on_runs(client: MlflowClient, name: str, intent: Intent) -> None:
    """Mirror the change in the runs table: the status tag moves to the new Production run.

    Only a mirror for people comparing runs in the MLflow UI (the stage stays the truth), so
    a run that cannot be tagged (deleted, say) is logged and skipped, never an error.
    """
    new = client.get_model_version(name, intent.to_version).run_id
    old = None
    if intent.from_version and _version_exists(client, name, intent.from_version):
        old = client.get_model_version(name, intent.from_version).run_id
    try:
        if old and old != new and STATUS_TAG in client.get_run(old).data.tags:
            client.delete_tag(old, STATUS_TAG)
        if new:
            client.set_tag(new, STATUS_TAG, f"Production: {name} v{intent.to_version}")
    except MlflowException as exc:
        logger.warning("Could not mark the Production run of '%s' in the runs table: %s", name, exc)


def _enforce_stage(client: MlflowClient, name: str, state: RegistryState) -> list[str]:
    repairs = []
    keep = _keeper(state)
    for extra in (v for v in state.production_versions if v != keep):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            client.transition_model_version_stage(name, extra, ARCHIVED)
        repairs.append(f"archived version {extra}, a second version in Production")
    if keep is None:
        if state.alias is not None:
            client.delete_registered_model_alias(name, production.CHAMPION_ALIAS)
            repairs.append(
                f"removed champion from version {state.alias}: no version is in Production"
            )
        return repairs
    if state.alias != keep:
        client.set_registered_model_alias(name, production.CHAMPION_ALIAS, keep)
        repairs.append(f"moved champion from version {state.alias} to {keep}, the Production one")
    last = state.last_event.to_version if state.last_event else None
    if last != keep:
        production.append_history(client, name, _repair_event(last, keep))
        repairs.append(f"recorded a repair event {last or 'none'} -> {keep} in the history")
    return repairs


def _keeper(state: RegistryState) -> str | None:
    """The one version to keep in Production: the champion's if it is one, else the newest."""
    if state.alias in state.production_versions:
        return state.alias
    return state.production_versions[-1] if state.production_versions else None


def _repair_event(last: str | None, current: str) -> production.PromotionEvent:
    return production.PromotionEvent(
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        actor=current_actor(),
        action=REPAIR_ACTION,
        from_version=last,
        to_version=current,
        reason=(
            f"Production was found on version {current} while the history ended at "
            f"{last or 'nothing'} (changed outside this pipeline, or by an older one that "
            "crashed); recorded by repair"
        ),
    )


def _untag_false_promotions(client: MlflowClient, name: str, state: RegistryState) -> list[str]:
    repairs = []
    now = datetime.now(UTC).isoformat(timespec="seconds")
    for version in state.false_promoted:
        client.set_model_version_tag(
            name,
            version,
            GATE_INTERRUPTED_TAG,
            f"gate.decision=promoted removed at {now}: the version never reached Production",
        )
        client.delete_model_version_tag(name, version, artifacts.GATE_DECISION)
        repairs.append(
            f"removed gate.decision=promoted from version {version}, which never held "
            "Production (the next gate judges it again)"
        )
    return repairs


def _versions(client: MlflowClient, name: str) -> dict[str, ModelVersion]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        found = client.search_model_versions(f"name = '{_quoted(name)}'")
    return {str(v.version): v for v in found}


def _stage(version: ModelVersion) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return str(version.current_stage)


def _model_exists(client: MlflowClient, name: str) -> bool:
    try:
        client.get_registered_model(name)
    except MlflowException:
        return False
    return True


def _version_exists(client: MlflowClient, name: str, version: str) -> bool:
    try:
        client.get_model_version(name, version)
    except MlflowException:
        return False
    return True


def _quoted(name: str) -> str:
    return name.replace("'", "\\'")
