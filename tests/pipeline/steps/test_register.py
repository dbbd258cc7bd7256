from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from pipeline.config import load_config
from pipeline.steps import evaluate, ingest, register, train


def test_a_registered_version_carries_lineage_metrics_and_a_description(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    config = load_config(write_config(iris_config()))
    dataset = ingest.run(config)
    training = train.run(config, dataset)
    evaluation = evaluate.run(config, training.run_id, training.model, training.split)
    registered = register.run(
        config,
        run_id=training.run_id,
        model_uri=training.model_uri,
        metrics=evaluation.metrics,
        data_hash=dataset.data_hash,
    )
    client = MlflowClient()
    version = client.get_model_version(registered.name, registered.version)
    assert version.run_id == training.run_id
    assert version.tags["data.hash"] == dataset.data_hash
    assert version.tags["config.hash"] == config.config_hash()
    assert float(version.tags["test_accuracy"]) == round(evaluation.metrics["test_accuracy"], 6)
    assert training.run_id in version.description
    assert "LogisticRegression" in version.description
    assert client.get_registered_model("iris-test").tags["task"] == "classification"
