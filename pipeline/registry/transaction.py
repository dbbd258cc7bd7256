"""A change of Production or Staging as one crash-safe transaction, and the reconcile that
finishes it.

The registry has two slots, each a stage and an alias that must move together: Production with
`champion` (the version that answers) and Staging with `challenger` (the version judged on live
traffic before it may answer; see docs/registry.md). MLflow gives us separate writes (stage,
alias, history tag, version tags) and no transaction over them, so a process killed between
two of them leaves the registry half changed. A change is therefore recorded first, as an
*intent* (the registered-model tag `txn.intent`, written under the model's lock, naming the
stage it moves a version to), then carried out in a fixed order, outcome last:

    intent -> stage (the slot's previous version archived) -> alias (promoting the challenger
           also takes `challenger` off it) -> history event (with the txn id and the stage)
           -> outcome tags on the version (promoted.at/by or staged.at/by, the gate's tags,
           gate.decision last) -> intent deleted -> lock released

Retiring a rejected challenger is the same kind of transaction with the target stage
`Archived`: Staging -> Archived, `challenger` removed, history event, outcome tags.

`reconcile` runs under the lock at the start of every command that changes either slot (and
is what `python -m pipeline doctor --repair` calls). It compares what is recorded with what is
observed and repairs the difference, whoever crashed where:

- an intent left behind is rolled forward (each step is idempotent; the history event is
  recognised by its txn id), or dropped when its slot moved elsewhere since it was written;
- with no intent, the stages are the truth: at most one version in Production (extra ones
  archived) with `champion` on it and the history's last Production event pointing to it; at
  most one version in Staging with `challenger` on it and the last Staging event pointing to
  it; no `challenger` without a Staging version, so never on the champion; and no
  `gate.decision=promoted` (`staged`) on a version that never held Production (Staging).
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
from pipeline.registry.production import ARCHIVED, PRODUCTION, STAGING
from pipeline.tracking import STATUS_TAG, current_actor

logger = logging.getLogger(__name__)

INTENT_TAG = "txn.intent"
REPAIR_ACTION = "repair"
# Left on a version whose `gate.decision=promoted` (or `staged`) was written before a stage
# move that never happened: the tag is removed (the next gate judges the version again).
GATE_INTERRUPTED_TAG = "gate.interrupted"
# The gate's decision values that claim a stage, and the stage each claims.
PROMOTED = "promoted"
STAGED = "staged"
_CLAIMS = {PROMOTED: PRODUCTION, STAGED: STAGING}


@dataclass(frozen=True)
class _Slot:
    """A stage and the alias that must follow it, and the words the messages use for it."""

    stage: str
    alias: str
    stamp: str
    """Prefix of the outcome tags that say when and by whom (`promoted.at`, `staged.by`)."""


_SLOTS = {
    PRODUCTION: _Slot(PRODUCTION, production.CHAMPION_ALIAS, "promoted"),
    STAGING: _Slot(STAGING, production.CHALLENGER_ALIAS, "staged"),
}


@dataclass(frozen=True)
class Intent:
    """What a change of Production or Staging is about to do, recorded before any of it."""

    id: str
    action: str
    to_version: str
    from_version: str | None
    reason: str
    actor: str
    time: str
    # Version tags written last, on `to_version`, in this order (the gate's decision last).
    outcome_tags: dict[str, str] = field(default_factory=dict)
    # Where `to_version` goes: Production, Staging, or Archived (a challenger retired). An
    # intent written before Staging existed lacks it, and moved Production.
    stage: str = PRODUCTION

    def event(self) -> production.PromotionEvent:
        return production.PromotionEvent(
            time=self.time,
            actor=self.actor,
            action=self.action,
            from_version=self.from_version,
            to_version=self.to_version,
            reason=self.reason,
            txn=self.id,
            stage=self.stage,
        )

    @classmethod
    def parse(cls, name: str, text: str) -> Intent:
        try:
            intent = cls(**json.loads(text))
        except (ValueError, TypeError) as exc:
            raise RegistryError(
                f"the tag '{INTENT_TAG}' of registered model '{name}' is not a transaction "
                f"record this pipeline wrote ({exc}); delete that tag, then run "
                f"`python -m pipeline doctor --name {name} --repair`"
            ) from exc
        if intent.stage not in (PRODUCTION, STAGING, ARCHIVED):
            raise RegistryError(
                f"the tag '{INTENT_TAG}' of registered model '{name}' moves version "
                f"{intent.to_version} to stage '{intent.stage}', which this pipeline never "
                f"writes; delete that tag, then run `python -m pipeline doctor --name {name} "
                "--repair`"
            )
        return intent


@dataclass(frozen=True)
class RegistryState:
    """What the registry shows for one model, read without the lock."""

    name: str
    production_versions: tuple[str, ...]
    alias: str | None
    """The version `champion` is on."""
    last_event: production.PromotionEvent | None
    """The newest Production event."""
    history_targets: frozenset[str]
    """Every version a Production event moved there."""
    false_promoted: tuple[str, ...]
    intent: Intent | None
    lock: dict[str, str] | None
    staging_versions: tuple[str, ...] = ()
    challenger: str | None = None
    """The version `challenger` is on."""
    last_staging_event: production.PromotionEvent | None = None
    """The newest event of the Staging slot: a version staged, or the challenger retired."""
    false_staged: tuple[str, ...] = ()

    def problems(self) -> list[str]:
        """What reconcile would repair, in words; empty when the registry is consistent."""
        found = []
        if self.intent is not None:
            where = "" if self.intent.stage == PRODUCTION else f" to {self.intent.stage}"
            found.append(
                f"an interrupted {self.intent.action} of version {self.intent.to_version}"
                f"{where} (transaction {self.intent.id}, {self.intent.time} by "
                f"{self.intent.actor}) is still recorded"
            )
        found.extend(self._stage_problems())
        found.extend(self._staging_problems())
        found.extend(
            f"version {v} is tagged gate.decision=promoted but never held Production"
            for v in self.false_promoted
        )
        found.extend(
            f"version {v} is tagged gate.decision=staged but never held Staging"
            for v in self.false_staged
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

    def _staging_problems(self) -> list[str]:
        clash = self.challenger is not None and self.challenger == self.alias
        found = [f"champion and challenger are both on version {self.challenger}"] if clash else []
        if len(self.staging_versions) > 1:
            versions = ", ".join(self.staging_versions)
            return [*found, f"{len(self.staging_versions)} versions are in Staging: {versions}"]
        if not self.staging_versions:
            if self.challenger is not None and not clash:
                found.append(
                    f"challenger is on version {self.challenger} but no version is in Staging"
                )
            return found
        (current,) = self.staging_versions
        if self.challenger != current and not clash:
            found.append(f"Staging is version {current} but challenger is on {self.challenger}")
        last = _staged_version(self.last_staging_event)
        if last != current:
            found.append(
                f"Staging is version {current} but the history's last Staging event is {last}"
            )
        return found


def _staged_version(event: production.PromotionEvent | None) -> str | None:
    """The version the newest Staging-slot event left in Staging (None after a retirement)."""
    return event.to_version if event is not None and event.stage == STAGING else None


def observe(client: MlflowClient, name: str) -> RegistryState:
    """Read what reconcile compares: stages, aliases, history, gate tags, intent and lock."""
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        raise RegistryError(f"registered model '{name}' does not exist") from exc
    versions = _versions(client, name)
    events = production.history(client, name)
    ordered = sorted(versions.items(), key=lambda item: int(item[0]))
    in_stage = {
        stage: tuple(v for v, mv in ordered if _stage(mv) == stage)
        for stage in (PRODUCTION, STAGING)
    }
    held = {
        stage: frozenset(e.to_version for e in events if e.stage == stage) | set(in_stage[stage])
        for stage in (PRODUCTION, STAGING)
    }
    false = {
        decision: tuple(
            v
            for v, mv in ordered
            if mv.tags.get(artifacts.GATE_DECISION) == decision and v not in held[stage]
        )
        for decision, stage in _CLAIMS.items()
    }
    intent_text = model.tags.get(INTENT_TAG)
    aliases = model.aliases or {}
    champion = aliases.get(production.CHAMPION_ALIAS)
    challenger = aliases.get(production.CHALLENGER_ALIAS)
    production_events = [e for e in events if e.stage == PRODUCTION]
    return RegistryState(
        name=name,
        production_versions=in_stage[PRODUCTION],
        alias=None if champion is None else str(champion),
        last_event=production_events[0] if production_events else None,
        history_targets=frozenset(e.to_version for e in production_events),
        false_promoted=false[PROMOTED],
        intent=Intent.parse(name, intent_text) if intent_text else None,
        lock=production.lock_holder(client, name),
        staging_versions=in_stage[STAGING],
        challenger=None if challenger is None else str(challenger),
        last_staging_event=next((e for e in events if e.stage in (STAGING, ARCHIVED)), None),
        false_staged=false[STAGED],
    )


def change_stage(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    stage: str,
    action: str,
    reason: str,
    outcome_tags: dict[str, str] | None = None,
) -> production.PromotionEvent:
    """Put `version` in `stage` (Production or Staging) with the stage's alias, as one
    transaction that any later command can finish.

    Staging archives the previous Staging version; Production archives the previous champion
    and, when `version` was the challenger, takes `challenger` off it. The current champion
    cannot be put in Staging (RegistryError).
    """
    slot = _slot(name, stage)
    version = str(version)
    with production.production_lock(client, name):
        reconcile(client, name)
        if slot.stage == STAGING:
            _refuse_the_champion_as_challenger(client, name, version)
        previous = _holder(client, name, slot.stage)
        now = datetime.now(UTC).isoformat(timespec="seconds")
        actor = current_actor()
        stamps = {f"{slot.stamp}.at": now, f"{slot.stamp}.by": actor}
        intent = Intent(
            id=uuid.uuid4().hex,
            action=action,
            to_version=version,
            from_version=str(previous.version) if previous else None,
            reason=reason,
            actor=actor,
            time=now,
            outcome_tags={**stamps, **(outcome_tags or {})},
            stage=slot.stage,
        )
        _record(client, name, intent)
    logger.info(
        "%s: version %s of '%s' is now %s (was %s): %s",
        action,
        version,
        name,
        "Production" if slot.stage == PRODUCTION else "Staging (challenger)",
        intent.from_version or "none",
        reason,
    )
    return intent.event()


def retire(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    action: str,
    reason: str,
    outcome_tags: dict[str, str] | None = None,
) -> production.PromotionEvent:
    """Archive the challenger `version` and take `challenger` off it, as one transaction:
    Staging -> Archived, alias removed, a history event (stage Archived), outcome tags last
    (`retired.at`/`retired.by`, then `outcome_tags`, e.g. `gate.decision=rejected`)."""
    version = str(version)
    with production.production_lock(client, name):
        reconcile(client, name)
        current = production.challenger_version(client, name)
        if current is None or str(current.version) != version:
            staged = "no version is" if current is None else f"version {current.version} is"
            raise RegistryError(
                f"version {version} of '{name}' is not the challenger ({staged} in Staging); "
                "only the Staging version can be retired"
            )
        now = datetime.now(UTC).isoformat(timespec="seconds")
        actor = current_actor()
        intent = Intent(
            id=uuid.uuid4().hex,
            action=action,
            to_version=version,
            from_version=None,
            reason=reason,
            actor=actor,
            time=now,
            outcome_tags={"retired.at": now, "retired.by": actor, **(outcome_tags or {})},
            stage=ARCHIVED,
        )
        _record(client, name, intent)
    logger.info("%s: challenger version %s of '%s' is archived: %s", action, version, name, reason)
    return intent.event()


def _slot(name: str, stage: str) -> _Slot:
    try:
        return _SLOTS[stage]
    except KeyError:
        raise RegistryError(
            f"cannot put a version of '{name}' in stage '{stage}': choose Production (the "
            "champion) or Staging (the challenger); a challenger leaves Staging by promotion "
            "or by retire"
        ) from None


def _holder(client: MlflowClient, name: str, stage: str) -> ModelVersion | None:
    if stage == PRODUCTION:
        return production.production_version(client, name)
    return production.challenger_version(client, name)


def _refuse_the_champion_as_challenger(client: MlflowClient, name: str, version: str) -> None:
    champion = production.production_version(client, name)
    if champion is not None and str(champion.version) == version:
        raise RegistryError(
            f"version {version} of '{name}' is in Production (the champion); a challenger must "
            "be another version: choose one that is not in Production"
        )


def _record(client: MlflowClient, name: str, intent: Intent) -> None:
    """Write the intent, then carry it out; the caller holds the lock."""
    client.set_registered_model_tag(name, INTENT_TAG, json.dumps(asdict(intent)))
    failpoint("registry.after_intent")
    _carry_out(client, name, intent)
    failpoint("registry.before_unlock")


def reconcile(client: MlflowClient, name: str) -> list[str]:
    """Repair what a crash left of a change of Production or Staging; call it under the lock.

    Returns the repairs made, in words (empty when there was nothing to do). Idempotent.
    """
    if not _model_exists(client, name):
        return []  # nothing registered yet: nothing to repair
    state = observe(client, name)
    repairs = []
    if state.intent is not None:
        repairs.append(_settle(client, name, state))
        state = observe(client, name)
    production_repairs = _enforce_slot(client, name, _production_state(state))
    if production_repairs:
        # The champion may have moved: the Staging checks compare the challenger with it.
        state = observe(client, name)
    repairs.extend(production_repairs)
    repairs.extend(_enforce_slot(client, name, _staging_state(state)))
    repairs.extend(_untag_false_decisions(client, name, state))
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
    moved = _moved_on(state, intent)
    if moved is None and _version_exists(client, name, intent.to_version):
        _carry_out(client, name, intent)
        return (
            f"finished the interrupted {intent.action} of version {intent.to_version} "
            f"(transaction {intent.id}, started {intent.time} by {intent.actor})"
        )
    client.delete_registered_model_tag(name, INTENT_TAG)
    return (
        f"dropped the interrupted {intent.action} of version {intent.to_version} "
        f"(transaction {intent.id}): {moved or 'the version no longer exists'}"
    )


def _moved_on(state: RegistryState, intent: Intent) -> str | None:
    """Why the intent no longer applies (its slot changed since it was decided), or None."""
    expected = {intent.from_version, intent.to_version} - {None}
    if intent.stage == PRODUCTION:
        if set(state.production_versions) <= expected:
            return None
        seen = ", ".join(state.production_versions) or "none"
        return f"Production is {seen}, not the {intent.from_version} it was decided against"
    if intent.to_version in state.production_versions:
        return f"version {intent.to_version} is in Production now"
    if intent.stage == ARCHIVED or set(state.staging_versions) <= expected:
        return None
    seen = ", ".join(state.staging_versions)
    return f"Staging is {seen}, not the {intent.from_version or 'none'} it was decided against"


def _carry_out(client: MlflowClient, name: str, intent: Intent) -> None:
    """Every write of the change after the intent; each one may already have been done."""
    target = intent.to_version
    if intent.stage == ARCHIVED:
        if _stage(client.get_model_version(name, target)) == STAGING:
            _transition(client, name, target, ARCHIVED, archive_existing=False)
        failpoint("registry.after_stage")
        _drop_alias_from(client, name, production.CHALLENGER_ALIAS, target)
    else:
        if _stage(client.get_model_version(name, target)) != intent.stage:
            _transition(client, name, target, intent.stage, archive_existing=True)
        failpoint("registry.after_stage")
        client.set_registered_model_alias(name, _SLOTS[intent.stage].alias, target)
        if intent.stage == PRODUCTION:
            # The challenger that wins becomes the champion: it is no longer a challenger.
            _drop_alias_from(client, name, production.CHALLENGER_ALIAS, target)
    failpoint("registry.after_alias")
    if not any(event.txn == intent.id for event in production.history(client, name)):
        production.append_history(client, name, intent.event())
    failpoint("registry.after_history")
    for key, value in intent.outcome_tags.items():
        client.set_model_version_tag(name, target, key, value)
    _show_on_runs(client, name, intent)
    failpoint("registry.after_outcome")
    client.delete_registered_model_tag(name, INTENT_TAG)


def _transition(
    client: MlflowClient, name: str, version: str, stage: str, *, archive_existing: bool
) -> None:
    # MLflow archives only the versions in the target stage, so the other slot is untouched.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(
            name, version, stage, archive_existing_versions=archive_existing
        )


def _drop_alias_from(client: MlflowClient, name: str, alias: str, version: str) -> None:
    """Delete `alias` if it is on `version` (a replay finds it gone, or on another version)."""
    current = (client.get_registered_model(name).aliases or {}).get(alias)
    if current is not None and str(current) == version:
        client.delete_registered_model_alias(name, alias)


def _show_on_runs(client: MlflowClient, name: str, intent: Intent) -> None:
    """Mirror the change in the runs table: the status tag moves to the new version's run.

    Only a mirror for people comparing runs in the MLflow UI (the stage stays the truth), so
    a run that cannot be tagged (deleted, say) is logged and skipped, never an error.
    """
    try:
        if intent.stage == PRODUCTION:
            _show_production(client, name, intent)
        else:
            _show_challenger(client, name, intent)
    except MlflowException as exc:
        logger.warning(
            "Could not mark the %s run of '%s' in the runs table: %s", intent.stage, name, exc
        )


def _show_production(client: MlflowClient, name: str, intent: Intent) -> None:
    new = client.get_model_version(name, intent.to_version).run_id
    old = None
    if intent.from_version and _version_exists(client, name, intent.from_version):
        old = client.get_model_version(name, intent.from_version).run_id
    if old and old != new and STATUS_TAG in client.get_run(old).data.tags:
        client.delete_tag(old, STATUS_TAG)
    if new:
        client.set_tag(new, STATUS_TAG, f"Production: {name} v{intent.to_version}")


def _show_challenger(client: MlflowClient, name: str, intent: Intent) -> None:
    # A challenger's run may share its run with the champion (a version registered twice):
    # only a status that says Staging is ever removed, so Production's mark stays.
    runs: list[str | None] = [client.get_model_version(name, intent.to_version).run_id]
    if intent.from_version and _version_exists(client, name, intent.from_version):
        runs.append(client.get_model_version(name, intent.from_version).run_id)
    for run in {r for r in runs if r}:
        if client.get_run(run).data.tags.get(STATUS_TAG, "").startswith(STAGING):
            client.delete_tag(run, STATUS_TAG)
    new = runs[0]
    if intent.stage != STAGING or not new:
        return
    if not client.get_run(new).data.tags.get(STATUS_TAG, "").startswith(PRODUCTION):
        client.set_tag(new, STATUS_TAG, f"Staging (challenger): {name} v{intent.to_version}")


@dataclass(frozen=True)
class _SlotState:
    """One slot as reconcile sees it: which versions hold its stage, which one its alias is
    on, and which one its newest history event left there."""

    slot: _Slot
    versions: tuple[str, ...]
    holder: str | None
    last: str | None
    history: str
    """How the repair message names the slot's history."""


