"""Explicit promotion and rollback: stage and alias move together, and history is recorded."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import load_config
from pipeline.errors import RegistryError
from pipeline.registry import commands, production
from pipeline.steps import flow
from tests.pipeline.registry.invariants import violations


@pytest.fixture
def three_versions(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> str:
    """Versions 1 (Production, by the gate), 2 and 3 (copies of 1, never in Production)."""
    flow.run_all(load_config(write_config(iris_config())))
    client = MlflowClient()
    for _ in range(2):
        # Registering the same model again is enough here, and a pipeline run costs seconds.
        client.create_model_version("iris-test", "models:/iris-test/1")
    return "iris-test"


def _production(name: str) -> str:
    version = production.production_version(MlflowClient(), name)
    assert version is not None
    return str(version.version)


def test_promote_by_hand_moves_stage_and_alias_and_records_who_and_why(three_versions: str) -> None:
    event = commands.promote(three_versions, "3", "hotfix for drift")
    assert (event.from_version, event.to_version, event.action) == ("1", "3", "promote")
    assert _production(three_versions) == "3"
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(three_versions, "champion").version) == "3"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert client.get_model_version(three_versions, "1").current_stage == "Archived"
    latest = production.history(client, three_versions)[0]
    assert latest.reason == "hotfix for drift"
    assert latest.actor


def test_rollback_returns_to_the_previous_production_version_each_time(three_versions: str) -> None:
    commands.promote(three_versions, "2")
    commands.promote(three_versions, "3")
    assert commands.rollback(three_versions).to_version == "2"
    assert _production(three_versions) == "2"
    assert commands.rollback(three_versions).to_version == "1"
    assert str(MlflowClient().get_model_version_by_alias(three_versions, "champion").version) == "1"
    with pytest.raises(RegistryError, match="no earlier Production version than 1"):
        commands.rollback(three_versions)
    actions = [e.action for e in production.history(MlflowClient(), three_versions)]
    assert actions == ["rollback", "rollback", "promote", "promote", "gate"]


def test_promoting_an_unknown_version_is_refused_naming_it(three_versions: str) -> None:
    with pytest.raises(RegistryError, match="has no version '9'"):
        commands.promote(three_versions, "9")
    assert _production(three_versions) == "1"


def test_promoting_the_production_version_again_is_refused(three_versions: str) -> None:
    with pytest.raises(RegistryError, match="already in Production"):
        commands.promote(three_versions, "1")


def test_rollback_without_a_production_version_is_refused(mlflow_store: str) -> None:
    with pytest.raises(RegistryError, match="no Production version"):
        commands.rollback("never-trained")


def test_promote_checks_production_under_the_lock_so_a_change_while_it_waits_is_seen(
    three_versions: str, caplog: pytest.LogCaptureFixture
) -> None:
    client = MlflowClient()
    outcome: list[object] = []

    def promote_two() -> None:
        try:
            outcome.append(commands.promote(three_versions, "2"))
        except RegistryError as exc:
            outcome.append(exc)

    with caplog.at_level(logging.INFO, logger="pipeline.registry.production"):
        with production.production_lock(client, three_versions):
            waiter = threading.Thread(target=promote_two)
            waiter.start()
            deadline = time.monotonic() + 60
            while "Waiting for the Production lock of 'iris-test'" not in caplog.text:
                assert time.monotonic() < deadline, "promote never waited for the lock"
                time.sleep(0.05)
            # Someone else changes Production while promote waits for the lock.
            production.set_production(client, three_versions, "2", action="promote", reason="other")
        waiter.join(timeout=60)
    (result,) = outcome
    assert isinstance(result, RegistryError)
    assert str(result) == "version 2 of 'iris-test' is already in Production"
    assert next(e.reason for e in production.history(client, three_versions)) == "other"
    assert len(production.history(client, three_versions)) == 2


def test_promote_to_staging_makes_a_challenger_beside_the_champion(three_versions: str) -> None:
    event = commands.promote(three_versions, "2", stage="Staging")
    assert (event.stage, event.reason, event.to_version) == ("Staging", "staged by hand", "2")
    client = MlflowClient()
    assert str(client.get_model_version_by_alias(three_versions, "challenger").version) == "2"
    assert _production(three_versions) == "1"
    assert violations(client, three_versions) == []


def test_staging_the_champion_is_refused_saying_a_challenger_must_be_another_version(
    three_versions: str,
) -> None:
    with pytest.raises(
        RegistryError,
        match=r"version 1 of 'iris-test' is in Production \(the champion\); a challenger must "
        "be another version",
    ):
        commands.promote(three_versions, "1", stage="Staging")
    assert production.challenger_version(MlflowClient(), three_versions) is None


def test_staging_the_challenger_again_is_refused_pointing_to_live_gate(three_versions: str) -> None:
    commands.promote(three_versions, "2", stage="Staging")
    with pytest.raises(RegistryError, match=r"already in Staging \(the challenger\); judge it"):
        commands.promote(three_versions, "2", stage="Staging")
    assert len(production.history(MlflowClient(), three_versions)) == 2


def test_promoting_to_a_stage_other_than_production_or_staging_is_refused(
    three_versions: str,
) -> None:
    with pytest.raises(RegistryError, match="to stage 'Archived': choose Production or Staging"):
        commands.promote(three_versions, "2", stage="Archived")


def test_history_rows_show_the_challenger_staged_then_promoted_and_rollback_skips_staging(
    three_versions: str,
) -> None:
    commands.promote(three_versions, "2", "try it live", stage="Staging")
    commands.promote(three_versions, "2", "won live")
    rows = commands.history_rows(production.history(MlflowClient(), three_versions))
    assert rows[0] == ("time", "action", "stage", "from", "to", "actor", "reason")
    assert [(r[1], r[2], r[3], r[4], r[6]) for r in rows[1:]] == [
        ("promote", "Production", "1", "2", "won live"),
        ("promote", "Staging", "-", "2", "try it live"),
        ("gate", "Production", "-", "1", rows[3][6]),
    ]
    assert commands.rollback(three_versions).to_version == "1"
    assert violations(MlflowClient(), three_versions) == []
