"""Faults tested, not hoped about: real pipeline processes killed at every registry write.

Each case copies one prepared store, runs the real `python -m pipeline <command>` with one fail
point enabled (the process SIGKILLs itself right after that write), checks it died so, then
runs the next command and checks the invariant with plain MLflow calls: one version in
Production, champion on it, the history's last event pointing to it, at most one version in
Staging with challenger on it, no intent, no lock, gate tags that tell the truth. The
processes of one command run side by side, each on its own copy.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pytest
import yaml
from mlflow.tracking import MlflowClient
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.failpoints import ENVIRONMENT_VARIABLE, REGISTRY_POINTS
from pipeline.registry import commands, doctor, production, transaction
from pipeline.steps import evaluate, flow, ingest, train
from tests.pipeline.factories import REPO_ROOT
from tests.pipeline.registry.invariants import registry_faults, violations

pytestmark = pytest.mark.process

NAME = "crash-test"
WEAK = {"class_path": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.0005}}


@dataclass(frozen=True)
class Prepared:
    directory: Path
    weak_config: Path
    good_config: Path


def _use_store(monkeypatch: pytest.MonkeyPatch, uri: str) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)


def _forget_store() -> None:
    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None


@pytest.fixture(scope="module")
def prepared(
    tmp_path_factory: pytest.TempPathFactory, migrated_store_template: Path
) -> Iterator[Prepared]:
    """v1 weak (the gate's first model), v2 good (registered, never gated), v3 a copy of v1
    promoted by hand: Production is v3 and a rollback leads back to v1."""
    directory = tmp_path_factory.mktemp("crash-store")
    shutil.copyfile(migrated_store_template, directory / "mlflow.db")
    weak_path, good_path = registry_faults.write_configs(directory, NAME)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(directory)
        _use_store(monkeypatch, f"sqlite:///{directory / 'mlflow.db'}")
        flow.run_all(load_config(weak_path))
        good = load_config(good_path)
        trained = train.run(good, ingest.run(good))
        evaluate.run(good, trained.run_id, trained.model, trained.split)
        flow.register_run(good, trained.run_id)
        client = MlflowClient()
        first = client.get_model_version(NAME, "1")
        client.create_model_version(NAME, f"models:/{NAME}/1", run_id=first.run_id)
        commands.promote(NAME, "3", "prepared")
        _forget_store()
    yield Prepared(directory, weak_path, good_path)


@pytest.fixture
def store_copies(
    prepared: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    """A copy of the prepared store per fail point: {point: tracking URI}."""
    copies = {}
    for point in REGISTRY_POINTS:
        target = tmp_path / point
        target.mkdir()
        shutil.copyfile(prepared.directory / "mlflow.db", target / "mlflow.db")
        copies[point] = f"sqlite:///{target / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    yield copies
    _forget_store()


def _env(uri: str, point: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_TRACKING_URI=uri,
        MLFLOW_REGISTRY_URI=uri,
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONPATH=str(REPO_ROOT),
        **{ENVIRONMENT_VARIABLE: point},
    )
    return env


def _kill_all(copies: dict[str, str], argv: list[str]) -> None:
    """Run `python -m pipeline argv` on every copy with its fail point; all must die by SIGKILL."""
    _kill_each(copies, [sys.executable, "-m", "pipeline", *argv], argv[0])


def _kill_each(copies: dict[str, str], command: list[str], label: str) -> None:
    """Run `command` on every copy with its fail point; all must die by SIGKILL."""
    running = {
        point: subprocess.Popen(
            command,
            cwd=Path(uri.removeprefix("sqlite:///")).parent,
            env=_env(uri, point),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for point, uri in copies.items()
    }
    for point, process in running.items():
        _, err = process.communicate(timeout=300)
        assert process.returncode == -signal.SIGKILL, (
            f"{label} with {point} exited {process.returncode}, not by SIGKILL:\n{err[-2000:]}"
        )


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _production(client: MlflowClient) -> str | None:
    version = production.production_version(client, NAME)
    return None if version is None else str(version.version)


def _repair_each(copies: dict[str, str]) -> dict[str, MlflowClient]:
    """`doctor --repair` on every copy (in this process); each must end consistent."""
    clients = {}
    for point, uri in copies.items():
        client = _client(uri)
        assert violations(client, NAME), f"a kill at {point} left nothing to repair?"
        report = doctor.run(client, NAME, repair=True)
        assert report.consistent, (point, report.remaining)
        assert violations(client, NAME) == [], point
        clients[point] = client
    return clients


def test_a_promote_killed_after_any_write_is_finished_by_doctor_repair(
    store_copies: dict[str, str],
) -> None:
    _kill_all(store_copies, ["promote", "--name", NAME, "--version", "2", "--reason", "kill"])
    for point, client in _repair_each(store_copies).items():
        latest = production.history(client, NAME)[0]
        assert (_production(client), latest.action, latest.to_version) == ("2", "promote", "2")
        assert client.get_model_version(NAME, "2").tags["promoted.by"], point


def test_a_rollback_killed_after_any_write_is_finished_by_doctor_repair(
    store_copies: dict[str, str],
) -> None:
    _kill_all(store_copies, ["rollback", "--name", NAME, "--reason", "kill"])
    for point, client in _repair_each(store_copies).items():
        latest = production.history(client, NAME)[0]
        assert (_production(client), latest.action, latest.from_version) == ("1", "rollback", "3")
        assert [e.action for e in production.history(client, NAME)] == [
            "rollback",
            "promote",
            "gate",
        ], point


def test_a_gate_killed_after_any_write_is_finished_with_its_decision_tags_last(
    store_copies: dict[str, str], prepared: Prepared
) -> None:
    _kill_all(store_copies, ["gate", "--config", str(prepared.good_config), "--version", "2"])
    finished = {"registry.after_outcome", "registry.before_unlock"}
    for point, uri in store_copies.items():
        client = _client(uri)
        # The decision is the outcome, written last: present only once the stage, alias and
        # history already say so.
        assert ("gate.decision" in client.get_model_version(NAME, "2").tags) == (point in finished)
        assert _production(client) == ("3" if point == "registry.after_intent" else "2"), point
    for point, client in _repair_each(store_copies).items():
        tags = client.get_model_version(NAME, "2").tags
        assert (_production(client), tags["gate.decision"]) == ("2", "promoted"), point
        assert tags["gate.champion_version"] == "3"
        assert production.history(client, NAME)[0].action == "gate"


def test_a_promote_killed_after_the_stage_moved_is_finished_by_the_same_promote_again(
    prepared: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # The case: stage moved, alias and history not; the lock left behind.
    shutil.copyfile(prepared.directory / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _kill_all({"registry.after_stage": uri}, ["promote", "--name", NAME, "--version", "2"])
    client = _client(uri)
    assert _production(client) == "2"
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == "3"
    monkeypatch.chdir(tmp_path)
    _use_store(monkeypatch, uri)
    try:
        assert main(["promote", "--name", NAME, "--version", "2"]) == 4
        assert "version 2 of 'crash-test' is already in Production" in caplog.text
        assert "finished the interrupted promote of version 2" in caplog.text
        assert violations(client, NAME) == []
        assert main(["rollback", "--name", NAME]) == 0
        assert "rolled back to version 3 (was 2)" in capsys.readouterr().out
        assert violations(client, NAME) == []
    finally:
        _forget_store()


def test_the_lock_of_a_killed_promote_does_not_make_the_next_command_wait_for_it(
    prepared: Prepared, tmp_path: Path
) -> None:
    shutil.copyfile(prepared.directory / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    _kill_all({"registry.before_unlock": uri}, ["promote", "--name", NAME, "--version", "2"])
    client = _client(uri)
    assert violations(client, NAME) == ["the Production lock is left"]
    # Stale detection would need 600 s here: only the dead-process rule can free it in time.
    with production.production_lock(client, NAME, timeout_seconds=30, stale_after_seconds=600):
        pass
    assert violations(client, NAME) == []


def test_a_gate_killed_before_its_stage_move_never_lets_main_report_a_false_promoted(
    mlflow_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The first finding: killed between the decision and the stage move, a re-run of
    # main hit the cache and printed `gate: promoted` while Production was empty.
    weak, _ = registry_faults.write_configs(tmp_path, NAME)
    killed = subprocess.run(
        [sys.executable, "-m", "pipeline", "main", "--config", str(weak)],
        cwd=tmp_path,
        env=_env(mlflow_store, "registry.after_intent"),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    client = MlflowClient()
    assert _production(client) is None
    assert "gate.decision" not in client.get_model_version(NAME, "1").tags
    assert main(["main", "--config", str(weak)]) == 0
    out = capsys.readouterr().out
    # The cache hit first finishes the interrupted change, then reports the registry as it is.
    assert (
        "cache hit" in out and "gate: not run again (cache hit): version 1 is in Production" in out
    )
    assert _production(client) == "1"
    assert violations(client, NAME) == []


def test_a_cache_hit_reports_the_registry_now_not_the_decision_recorded_at_first(
    mlflow_store: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weak, _ = registry_faults.write_configs(tmp_path, NAME)
    assert main(["main", "--config", str(weak)]) == 0
    client = MlflowClient()
    client.create_model_version(NAME, f"models:/{NAME}/1")
    commands.promote(NAME, "2")
    capsys.readouterr()
    assert main(["main", "--config", str(weak)]) == 0
    out = capsys.readouterr().out
    assert "first model" not in out
    assert (
        "gate: not run again (cache hit): version 1 is Archived (promoted by the gate earlier, "
        "replaced since); Production is version 2"
    ) in out
    commands.rollback(NAME)
    assert main(["main", "--config", str(weak)]) == 0
    out = capsys.readouterr().out
    assert "gate: not run again (cache hit): version 1 is in Production" in out
    assert "first model" not in out


def test_promotes_and_rollbacks_killed_at_random_moments_leave_a_consistent_registry(
    prepared: Prepared, tmp_path: Path
) -> None:
    # A small sample of bench/registry_faults.py: random delays, not fail points.
    shutil.copyfile(prepared.directory / "mlflow.db", tmp_path / "mlflow.db")
    store = registry_faults.Store(
        uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        workdir=tmp_path,
        weak_config=prepared.weak_config,
        good_config=prepared.good_config,
        name=NAME,
        windows={"promote": 0.5, "rollback": 0.5},
    )
    try:
        results = registry_faults.run_kills(store, 10, seed=1, operations=["promote", "rollback"])
    finally:
        _forget_store()
    assert sum(r.killed for r in results) == 10
    assert [r.broken_after_next for r in results if r.broken_after_next] == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        assert violations(store.client(), NAME) == []


def test_a_rejecting_gate_killed_before_its_decision_leaves_the_version_undecided(
    prepared: Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    shutil.copyfile(prepared.directory / "mlflow.db", tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    strict = yaml.safe_load(prepared.good_config.read_text())
    strict["gate"]["threshold"] = 0.999
    config = tmp_path / "strict.yaml"
    config.write_text(yaml.safe_dump(strict))
    gate_two = ["gate", "--config", str(config), "--version", "2"]
    _kill_all({"gate.after_evidence_tags": uri}, gate_two)
    client = _client(uri)
    tags = client.get_model_version(NAME, "2").tags
    assert "< threshold 0.9990" in tags["gate.reason"] and "gate.decision" not in tags
    assert violations(client, NAME) == ["the Production lock is left"]
    monkeypatch.chdir(tmp_path)
    _use_store(monkeypatch, uri)
    try:
        assert main(gate_two) == 0
        assert "crash-test v2 rejected: test_f1_macro" in capsys.readouterr().out
        assert client.get_model_version(NAME, "2").tags["gate.decision"] == "rejected"
        assert violations(client, NAME) == []
        assert _production(client) == "3"
    finally:
        _forget_store()


# --- Staging: the challenger staged by the gate, and retired ---------------------------------

# No command retires a challenger but live-gate, which needs a prediction log: a real process
# calling the transaction itself is killed instead.
RETIRE = (
    "import sys\n"
    "from mlflow.tracking import MlflowClient\n"
    "from pipeline.registry import transaction\n"
    "transaction.retire(MlflowClient(), sys.argv[1], sys.argv[2], action='live-reject',\n"
    "    reason='kill', outcome_tags={'gate.reason': 'worse live', 'gate.decision': 'rejected'})\n"
)


def _slots(client: MlflowClient) -> tuple[str | None, str | None, dict[str, str]]:
    """(Production version, Staging version, aliases)."""
    challenger = production.challenger_version(client, NAME)
    aliases = client.get_registered_model(NAME).aliases or {}
    return (
        _production(client),
        None if challenger is None else str(challenger.version),
        {alias: str(version) for alias, version in aliases.items()},
    )


def test_a_live_gate_staging_killed_after_any_write_ends_with_the_challenger_staged(
    store_copies: dict[str, str], prepared: Prepared, tmp_path: Path
) -> None:
    live = yaml.safe_load(prepared.good_config.read_text())
    live["gate"]["live"] = True
    config = tmp_path / "live.yaml"
    config.write_text(yaml.safe_dump(live))
    _kill_all(store_copies, ["gate", "--config", str(config), "--version", "2"])
    finished = {"registry.after_outcome", "registry.before_unlock"}
    for point, uri in store_copies.items():
        client = _client(uri)
        # Production is never touched; the decision, written last, only once Staging says so.
        assert ("gate.decision" in client.get_model_version(NAME, "2").tags) == (point in finished)
        staged = None if point == "registry.after_intent" else "2"
        assert _slots(client)[:2] == ("3", staged), point
    for point, client in _repair_each(store_copies).items():
        assert _slots(client) == ("3", "2", {"champion": "3", "challenger": "2"}), point
        tags = client.get_model_version(NAME, "2").tags
        assert (tags["gate.decision"], tags["gate.champion_version"]) == ("staged", "3"), point
        assert "sent to Staging (challenger)" in tags["gate.reason"]
        latest = production.history(client, NAME)[0]
        assert (latest.stage, latest.action, latest.to_version) == ("Staging", "gate", "2")


def test_a_retire_killed_after_any_write_ends_with_the_challenger_archived(
    store_copies: dict[str, str],
) -> None:
    for uri in store_copies.values():
        transaction.change_stage(
            _client(uri), NAME, "2", stage="Staging", action="promote", reason="prepared"
        )
    _kill_each(store_copies, [sys.executable, "-c", RETIRE, NAME, "2"], "retire")
    for point, client in _repair_each(store_copies).items():
        assert _slots(client) == ("3", None, {"champion": "3"}), point
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            assert client.get_model_version(NAME, "2").current_stage == "Archived", point
        tags = client.get_model_version(NAME, "2").tags
        assert (tags["gate.decision"], tags["gate.reason"]) == ("rejected", "worse live"), point
        events = production.history(client, NAME)
        assert [(e.stage, e.action) for e in events[:2]] == [
            ("Archived", "live-reject"),
            ("Staging", "promote"),
        ], point