def _production_state(state: RegistryState) -> _SlotState:
    last = state.last_event.to_version if state.last_event else None
    return _SlotState(_SLOTS[PRODUCTION], state.production_versions, state.alias, last, "")


def _staging_state(state: RegistryState) -> _SlotState:
    """Read after the Production repairs, so `champion` is on the Production version (or gone)
    and a `challenger` on it is removed by the same rules: it is on no Staging version."""
    last = _staged_version(state.last_staging_event)
    return _SlotState(
        _SLOTS[STAGING], state.staging_versions, state.challenger, last, " of Staging"
    )


def _enforce_slot(client: MlflowClient, name: str, observed: _SlotState) -> list[str]:
    """One version in the slot's stage, its alias on that version, and the history agreeing."""
    repairs = []
    stage, alias = observed.slot.stage, observed.slot.alias
    keep = _keeper(observed.versions, observed.holder)
    for extra in (v for v in observed.versions if v != keep):
        _transition(client, name, extra, ARCHIVED, archive_existing=False)
        repairs.append(f"archived version {extra}, a second version in {stage}")
    if keep is None:
        if observed.holder is not None:
            client.delete_registered_model_alias(name, alias)
            repairs.append(
                f"removed {alias} from version {observed.holder}: no version is in {stage}"
            )
        return repairs
    if observed.holder != keep:
        client.set_registered_model_alias(name, alias, keep)
        repairs.append(f"moved {alias} from version {observed.holder} to {keep}, the {stage} one")
    last = observed.last
    if last != keep:
        production.append_history(client, name, _repair_event(last, keep, stage))
        repairs.append(
            f"recorded a repair event {last or 'none'} -> {keep} in the history{observed.history}"
        )
    return repairs


