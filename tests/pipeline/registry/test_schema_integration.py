"""The input-schema guard as users meet it: promote, the CLI and the gate refuse a break."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pipeline.cli import main
from pipeline.config import load_config
from pipeline.registry import commands, production
from pipeline.registry.schema import SchemaChangeError
from pipeline.steps import flow
from tests.pipeline.factories import iris_csv


def _without_column(csv_text: str, column: str) -> str:
    lines = [line.split(",") for line in csv_text.strip().splitlines()]
    drop = lines[0].index(column)
    return "\n".join(",".join(v for i, v in enumerate(row) if i != drop) for row in lines) + "\n"


@pytest.fixture
def champion_then_narrower_candidate(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> tuple[flow.PipelineResult, flow.PipelineResult]:
    csv = iris_csv("species")
    first = flow.run_all(load_config(write_config(iris_config(), csv_text=csv)))
    narrower = _without_column(csv, "petal width (cm)")
    second = flow.run_all(load_config(write_config(iris_config(), csv_text=narrower)))
    return first, second


def test_the_gate_rejects_a_candidate_that_drops_a_column_naming_it(
    champion_then_narrower_candidate: tuple[flow.PipelineResult, flow.PipelineResult],
) -> None:
    first, second = champion_then_narrower_candidate
    assert first.decision.promoted
    assert not second.decision.promoted
    assert "column 'petal width (cm)' (double, required) was removed" in second.decision.reason
    tags = MlflowClient().get_model_version("iris-test", second.decision.version).tags
    assert tags["gate.decision"] == "rejected"
    assert "gate.allow_schema_change: true" in tags["gate.reason"]


def test_promote_refuses_it_exit_4_registry_unchanged_and_allows_it_with_the_flag(
    champion_then_narrower_candidate: tuple[flow.PipelineResult, flow.PipelineResult],
    caplog: pytest.LogCaptureFixture,
) -> None:
    _, second = champion_then_narrower_candidate
    client = MlflowClient()
    before = production.history(client, "iris-test")
    argv = ["promote", "--name", "iris-test", "--version", second.decision.version]
    assert main(argv) == 4
    assert "column 'petal width (cm)' (double, required) was removed" in caplog.text
    current = production.production_version(client, "iris-test")
    assert current is not None and str(current.version) == "1"
    assert production.history(client, "iris-test") == before
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*argv, "--allow-schema-change"]) == 0
    current = production.production_version(client, "iris-test")
    assert current is not None and str(current.version) == second.decision.version


def test_the_gate_promotes_it_when_the_config_allows_schema_change(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    csv = iris_csv("species")
    flow.run_all(load_config(write_config(iris_config(), csv_text=csv)))
    gate = {
        "metric": "test_f1_macro",
        "threshold": 0.5,
        "min_improvement": 0.0,
        "allow_schema_change": True,
    }
    narrower = _without_column(csv, "petal width (cm)")
    second = flow.run_all(load_config(write_config(iris_config(gate=gate), csv_text=narrower)))
    assert "would break clients" not in second.decision.reason


def test_staging_it_by_hand_is_refused_too_since_the_challenger_gets_production_requests(
    champion_then_narrower_candidate: tuple[flow.PipelineResult, flow.PipelineResult],
) -> None:
    _, second = champion_then_narrower_candidate
    client = MlflowClient()
    before = production.history(client, "iris-test")
    with pytest.raises(
        SchemaChangeError, match=r"column 'petal width \(cm\)' \(double, required\)"
    ):
        commands.promote("iris-test", second.decision.version, stage="Staging")
    assert production.challenger_version(client, "iris-test") is None
    assert production.history(client, "iris-test") == before
