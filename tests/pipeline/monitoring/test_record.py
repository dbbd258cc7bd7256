"""A monitoring run ends FINISHED, or FAILED when writing it fails: never left RUNNING."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import load_config
from pipeline.monitoring.record import monitoring_run


def test_a_run_whose_writes_fail_ends_failed_and_the_error_goes_on(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    config = load_config(write_config(iris_config()))
    client = MlflowClient()
    with monitoring_run(client, config, "fine", None) as finished:
        client.log_param(finished, "a", "1")
    with (
        pytest.raises(RuntimeError, match="the store refused"),
        monitoring_run(client, config, "broken", None) as failed,
    ):
        raise RuntimeError("the store refused")
    assert client.get_run(finished).info.status == "FINISHED"
    assert client.get_run(failed).info.status == "FAILED"
    experiment = client.get_experiment(client.get_run(failed).info.experiment_id)
    assert experiment.name == config.monitoring_experiment
    assert client.get_run(failed).info.run_name == "broken"
