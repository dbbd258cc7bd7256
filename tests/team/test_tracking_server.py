"""A team's tracking server: the unchanged pipeline against PostgreSQL, over HTTP only.

The model server against the same tracking server is in test_replicas.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pipeline.errors import RegistryError
from pipeline.registry import production

if TYPE_CHECKING:
    from conftest import Team, TrackingServer, TrainedVersion

pytestmark = [pytest.mark.e2e, pytest.mark.team]


def test_the_script_creates_the_database_and_the_registry_lives_in_postgresql(
    tracking_server: TrackingServer, trained: TrainedVersion
) -> None:
    rows = tracking_server.query(
        "SELECT name, version, current_stage FROM model_versions WHERE name = 'iris-team'"
    )
    assert rows == [("iris-team", 1, "Production")]


def test_the_pipeline_registers_and_promotes_through_the_server(
    team: Team, trained: TrainedVersion
) -> None:
    assert "registered iris-team version 1" in trained.stdout
    assert "gate: promoted: first model" in trained.stdout
    client = team.client()
    version = client.get_model_version("iris-team", "1")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert version.current_stage == "Production"
    assert version.tags["gate.decision"] == "promoted"
    assert str(client.get_model_version_by_alias("iris-team", "champion").version) == "1"
    # The lock taken for the promotion is gone once released.
    assert [m.name for m in client.search_registered_models("name LIKE 'iris-team%'")] == [
        "iris-team"
    ]


def test_artifacts_are_proxied_into_the_servers_destination(
    team: Team, tracking_server: TrackingServer, trained: TrainedVersion
) -> None:
    run = team.client().get_run(trained.run_id)
    assert run.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = {path.name for path in Path(tracking_server.artifacts).rglob("*") if path.is_file()}
    assert "MLmodel" in stored
    assert any(name.endswith(".skops") for name in stored)


def test_history_over_http_lists_the_promotion(team: Team, trained: TrainedVersion) -> None:
    (event,) = production.history(team.client(), "iris-team")
    assert (event.action, event.from_version, event.to_version) == ("gate", None, "1")
    assert event.reason.startswith("first model")


def test_an_unknown_version_is_refused_by_name_over_http(team: Team) -> None:
    with pytest.raises(RegistryError, match="registered model 'no-such-model' does not exist"):
        production.get_version(team.client(), "no-such-model", "1")
