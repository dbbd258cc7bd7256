"""Model layer: the monitor reads a real prediction log of a real model and logs what it found.

One iris model is trained (and promoted) per module in a throwaway store; every test writes
its own prediction log, in the layout the server writes, next to it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking import MlflowClient
from sklearn.pipeline import Pipeline

from pipeline import artifacts, metrics
from pipeline.config import PipelineConfig, load_config
from pipeline.contracts import TIMESTAMP
from pipeline.errors import DataValidationError, RegistryError
from pipeline.monitoring import feedback, monitor, record
from pipeline.monitoring.prediction_log import part_name
from pipeline.steps import flow, train
from tests.pipeline.factories import store_of_its_own

MODEL = "iris-test"
START = datetime(2025, 3, 1, tzinfo=UTC)
ROWS = 1200
FEATURES = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
IRIS = {
    "experiment": MODEL,
    "registered_model": MODEL,
    "task": "classification",
    "data": {"dataset": "iris", "target": "species"},
    "estimator": {
        "class_path": "sklearn.linear_model.LogisticRegression",
        "params": {"max_iter": 500},
    },
    "split": {"test_size": 0.3, "seed": 42, "stratify": True, "cv_folds": 3},
    "gate": {"metric": "test_f1_macro", "threshold": 0.8},
}


@dataclass(frozen=True)
class Trained:
    root: Path
    training: train.TrainResult

    @property
    def model(self) -> Pipeline:
        return self.training.model

    @property
    def X(self) -> pd.DataFrame:
        return self.training.split.X_train

    @property
    def y(self) -> pd.Series:
        return self.training.split.y_train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trained]:
    """Version 1 of iris-test in Production, in a store of its own (like `mlflow_store`)."""
    root = tmp_path_factory.mktemp("monitor-store")
    with store_of_its_own(root):
        path = root / "iris.yaml"
        path.write_text(yaml.safe_dump(IRIS))
        result = flow.run_all(load_config(path))
        assert result.decision.promoted
        assert result.training is not None
        yield Trained(root=root, training=result.training)


@pytest.fixture
def config(trained: Trained, tmp_path: Path) -> PipelineConfig:
    """The iris config with this test's own prediction log directory."""
    path = tmp_path / "iris.yaml"
    path.write_text(yaml.safe_dump({**IRIS, "monitoring": {"log_dir": str(tmp_path / "log")}}))
    return load_config(path)


def log_traffic(
    config: PipelineConfig,
    model: Pipeline,
    X: pd.DataFrame,
    *,
    start: datetime = START,
    span: timedelta = timedelta(days=2),
    version: str = "1",
    drop: tuple[str, ...] = (),
    served: bool | None = None,
    failed: int = 0,
) -> list[str]:
    """Predict `X` with `model` and write one predictions part as the server would.

    Rows are spread evenly over `span` from `start`; returns the request ids. With `served`,
    the part has the live columns (`contracts.LIVE_COLUMNS`), every row served or not, and
    its first `failed` rows failed (an `error`, no prediction).
    """
    rows = len(X)
    predicted = model.predict(X)
    proba = model.predict_proba(X)
    ids = [f"{version}-{start:%Y%m%d}-{i}" for i in range(rows)]
    step = span / rows
    columns: dict[str, Any] = {
        "request_id": pa.array(ids, pa.string()),
        "row": pa.array(np.zeros(rows, dtype=np.int64)),
        "timestamp": pa.array([start + i * step for i in range(rows)], TIMESTAMP),
        "model_name": pa.array([config.registered_model] * rows, pa.string()),
        "model_version": pa.array([version] * rows, pa.string()),
    }
    for name in FEATURES:
        if name not in drop:
            columns[f"feature.{name}"] = pa.array(X[name].to_numpy(dtype=float), pa.float64())
    columns["prediction"] = pa.array([str(p) for p in predicted], pa.string())
    for index, label in enumerate(model.classes_):
        columns[f"proba.{label}"] = pa.array(proba[:, index], pa.float64())
    if served is not None:
        errors = ["TimeoutError: no answer"] * failed + [None] * (rows - failed)
        columns["prediction"] = pa.array(
            [None] * failed + [str(p) for p in predicted[failed:]], pa.string()
        )
        columns["role"] = pa.array(["champion"] * rows, pa.string())
        columns["served"] = pa.array([served] * rows, pa.bool_())
        columns["latency_ms"] = pa.array([1.0] * rows, pa.float64())
        columns["error"] = pa.array(errors, pa.string())
    directory = Path(config.monitoring.log_dir) / config.registered_model / "predictions"
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), directory / part_name(start))
    return ids


