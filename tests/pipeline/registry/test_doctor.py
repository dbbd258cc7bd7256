"""`python -m pipeline doctor`: reports without touching, repairs when asked, exits by state."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import NEEDS_ACTION_EXIT, main
from pipeline.registry import production
from tests.pipeline.registry.invariants import violations

NAME = "m"


@pytest.fixture
def broken(mlflow_store: str, tmp_path: Path) -> MlflowClient:
    """Versions 1 and 2; 1 promoted, then 2 moved to Production by the stage alone."""
    client = MlflowClient()
    client.create_registered_model(NAME)
    for number in (1, 2):
        (tmp_path / f"v{number}").mkdir()
        client.create_model_version(NAME, str(tmp_path / f"v{number}"))
    production.set_production(client, NAME, "1", action="promote", reason="first")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(NAME, "2", "Production", True)
    return client


def _snapshot(client: MlflowClient) -> tuple[object, ...]:
    model = client.get_registered_model(NAME)
    return dict(model.tags), dict(model.aliases), len(client.search_registered_models())


def test_doctor_reports_an_inconsistent_registry_with_status_10_and_changes_nothing(
    broken: MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _snapshot(broken)
    assert main(["doctor", "--name", NAME]) == NEEDS_ACTION_EXIT
    out = capsys.readouterr().out
    assert "m: Production is version 2" in out
    assert "problem: Production is version 2 but champion is on 1" in out
    assert "inconsistent: run `python -m pipeline doctor --name m --repair`" in out
    assert _snapshot(broken) == before


def test_doctor_repair_fixes_the_registry_and_a_second_look_finds_it_consistent(
    broken: MlflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", "--name", NAME, "--repair"]) == 0
    out = capsys.readouterr().out
    assert "repaired: moved champion from version 1 to 2, the Production one" in out
    assert "repaired: recorded a repair event 1 -> 2 in the history" in out
    assert violations(broken, NAME) == []
    assert main(["doctor", "--name", NAME, "--repair", "false"]) == 0
    assert "consistent: one version in Production" in capsys.readouterr().out


def test_doctor_of_an_unknown_model_exits_with_status_4_naming_it(
    mlflow_store: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert main(["doctor", "--name", "ghost", "--repair"]) == 4
    assert "registered model 'ghost' does not exist" in caplog.text
    assert not MlflowClient().search_registered_models()


def test_doctor_reports_and_repairs_a_broken_staging_slot_and_names_the_challenger(
    broken: MlflowClient, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "v3").mkdir()
    broken.create_model_version(NAME, str(tmp_path / "v3"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        broken.transition_model_version_stage(NAME, "3", "Staging")
    broken.set_registered_model_alias(NAME, "challenger", "2")  # on the Production version
    assert main(["doctor", "--name", NAME]) == NEEDS_ACTION_EXIT
    out = capsys.readouterr().out
    assert "problem: Staging is version 3 but challenger is on 2" in out
    assert "problem: Staging is version 3 but the history's last Staging event is None" in out
    assert main(["doctor", "--name", NAME, "--repair"]) == 0
    out = capsys.readouterr().out
    assert "repaired: moved challenger from version 2 to 3, the Staging one" in out
    assert "m: Production is version 2; Staging is version 3 (challenger)" in out
    assert "at most one in Staging, challenger on it" in out
    assert violations(broken, NAME) == []
