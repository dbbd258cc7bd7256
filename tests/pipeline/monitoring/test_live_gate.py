"""Model layer: live-compare and live-gate on a real registry and a prediction log written with
the contract's schemas (champion and challenger answers for the same requests, then labels).

One iris model is trained per module in a throwaway store (version 1, Production); each test
registers its own challenger from the same run, puts it in Staging, writes its own log and
judges it, so the tests do not depend on each other's registry changes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pipeline import cli, contracts
from pipeline.config import PipelineConfig, load_config
from pipeline.errors import RegistryError
from pipeline.monitoring import live_compare, live_gate
from pipeline.monitoring.prediction_log import PredictionLog, part_name
from pipeline.registry import production, transaction
from pipeline.reports import model_card
from pipeline.steps import flow
from tests.factories import iris_config
from tests.pipeline.factories import store_of_its_own

MODEL = "iris-live"
CLASSES = ["setosa", "versicolor", "virginica"]
FEATURES = [("sepal_length_cm", "double"), ("sepal_width_cm", "double")]
START = datetime(2026, 1, 5, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Store:
    root: Path
    uri: str
    config: dict[str, object]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """Version 1 of iris-live in Production, in a store of its own."""
    root = tmp_path_factory.mktemp("live-store")
    raw = iris_config(MODEL, gate={"metric": "test_accuracy", "live": True, "live_min_labels": 100})
    with store_of_its_own(root) as uri:
        path = root / "first.yaml"
        # The first model goes straight to Production: there is no champion to judge it against.
        path.write_text(yaml.safe_dump({**raw, "gate": {"metric": "test_accuracy"}}))
        assert flow.run_all(load_config(path)).decision.promoted
        yield Store(root=root, uri=uri, config=raw)


@pytest.fixture
def config(store: Store, tmp_path: Path) -> PipelineConfig:
    path = tmp_path / "iris-live.yaml"
    raw = {**store.config, "monitoring": {"log_dir": str(tmp_path / "log")}}
    path.write_text(yaml.safe_dump(raw))
    return load_config(path)


def stage_challenger(store: Store) -> tuple[str, str]:
    """A new version of the champion's run, put in Staging; returns (champion, challenger)."""
    client = MlflowClient()
    champion = production.production_version(client, MODEL)
    assert champion is not None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        staged = client.create_model_version(MODEL, str(champion.source), run_id=champion.run_id)
    transaction.change_stage(
        client, MODEL, str(staged.version), stage="Staging", action="promote", reason="test"
    )
    return str(champion.version), str(staged.version)


def answers(truth: np.ndarray, right: float, seed: int) -> np.ndarray:
    """Predictions right on about a share `right` of the requests (else the next class)."""
    wrong = np.random.default_rng(seed).random(len(truth)) > right
    shifted = np.array([CLASSES[(CLASSES.index(t) + 1) % 3] for t in truth], dtype=object)
    return np.where(wrong, shifted, truth)


def write_part(
    log_dir: Path,
    *,
    version: str,
    role: str,
    predicted: np.ndarray,
    served: bool,
    latency_ms: float,
    error: str | None = None,
) -> None:
    """One prediction part as the server writes it (the contract's schema and live columns)."""
    rows = len(predicted)
    schema = contracts.prediction_schema(FEATURES, "classification", CLASSES)
    proba = {c: (predicted == c).astype(float) for c in CLASSES}
    failed = error is not None
    columns: dict[str, object] = {
        "request_id": [f"req-{i}" for i in range(rows)],
        "row": [0] * rows,
        "timestamp": [START + timedelta(seconds=i) for i in range(rows)],
        "model_name": [MODEL] * rows,
        "model_version": [version] * rows,
        "feature.sepal_length_cm": [5.0] * rows,
        "feature.sepal_width_cm": [3.0] * rows,
        "prediction": [None] * rows if failed else list(predicted),
        **{f"proba.{c}": [None] * rows if failed else list(p) for c, p in proba.items()},
        "role": [role] * rows,
        "served": [served] * rows,
        "latency_ms": [latency_ms] * rows,
        "error": [error] * rows,
    }
    table = contracts.with_store_id(pa.table(columns, schema=schema), contracts.store_id())
    directory = log_dir / MODEL / contracts.PREDICTIONS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / part_name(START))


