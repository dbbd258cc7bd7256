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
