"""Reconcile: whatever a crash left of a change of Production, the next command repairs it.

The states here are built by hand (each is what a kill at one point leaves); the real kills,
at every fail point of real `python -m pipeline` processes, are in test_crash_recovery.py.
"""

from __future__ import annotations

import json
import uuid
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pipeline.errors import RegistryError
from pipeline.registry import commands, production, transaction
from pipeline.tracking import STATUS_TAG
from tests.pipeline.registry.invariants import violations

NAME = "m"


@pytest.fixture
def client(mlflow_store: str, tmp_path: Path) -> MlflowClient:
    """Model `m` with versions 1-3: an MLmodel without signature each (nothing is loaded here;
    promote reads it for the schema guard, which has no inputs to compare)."""
    client = MlflowClient()
    client.create_registered_model(NAME)
    for number in range(1, 4):
        source = tmp_path / f"v{number}"
        source.mkdir()
        (source / "MLmodel").write_text("flavors: {}\n")
        client.create_model_version(NAME, str(source))
    production.set_production(client, NAME, "1", action="gate", reason="first")
    return client


def _stages(client: MlflowClient) -> dict[str, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return {
            str(v.version): str(v.current_stage)
            for v in client.search_model_versions(f"name = '{NAME}'")
        }


def _move_stage_only(client: MlflowClient, version: str, archive: bool = True) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(NAME, version, "Production", archive)


def _intent(to_version: str, from_version: str | None) -> transaction.Intent:
    return transaction.Intent(
        id=uuid.uuid4().hex,
        action="promote",
        to_version=to_version,
        from_version=from_version,
        reason="killed half-way",
        actor="someone",
        time="2026-12-05T22:00:00+00:00",
        outcome_tags={"promoted.at": "2026-12-05T22:00:00+00:00", "promoted.by": "someone"},
    )


def test_a_consistent_registry_needs_no_repair(client: MlflowClient) -> None:
    assert transaction.observe(client, NAME).problems() == []
    assert transaction.reconcile(client, NAME) == []
    assert violations(client, NAME) == []


def test_a_stage_moved_without_alias_and_history_is_repaired_and_can_be_rolled_back(
    client: MlflowClient,
) -> None:
    # What the issue found: stage = v3, alias still on v1, no history event.
    commands.promote(NAME, "2")
    _move_stage_only(client, "3")
    problems = transaction.observe(client, NAME).problems()
    assert problems == [
        "Production is version 3 but champion is on 2",
        "Production is version 3 but the history's last event is 2",
    ]
    repairs = transaction.reconcile(client, NAME)
    assert repairs == [
        "moved champion from version 2 to 3, the Production one",
        "recorded a repair event 2 -> 3 in the history",
    ]
    assert violations(client, NAME) == []
    assert production.history(client, NAME)[0].action == "repair"
    assert commands.rollback(NAME).to_version == "2"
    assert violations(client, NAME) == []
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "2"


def test_an_intent_left_after_the_history_event_is_finished_without_a_second_event(
    client: MlflowClient,
) -> None:
    intent = _intent("2", "1")
    client.set_registered_model_tag(NAME, transaction.INTENT_TAG, json.dumps(asdict(intent)))
    _move_stage_only(client, "2")
    production.append_history(client, NAME, intent.event())
    (repair,) = transaction.reconcile(client, NAME)
    assert repair.startswith(
        f"finished the interrupted promote of version 2 (transaction {intent.id}"
    )
    assert violations(client, NAME) == []
    events = production.history(client, NAME)
    assert [e.txn for e in events].count(intent.id) == 1
    assert client.get_model_version(NAME, "2").tags["promoted.by"] == "someone"
    assert transaction.reconcile(client, NAME) == []


def test_an_intent_decided_against_a_production_that_moved_since_is_dropped(
    client: MlflowClient,
) -> None:
    intent = _intent("2", "3")  # decided when version 3 was Production; now version 1 is
    client.set_registered_model_tag(NAME, transaction.INTENT_TAG, json.dumps(asdict(intent)))
    (repair,) = transaction.reconcile(client, NAME)
    assert "dropped the interrupted promote of version 2" in repair
    assert "Production is 1, not the 3 it was decided against" in repair
    assert _stages(client)["1"] == "Production" and _stages(client)["2"] == "None"
    assert violations(client, NAME) == []


def test_a_promoted_tag_without_a_stage_move_is_removed_so_the_gate_judges_again(
    client: MlflowClient,
) -> None:
    # An older gate wrote its decision before moving the stage, and was killed in between.
    client.set_model_version_tag(NAME, "2", "gate.decision", "promoted")
    assert "version 2 is tagged gate.decision=promoted but never held Production" in (
        transaction.observe(client, NAME).problems()
    )
    transaction.reconcile(client, NAME)
    tags = client.get_model_version(NAME, "2").tags
    assert "gate.decision" not in tags
    assert "never reached Production" in tags[transaction.GATE_INTERRUPTED_TAG]
    assert violations(client, NAME) == []


def test_a_second_version_in_production_is_archived_keeping_the_champion(
    client: MlflowClient,
) -> None:
    _move_stage_only(client, "3", archive=False)
    assert transaction.reconcile(client, NAME) == [
        "archived version 3, a second version in Production"
    ]
    assert _stages(client) == {"1": "Production", "2": "None", "3": "Archived"}
    assert violations(client, NAME) == []


def test_a_champion_alias_without_a_production_version_is_removed(client: MlflowClient) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(NAME, "1", "Archived")
    transaction.reconcile(client, NAME)
    assert "champion" not in client.get_registered_model(NAME).aliases
    assert transaction.observe(client, NAME).problems() == []


def test_every_promote_is_one_transaction_whose_event_carries_its_id(client: MlflowClient) -> None:
    event = commands.promote(NAME, "3", "why")
    assert event.txn and event.action == "promote"
    assert production.history(client, NAME)[0] == event
    assert transaction.INTENT_TAG not in client.get_registered_model(NAME).tags
    assert violations(client, NAME) == []


def test_an_intent_tag_that_is_not_a_transaction_record_is_refused_naming_the_tag(
    client: MlflowClient,
) -> None:
    client.set_registered_model_tag(NAME, transaction.INTENT_TAG, "not json")
    with pytest.raises(RegistryError, match=r"the tag 'txn\.intent' of registered model 'm'"):
        commands.promote(NAME, "2")
    assert _stages(client)["1"] == "Production"


def test_the_status_tag_in_the_runs_table_moves_with_production(
    mlflow_store: str, tmp_path: Path
) -> None:
    client = MlflowClient()
    experiment = client.create_experiment("runs")
    runs = [client.create_run(experiment).info.run_id for _ in range(2)]
    client.create_registered_model("r")
    for run_id in runs:
        source = tmp_path / run_id
        source.mkdir()
        (source / "MLmodel").write_text("flavors: {}\n")
        client.create_model_version("r", str(source), run_id=run_id)

    def status(run_id: str) -> str | None:
        return client.get_run(run_id).data.tags.get(STATUS_TAG)

    production.set_production(client, "r", "1", action="gate", reason="first")
    assert status(runs[0]) == "Production: r v1"
    commands.promote("r", "2")
    assert (status(runs[0]), status(runs[1])) == (None, "Production: r v2")
    commands.rollback("r")
    assert (status(runs[0]), status(runs[1])) == ("Production: r v1", None)
    assert violations(client, "r") == []


# --- Staging and the challenger -------------------------------------------------------------


def _stage_only(client: MlflowClient, version: str, stage: str, archive: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(NAME, version, stage, archive)


def _aliases(client: MlflowClient) -> dict[str, str]:
    return {k: str(v) for k, v in (client.get_registered_model(NAME).aliases or {}).items()}


def _stage_two(client: MlflowClient, **outcome: str) -> production.PromotionEvent:
    return transaction.change_stage(
        client, NAME, "2", stage="Staging", action="gate", reason="passed", outcome_tags=outcome
    )


def test_staging_a_version_moves_stage_and_challenger_together_and_records_the_stage(
    client: MlflowClient,
) -> None:
    event = _stage_two(client, **{"gate.decision": "staged"})
    assert (event.stage, event.from_version, event.to_version) == ("Staging", None, "2")
    assert _stages(client) == {"1": "Production", "2": "Staging", "3": "None"}
    assert _aliases(client) == {"champion": "1", "challenger": "2"}
    assert production.history(client, NAME)[0] == event
    tags = client.get_model_version(NAME, "2").tags
    assert tags["staged.by"] == event.actor and tags["gate.decision"] == "staged"
    assert "promoted.by" not in tags
    challenger = production.challenger_version(client, NAME)
    assert challenger is not None and str(challenger.version) == "2"
    assert violations(client, NAME) == [] and transaction.reconcile(client, NAME) == []


def test_a_new_challenger_archives_the_previous_one(client: MlflowClient) -> None:
    _stage_two(client)
    event = transaction.change_stage(
        client, NAME, "3", stage="Staging", action="promote", reason="better"
    )
    assert event.from_version == "2"
    assert _stages(client) == {"1": "Production", "2": "Archived", "3": "Staging"}
    assert _aliases(client)["challenger"] == "3"
    assert violations(client, NAME) == []


def test_promoting_the_challenger_takes_challenger_off_it_and_history_shows_both_stages(
    client: MlflowClient,
) -> None:
    _stage_two(client, **{"gate.decision": "staged"})
    transaction.change_stage(
        client,
        NAME,
        "2",
        stage="Production",
        action="live-gate",
        reason="won on live traffic",
        outcome_tags={"gate.decision": "promoted"},
    )
    assert _stages(client) == {"1": "Archived", "2": "Production", "3": "None"}
    assert _aliases(client) == {"champion": "2"}
    assert production.challenger_version(client, NAME) is None
    events = production.history(client, NAME)
    assert [(e.stage, e.action, e.to_version) for e in events[:2]] == [
        ("Production", "live-gate", "2"),
        ("Staging", "gate", "2"),
    ]
    assert client.get_model_version(NAME, "2").tags["gate.decision"] == "promoted"
    assert violations(client, NAME) == []


def test_retiring_the_challenger_archives_it_removes_the_alias_and_writes_the_outcome(
    client: MlflowClient,
) -> None:
    _stage_two(client, **{"gate.decision": "staged"})
    event = transaction.retire(
        client,
        NAME,
        "2",
        action="live-reject",
        reason="worse on live labels",
        outcome_tags={"gate.reason": "worse on live labels", "gate.decision": "rejected"},
    )
    assert (event.stage, event.action, event.to_version) == ("Archived", "live-reject", "2")
    assert _stages(client)["2"] == "Archived" and _aliases(client) == {"champion": "1"}
    tags = client.get_model_version(NAME, "2").tags
    assert (tags["gate.decision"], tags["gate.reason"]) == ("rejected", "worse on live labels")
    assert tags["retired.by"] == event.actor
    assert violations(client, NAME) == [] and transaction.reconcile(client, NAME) == []
    # Production's rollback stack ignores the challenger's comings and goings.
    with pytest.raises(RegistryError, match="no earlier Production version than 1"):
        commands.rollback(NAME)


def test_retiring_a_version_that_is_not_the_challenger_is_refused_naming_both(
    client: MlflowClient,
) -> None:
    _stage_two(client)
    with pytest.raises(
        RegistryError, match=r"version 3 of 'm' is not the challenger \(version 2 is in Staging\)"
    ):
        transaction.retire(client, NAME, "3", action="live-reject", reason="no")
    assert _stages(client)["2"] == "Staging"


def test_the_champion_cannot_be_its_own_challenger(client: MlflowClient) -> None:
    with pytest.raises(RegistryError, match=r"version 1 of 'm' is in Production \(the champion\)"):
        transaction.change_stage(client, NAME, "1", stage="Staging", action="gate", reason="x")
    assert _stages(client)["1"] == "Production" and "challenger" not in _aliases(client)


def test_a_stage_other_than_production_or_staging_is_refused_naming_it(
    client: MlflowClient,
) -> None:
    with pytest.raises(RegistryError, match="in stage 'Archived': choose Production"):
        transaction.change_stage(client, NAME, "2", stage="Archived", action="x", reason="x")


def test_two_versions_in_staging_keep_the_challenger_and_archive_the_other(
    client: MlflowClient,
) -> None:
    _stage_two(client)
    _stage_only(client, "3", "Staging")
    assert "2 versions are in Staging: 2, 3" in transaction.observe(client, NAME).problems()
    assert transaction.reconcile(client, NAME) == [
        "archived version 3, a second version in Staging"
    ]
    assert _stages(client) == {"1": "Production", "2": "Staging", "3": "Archived"}
    assert violations(client, NAME) == []


def test_a_challenger_alias_without_a_staging_version_is_removed(client: MlflowClient) -> None:
    client.set_registered_model_alias(NAME, "challenger", "3")
    assert transaction.observe(client, NAME).problems() == [
        "challenger is on version 3 but no version is in Staging"
    ]
    assert transaction.reconcile(client, NAME) == [
        "removed challenger from version 3: no version is in Staging"
    ]
    assert _aliases(client) == {"champion": "1"}
    assert violations(client, NAME) == []


def test_a_challenger_on_the_champion_is_removed_and_production_keeps_it(
    client: MlflowClient,
) -> None:
    client.set_registered_model_alias(NAME, "challenger", "1")
    assert transaction.observe(client, NAME).problems() == [
        "champion and challenger are both on version 1"
    ]
    transaction.reconcile(client, NAME)
    assert _aliases(client) == {"champion": "1"}
    assert _stages(client)["1"] == "Production"
    assert violations(client, NAME) == []


def test_a_staging_stage_moved_outside_the_pipeline_gets_the_alias_and_a_repair_event(
    client: MlflowClient,
) -> None:
    _stage_only(client, "3", "Staging")
    assert transaction.reconcile(client, NAME) == [
        "moved challenger from version None to 3, the Staging one",
        "recorded a repair event none -> 3 in the history of Staging",
    ]
    latest = production.history(client, NAME)[0]
    assert (latest.action, latest.stage, latest.to_version) == ("repair", "Staging", "3")
    assert violations(client, NAME) == []


def _staged_intent(to_version: str, from_version: str | None, **kw: Any) -> transaction.Intent:
    base = _intent(to_version, from_version)
    return transaction.Intent(**{**asdict(base), "stage": "Staging", "action": "gate", **kw})


def test_a_staged_intent_left_after_the_stage_move_is_finished(client: MlflowClient) -> None:
    intent = _staged_intent("2", None, outcome_tags={"gate.decision": "staged"})
    client.set_registered_model_tag(NAME, transaction.INTENT_TAG, json.dumps(asdict(intent)))
    _stage_only(client, "2", "Staging")
    problems = transaction.observe(client, NAME).problems()
    assert problems[0].startswith("an interrupted gate of version 2 to Staging (transaction")
    (repair,) = transaction.reconcile(client, NAME)
    assert repair.startswith(f"finished the interrupted gate of version 2 (transaction {intent.id}")
    assert _aliases(client) == {"champion": "1", "challenger": "2"}
    assert client.get_model_version(NAME, "2").tags["gate.decision"] == "staged"
    assert production.history(client, NAME)[0].txn == intent.id
    assert violations(client, NAME) == []


def test_a_staged_intent_whose_target_reached_production_since_is_dropped(
    client: MlflowClient,
) -> None:
    intent = _staged_intent("2", None)
    client.set_registered_model_tag(NAME, transaction.INTENT_TAG, json.dumps(asdict(intent)))
    _stage_only(client, "2", "Production", archive=True)  # someone promoted it by the stage
    repairs = transaction.reconcile(client, NAME)
    assert "dropped the interrupted gate of version 2" in repairs[0]
    assert "version 2 is in Production now" in repairs[0]
    assert _stages(client)["2"] == "Production" and "challenger" not in _aliases(client)
    assert violations(client, NAME) == []


def test_a_staged_intent_decided_against_another_challenger_is_dropped(
    client: MlflowClient,
) -> None:
    intent = _staged_intent("2", None)  # decided when Staging was empty; now version 3 is there
    _stage_only(client, "3", "Staging")
    client.set_registered_model_tag(NAME, transaction.INTENT_TAG, json.dumps(asdict(intent)))
    repairs = transaction.reconcile(client, NAME)
    assert "Staging is 3, not the none it was decided against" in repairs[0]
    assert _stages(client)["2"] == "None" and _aliases(client)["challenger"] == "3"
    assert violations(client, NAME) == []


def test_a_retire_intent_left_after_the_stage_move_is_finished(client: MlflowClient) -> None:
    _stage_two(client)
    intent = _staged_intent(
        "2",
        None,
        stage="Archived",
        action="live-reject",
        outcome_tags={"gate.decision": "rejected"},
    )
    client.set_registered_model_tag(NAME, transaction.INTENT_TAG, json.dumps(asdict(intent)))
    _stage_only(client, "2", "Archived")
    (repair,) = transaction.reconcile(client, NAME)
    assert repair.startswith("finished the interrupted live-reject of version 2")
    assert _aliases(client) == {"champion": "1"}
    assert client.get_model_version(NAME, "2").tags["gate.decision"] == "rejected"
    assert production.history(client, NAME)[0].stage == "Archived"
    assert violations(client, NAME) == []


def test_a_staged_tag_on_a_version_that_never_held_staging_is_removed(
    client: MlflowClient,
) -> None:
    client.set_model_version_tag(NAME, "3", "gate.decision", "staged")
    assert "version 3 is tagged gate.decision=staged but never held Staging" in (
        transaction.observe(client, NAME).problems()
    )
    transaction.reconcile(client, NAME)
    tags = client.get_model_version(NAME, "3").tags
    assert "gate.decision" not in tags
    assert "never reached Staging" in tags[transaction.GATE_INTERRUPTED_TAG]


def test_a_staged_and_then_promoted_challenger_keeps_its_promoted_tag(
    client: MlflowClient,
) -> None:
    _stage_two(client, **{"gate.decision": "staged"})
    commands.promote(NAME, "2", "by hand")
    client.set_model_version_tag(NAME, "2", "gate.decision", "promoted")
    assert transaction.observe(client, NAME).problems() == []


def test_an_intent_and_events_written_before_staging_existed_mean_production(
    client: MlflowClient,
) -> None:
    old = {k: v for k, v in asdict(_intent("2", "1")).items() if k != "stage"}
    client.set_registered_model_tag(NAME, transaction.INTENT_TAG, json.dumps(old))
    transaction.reconcile(client, NAME)
    assert _stages(client)["2"] == "Production"
    raw = json.loads(client.get_registered_model(NAME).tags[_oldest_history_key(client)])
    raw.pop("stage")
    client.set_registered_model_tag(NAME, _oldest_history_key(client), json.dumps(raw))
    assert production.history(client, NAME)[-1].stage == "Production"
    assert violations(client, NAME) == []


def _oldest_history_key(client: MlflowClient) -> str:
    keys = [k for k in client.get_registered_model(NAME).tags if k.startswith("history.")]
    return min(keys, key=lambda key: int(key.split(".", 1)[1]))


def test_an_intent_to_a_stage_this_pipeline_never_writes_is_refused_naming_the_tag(
    client: MlflowClient,
) -> None:
    bad = {**asdict(_intent("2", "1")), "stage": "Limbo"}
    client.set_registered_model_tag(NAME, transaction.INTENT_TAG, json.dumps(bad))
    with pytest.raises(RegistryError, match="to stage 'Limbo', which this pipeline never writes"):
        transaction.reconcile(client, NAME)