def send_labels(config: PipelineConfig, ids: list[str], labels: pd.Series, tmp: Path) -> None:
    path = tmp / "labels.csv"
    pd.DataFrame({"request_id": ids, "label": labels.astype(str).to_numpy()}).to_csv(
        path, index=False
    )
    feedback.run(config, path)


def same_distribution(
    trained: Trained, rows: int = ROWS, seed: int = 0
) -> tuple[pd.DataFrame, pd.Series]:
    """Training rows and their labels drawn with replacement: the reference distribution."""
    positions = np.random.default_rng(seed).integers(0, len(trained.X), rows)
    return (
        trained.X.iloc[positions].reset_index(drop=True),
        trained.y.iloc[positions].reset_index(drop=True),
    )


def _monitoring_runs(config: PipelineConfig) -> list[Any]:
    experiment = MlflowClient().get_experiment_by_name(config.monitoring_experiment)
    if experiment is None:
        return []
    return MlflowClient().search_runs([experiment.experiment_id])


def test_shifted_traffic_is_flagged_and_the_run_carries_metrics_and_both_reports(
    trained: Trained, config: PipelineConfig, tmp_path: Path
) -> None:
    shifted = same_distribution(trained)[0].assign(
        sepal_length_cm=lambda f: f["sepal_length_cm"] + 1.5,
        petal_length_cm=lambda f: f["petal_length_cm"] + 2.0,
        petal_width_cm=lambda f: f["petal_width_cm"] + 1.0,
    )
    log_traffic(config, trained.model, shifted)
    result = monitor.run(config, since=START, until=START + timedelta(days=2))

    assert result.drift_detected and result.needs_action
    assert set(result.drift.drifted_columns) >= {"sepal_length_cm", "petal_length_cm"}
    assert not result.drift.columns["sepal_width_cm"].drifted
    assert (result.model_name, result.model_version, result.rows) == (MODEL, "1", ROWS)

    run = MlflowClient().get_run(result.run_id)
    experiment = MlflowClient().get_experiment(run.info.experiment_id)
    assert experiment.name == "iris-test-monitoring"
    assert run.info.status == "FINISHED"
    tags = run.data.tags
    assert tags["model.name"] == MODEL
    assert tags["model.version"] == "1"
    assert tags["model.run_id"] == trained.training.run_id
    assert tags["monitor.verdict"] == "drift"
    assert tags["monitor.window_start"] == START.isoformat()
    assert tags["monitor.window_end"] == (START + timedelta(days=2)).isoformat()
    metrics = run.data.metrics
    assert metrics["drift.dataset"] == 1.0
    assert metrics["drift.share"] == pytest.approx(result.drift.drifted_share)
    assert metrics["rows"] == ROWS
    assert metrics["labelled_rows"] == 0
    assert metrics["perf.degraded"] == 0.0
    assert metrics["drift.petal_length_cm.drifted"] == 1.0
    assert metrics["drift.petal_length_cm.wasserstein"] >= 0.1
    assert metrics["drift.petal_length_cm.psi"] > 0.25
    assert "drift.petal_length_cm.js" not in metrics  # a numeric column has no JS distance
    assert "drift.prediction.js" in metrics
    assert run.data.params["drift.wasserstein"] == "0.1"
    assert run.data.params["performance.sigma"] == "3.0"

    local = Path(mlflow.artifacts.download_artifacts(run_id=result.run_id, dst_path=str(tmp_path)))
    report = json.loads((local / record.REPORT_JSON).read_text())
    assert report["model"] == {
        "name": MODEL,
        "version": "1",
        "run_id": trained.training.run_id,
    }
    assert report["verdict"] == "drift"
    assert report["drift"]["dataset_drift"] is True
    assert set(report["drift"]["columns"]) == {*FEATURES, "prediction"}
    assert report["performance"] == {"degraded": False, "windows": []}
    page = (local / record.REPORT_HTML).read_text()
    assert page.count('src="data:image/png;base64,') == len(FEATURES) + 1
    assert "<h3>petal_length_cm (drifted)</h3>" in page
    assert "<h3>sepal_width_cm</h3>" in page
    assert "http" not in page.replace("https://", "").replace("http://", "")  # no fetches