def write_traffic(
    config: PipelineConfig,
    champion: str,
    challenger: str,
    *,
    champion_right: float,
    challenger_right: float,
    labelled: int,
    rows: int = 400,
) -> None:
    """Shadow traffic: both versions answer every request, the champion's answer is served;
    the first `labelled` requests get a label."""
    log_dir = Path(config.monitoring.log_dir)
    truth = np.random.default_rng(0).choice(CLASSES, size=rows).astype(object)
    write_part(
        log_dir,
        version=champion,
        role=contracts.CHAMPION_ROLE,
        predicted=answers(truth, champion_right, 1),
        served=True,
        latency_ms=2.0,
    )
    write_part(
        log_dir,
        version=challenger,
        role=contracts.CHALLENGER_ROLE,
        predicted=answers(truth, challenger_right, 2),
        served=False,
        latency_ms=3.0,
    )
    labels = {"request_id": [f"req-{i}" for i in range(labelled)], "row": 0}
    frame = pd.DataFrame({**labels, "label": truth[:labelled]})
    PredictionLog(log_dir, MODEL).write_feedback(frame, START + timedelta(days=1))


def stages(client: MlflowClient, *versions: str) -> list[str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return [str(client.get_model_version(MODEL, v).current_stage) for v in versions]


def test_a_challenger_better_on_live_labels_is_promoted_and_the_alias_leaves_it(
    store: Store, config: PipelineConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    champion, challenger = stage_challenger(store)
    write_traffic(
        config, champion, challenger, champion_right=0.7, challenger_right=0.95, labelled=300
    )
    status = cli.main(["live-gate", "--config", str(config_path(config))])
    out = capsys.readouterr().out
    assert status == 0, out
    assert out.startswith(f"promoted: {MODEL} v{challenger} is now Production (was v{champion})")
    assert "better than the champion on live traffic: test_accuracy on 300 labelled" in out
    client = MlflowClient()
    assert stages(client, challenger, champion) == ["Production", "Archived"]
    aliases = client.get_registered_model(MODEL).aliases
    assert str(aliases.get(contracts.CHAMPION_ALIAS)) == challenger
    assert contracts.CHALLENGER_ALIAS not in aliases
    tags = client.get_model_version(MODEL, challenger).tags
    assert tags["gate.decision"] == "promoted" and tags["live.decision"] == "promoted"
    assert float(tags["live.ci_lower"]) > 0
    events = production.history(client, MODEL)
    assert (events[0].action, events[0].stage, events[0].to_version) == (
        "live-gate",
        "Production",
        challenger,
    )


def test_a_challenger_worse_on_live_labels_is_archived_with_a_reason_quoting_the_interval(
    store: Store, config: PipelineConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    champion, challenger = stage_challenger(store)
    write_traffic(
        config, champion, challenger, champion_right=0.95, challenger_right=0.7, labelled=300
    )
    status = cli.main(["live-gate", "--config", str(config_path(config))])
    out = capsys.readouterr().out
    assert status == 10, out
    assert out.startswith(f"rejected: {MODEL} v{challenger} is archived: worse than the champion")
    client = MlflowClient()
    assert stages(client, challenger, champion) == ["Archived", "Production"]
    assert contracts.CHALLENGER_ALIAS not in client.get_registered_model(MODEL).aliases
    tags = client.get_model_version(MODEL, challenger).tags
    assert tags["gate.decision"] == "rejected"
    assert "95% CI [-0." in tags["gate.reason"]
    assert "paired bootstrap resamples of 300 labelled live requests" in tags["gate.reason"]
    assert production.history(client, MODEL)[0].stage == "Archived"


def test_too_few_labels_leave_the_registry_alone_and_say_how_many_more(
    store: Store, config: PipelineConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    champion, challenger = stage_challenger(store)
    write_traffic(
        config, champion, challenger, champion_right=0.7, challenger_right=0.95, labelled=40
    )
    before = production.history(MlflowClient(), MODEL)[0]
    status = cli.main(["live-gate", "--config", str(config_path(config))])
    out = capsys.readouterr().out
    assert status == 20, out
    assert out.startswith(f"not enough evidence: {MODEL} v{challenger} stays the challenger")
    assert "live-gate needs 100 (60 more)" in out
    client = MlflowClient()
    assert stages(client, challenger, champion) == ["Staging", "Production"]
    assert production.history(client, MODEL)[0] == before


def test_live_compare_logs_a_run_tags_the_challenger_and_adds_live_evidence_to_its_card(
    store: Store, config: PipelineConfig
) -> None:
    champion, challenger = stage_challenger(store)
    write_traffic(
        config, champion, challenger, champion_right=0.8, challenger_right=0.9, labelled=200
    )
    found = live_compare.run(config)
    assert (found.evidence.shared, found.evidence.labelled) == (400, 200)
    assert found.champion.latency_ms[99] == pytest.approx(2.0)
    assert found.challenger.served == 0 and found.challenger.error_rate == 0
    client = MlflowClient()
    run = client.get_run(found.run_id)
    assert run.data.metrics["live.shared"] == 400
    assert run.data.metrics["challenger.latency_p50_ms"] == pytest.approx(3.0)
    assert run.data.tags["live.challenger_version"] == challenger
    listed = {a.path for a in client.list_artifacts(found.run_id, "reports")}
    assert listed == {live_compare.REPORT_HTML, live_compare.REPORT_JSON}
    tags = client.get_model_version(MODEL, challenger).tags
    assert tags["live.run_id"] == found.run_id and tags["live.labelled"] == "200"
    card = model_card.build_model_card_input(client, MODEL, challenger)
    html = model_card.render_html(card)
    assert "Live evidence" in html and f"champion v{champion}" in html


def test_live_compare_without_a_challenger_exits_4_and_says_how_to_stage_one(
    store: Store, config: PipelineConfig, caplog: pytest.LogCaptureFixture
) -> None:
    client = MlflowClient()
    staged = production.challenger_version(client, MODEL)
    if staged is not None:
        transaction.retire(client, MODEL, str(staged.version), action="test", reason="test")
    status = cli.main(["live-compare", "--config", str(config_path(config))])
    assert status == 4
    assert "has no version in Staging (alias 'challenger')" in caplog.text
    assert "promote --stage Staging" in caplog.text


def test_live_compare_without_shared_requests_exits_3_naming_the_versions_logged(
    store: Store, config: PipelineConfig, caplog: pytest.LogCaptureFixture
) -> None:
    champion, challenger = stage_challenger(store)
    write_part(
        Path(config.monitoring.log_dir),
        version=champion,
        role=contracts.CHAMPION_ROLE,
        predicted=np.array(CLASSES * 5, dtype=object),
        served=True,
        latency_ms=1.0,
    )
    status = cli.main(["live-compare", "--config", str(config_path(config))])
    assert status == 3
    assert f"answered by both champion v{champion} and challenger v{challenger}" in caplog.text
    assert "SERVING_CHALLENGER_MODE=shadow" in caplog.text


def test_a_rolled_back_canary_is_rejected_even_when_the_challenger_never_answered(
    store: Store, config: PipelineConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    champion, challenger = stage_challenger(store)
    truth = np.array(CLASSES * 20, dtype=object)
    log_dir = Path(config.monitoring.log_dir)
    write_part(
        log_dir,
        version=champion,
        role=contracts.CHAMPION_ROLE,
        predicted=truth,
        served=True,
        latency_ms=1.0,
    )
    write_part(
        log_dir,
        version=challenger,
        role=contracts.CHALLENGER_ROLE,
        predicted=truth,
        served=False,
        latency_ms=1.0,
        error="RuntimeError: always fails",
    )
    why = "2026-01-05T00:01:00+00:00: error rate 100% vs 0% over 60 requests"
    MlflowClient().set_model_version_tag(MODEL, challenger, contracts.CANARY_ROLLBACK_TAG, why)
    status = cli.main(["live-gate", "--config", str(config_path(config))])
    out = capsys.readouterr().out
    assert status == 10, out
    assert f"is archived: the canary was rolled back: {why}" in out
    assert stages(MlflowClient(), challenger) == ["Archived"]


def test_live_gate_as_a_command_exits_10_and_prints_the_outcome_first(
    store: Store, config: PipelineConfig
) -> None:
    champion, challenger = stage_challenger(store)
    write_traffic(
        config, champion, challenger, champion_right=0.95, challenger_right=0.6, labelled=200
    )
    finished = subprocess.run(
        [sys.executable, "-m", "pipeline", "live-gate", "--config", str(config_path(config))],
        capture_output=True,
        text=True,
        cwd=store.root,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=300,
    )
    assert finished.returncode == 10, finished.stderr[-3000:]
    first, *evidence = finished.stdout.splitlines()
    assert first.startswith(f"rejected: {MODEL} v{challenger} is archived: worse than the champion")
    assert any(line.startswith("shared requests: 400") for line in evidence)
    assert evidence[-1].startswith("run_id=")


def config_path(config: PipelineConfig) -> Path:
    return config.base_dir / f"{config.name}.yaml"


def test_a_challenger_replaced_while_live_gate_judged_is_left_alone_and_named(
    store: Store, config: PipelineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    champion, challenger = stage_challenger(store)
    write_traffic(
        config, champion, challenger, champion_right=0.7, challenger_right=0.95, labelled=300
    )
    gather = live_compare.gather

    def gather_then_restage(*args: object, **kwargs: object) -> live_compare.LiveComparison:
        found = gather(*args, **kwargs)  # type: ignore[arg-type]
        stage_challenger(store)  # another version takes Staging while the evidence is judged
        return found

    monkeypatch.setattr(live_compare, "gather", gather_then_restage)
    with pytest.raises(RegistryError) as refused:
        live_gate.run(config)
    assert f"changed while live-gate judged challenger v{challenger}" in str(refused.value)
    assert "run live-gate again" in str(refused.value)
    assert refused.value.exit_code == 4
    assert stages(MlflowClient(), champion) == ["Production"]