def _keeper(versions: tuple[str, ...], alias: str | None) -> str | None:
    """The one version to keep in a stage: the alias's if it is one, else the newest."""
    if alias in versions:
        return alias
    return versions[-1] if versions else None


def _repair_event(last: str | None, current: str, stage: str) -> production.PromotionEvent:
    return production.PromotionEvent(
        time=datetime.now(UTC).isoformat(timespec="seconds"),
        actor=current_actor(),
        action=REPAIR_ACTION,
        from_version=last,
        to_version=current,
        reason=(
            f"{stage} was found on version {current} while the history ended at "
            f"{last or 'nothing'} (changed outside this pipeline, or by an older one that "
            "crashed); recorded by repair"
        ),
        stage=stage,
    )


def _untag_false_decisions(client: MlflowClient, name: str, state: RegistryState) -> list[str]:
    repairs = []
    now = datetime.now(UTC).isoformat(timespec="seconds")
    claims: dict[str, tuple[str, ...]] = {
        PROMOTED: state.false_promoted,
        STAGED: state.false_staged,
    }
    for decision, versions in claims.items():
        stage = _CLAIMS[decision]
        for version in versions:
            client.set_model_version_tag(
                name,
                version,
                GATE_INTERRUPTED_TAG,
                f"gate.decision={decision} removed at {now}: the version never reached {stage}",
            )
            client.delete_model_version_tag(name, version, artifacts.GATE_DECISION)
            repairs.append(
                f"removed gate.decision={decision} from version {version}, which never held "
                f"{stage} (the next gate judges it again)"
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