def test_same_distribution_traffic_with_its_true_labels_shows_no_drift_and_no_degradation(
    trained: Trained, config: PipelineConfig, tmp_path: Path
) -> None:
    rows, truth = same_distribution(trained, seed=1)
    # Logged over the two days before now: the default window (everything up to now) has it.
    now = datetime.now(UTC)
    start = now - timedelta(days=2)
    ids = log_traffic(config, trained.model, rows, start=start, span=timedelta(days=1, hours=23))
    send_labels(config, ids, truth, tmp_path)
    result = monitor.run(config)

    assert not result.drift.dataset_drift
    assert not result.performance_degraded
    assert not result.needs_action
    assert result.labelled_rows == len(rows)
    assert result.window_end >= now
    assert len(result.performance) in (2, 3)  # two days of 1D windows, cut at midnight
    assert all(w.metrics["accuracy"].value > 0.9 for w in result.performance)
    history = MlflowClient().get_metric_history(result.run_id, "perf.accuracy")
    assert [m.step for m in history] == list(range(len(result.performance)))
    assert MlflowClient().get_run(result.run_id).data.tags["monitor.verdict"] == "ok"


def test_labels_the_model_gets_wrong_are_flagged_as_degraded_performance(
    trained: Trained, config: PipelineConfig, tmp_path: Path
) -> None:
    rows, _ = same_distribution(trained, seed=2)
    ids = log_traffic(config, trained.model, rows)
    classes = list(trained.model.classes_)
    predicted = trained.model.predict(rows)
    wrong = pd.Series([classes[(classes.index(p) + 1) % len(classes)] for p in predicted])
    send_labels(config, ids, wrong, tmp_path)
    result = monitor.run(config, since=START, until=START + timedelta(days=2))

    assert not result.drift_detected
    assert result.performance_degraded and result.needs_action
    assert all("accuracy" in w.degraded_metrics for w in result.performance)
    check = result.performance[0].metrics["accuracy"]
    assert check.value == 0.0
    assert check.lower > 0.0
    run = MlflowClient().get_run(result.run_id)
    assert run.data.metrics["perf.degraded"] == 1.0
    assert run.data.metrics["labelled_rows"] == len(rows)
    assert run.data.tags["monitor.verdict"] == "degraded"


def _refused(config: PipelineConfig, error: type[Exception], **window: Any) -> str:
    before = len(_monitoring_runs(config))
    with pytest.raises(error) as raised:
        monitor.run(config, **window)
    assert len(_monitoring_runs(config)) == before  # nothing logged
    return str(raised.value)


def test_an_empty_window_is_a_data_error_that_names_the_window(
    trained: Trained, config: PipelineConfig
) -> None:
    log_traffic(config, trained.model, same_distribution(trained, rows=50)[0])
    since, until = START + timedelta(days=10), START + timedelta(days=11)
    message = _refused(config, DataValidationError, since=since, until=until)
    assert message.startswith(
        f"no predictions of iris-test v1 in {config.monitoring.log_dir}/iris-test between "
        f"{since.isoformat()} and {until.isoformat()}"
    )
    assert DataValidationError.exit_code == 3


def test_no_log_at_all_says_where_it_looked(config: PipelineConfig) -> None:
    message = _refused(config, DataValidationError)
    assert message.startswith(
        f"no prediction log for iris-test in {config.monitoring.log_dir}/iris-test/predictions"
    )


def test_a_log_of_other_versions_only_names_the_versions_it_has(
    trained: Trained, config: PipelineConfig
) -> None:
    log_traffic(config, trained.model, same_distribution(trained, rows=30)[0], version="7")
    log_traffic(config, trained.model, same_distribution(trained, rows=20)[0], version="2")
    message = _refused(config, DataValidationError, since=START, until=START + timedelta(days=2))
    assert "no predictions of iris-test v1 in" in message
    assert "found versions 2 (20 rows), 7 (30 rows)" in message


def test_a_log_missing_a_feature_column_is_refused_naming_it(
    trained: Trained, config: PipelineConfig
) -> None:
    log_traffic(
        config, trained.model, same_distribution(trained, rows=40)[0], drop=("petal_width_cm",)
    )
    message = _refused(config, DataValidationError, since=START, until=START + timedelta(days=2))
    assert "lacks the column(s) feature.petal_width_cm in" in message


def test_a_version_without_a_reference_profile_is_refused_with_what_to_do(
    trained: Trained, config: PipelineConfig
) -> None:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(MODEL)
    assert experiment is not None
    bare = client.create_run(experiment.experiment_id).info.run_id
    source = client.get_model_version(MODEL, "1").source
    version = client.create_model_version(MODEL, source, run_id=bare).version
    message = _refused(config, RegistryError, version=str(version))
    assert message.startswith(f"version {version} of 'iris-test' has no reference profile")
    assert message.endswith("retrain it with this pipeline version")
    assert RegistryError.exit_code == 4


def test_the_reference_profile_holds_the_evaluate_metrics_per_held_out_chunk(
    trained: Trained, config: PipelineConfig, tmp_path: Path
) -> None:
    training = trained.training
    local = mlflow.artifacts.download_artifacts(
        run_id=training.run_id, artifact_path=artifacts.REFERENCE_PROFILE_PATH, dst_path=tmp_path
    )
    profile = json.loads(Path(local).read_text())
    chunks = profile["performance"]["metric_chunks"]
    logged = MlflowClient().get_run(training.run_id).data.metrics
    # The task's metrics (the run also carries held-out diagnostics monitoring does not use).
    held_out = {
        m.held_out: logged[m.held_out]
        for m in metrics.for_task("classification")
        if m.held_out in logged
    }
    assert set(chunks) == {name.removeprefix("test_") for name in held_out}
    assert all(
        len(values) == config.monitoring.performance.reference_chunks for values in chunks.values()
    )
    assert set(profile["columns"]) == {*FEATURES, "prediction"}
    # The monitor's metric function and the evaluate step's agree on the same rows.
    split = training.split
    model = training.model
    same = metrics.prediction_metrics(
        "classification",
        split.y_test,
        model.predict(split.X_test),
        proba=model.predict_proba(split.X_test),
        classes=list(model.classes_),
    )
    assert {f"test_{k}": v for k, v in same.items()} == pytest.approx(held_out)


def test_the_monitor_counts_a_versions_unserved_answers_and_skips_its_failed_ones(
    trained: Trained, config: PipelineConfig
) -> None:
    X = same_distribution(trained)[0]
    half = len(X) // 2
    log_traffic(config, trained.model, X.iloc[:half], served=True, failed=10)
    # The same version answering requests in the background (a canary's paired answers).
    log_traffic(config, trained.model, X.iloc[half:], start=START + timedelta(days=1), served=False)
    result = monitor.run(config, since=START, until=START + timedelta(days=3))
    assert result.rows == len(X) - 10
    assert not result.drift_detected
