"""Data layer: a labels file is checked column by column, then joined to the predictions."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import PipelineConfig, load_config
from pipeline.contracts import TIMESTAMP
from pipeline.errors import DataValidationError
from pipeline.monitoring import feedback
from pipeline.monitoring.prediction_log import PredictionLog, part_name

START = datetime(2025, 3, 1, tzinfo=UTC)


@pytest.fixture
def config(
    tmp_path: Path,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> PipelineConfig:
    return load_config(write_config(iris_config(monitoring={"log_dir": str(tmp_path / "log")})))


def _feedback_parts(config: PipelineConfig) -> list[Path]:
    log = PredictionLog(Path(config.monitoring.log_dir), config.registered_model)
    return sorted(log.feedback_dir.glob("*")) if log.feedback_dir.is_dir() else []


def _refused(config: PipelineConfig, path: Path) -> str:
    with pytest.raises(DataValidationError) as error:
        feedback.run(config, path)
    assert error.value.exit_code == 3
    assert _feedback_parts(config) == []
    return str(error.value)


def test_a_file_without_a_label_column_is_refused_naming_it(
    config: PipelineConfig, tmp_path: Path
) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("request_id,species\nr0,setosa\n")
    message = _refused(config, path)
    assert message.startswith(f"feedback file '{path}' has no column 'label'")
    assert "its columns are: request_id, species" in message


def test_an_empty_request_id_is_refused_with_its_row(
    config: PipelineConfig, tmp_path: Path
) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("request_id,label\nr0,setosa\n,virginica\n")
    assert "column 'request_id' of feedback file" in _refused(config, path)
    assert "first at row 2" in _refused(config, path)


def test_a_row_that_is_not_a_whole_number_is_refused(
    config: PipelineConfig, tmp_path: Path
) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("request_id,row,label\nr0,0,setosa\nr0,1.5,virginica\n")
    message = _refused(config, path)
    assert "column 'row' of feedback file" in message
    assert "e.g. '1.5' at row 2" in message


def test_two_labels_for_one_prediction_in_one_file_are_refused(
    config: PipelineConfig, tmp_path: Path
) -> None:
    path = tmp_path / "labels.csv"
    path.write_text("request_id,label\nr0,setosa\nr0,virginica\n")
    assert "labels request_id 'r0' row 0 2 times" in _refused(config, path)


def test_a_regression_label_must_be_a_number(
    tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    regression = load_config(
        write_config(
            {
                "experiment": "d",
                "registered_model": "d",
                "task": "regression",
                "data": {"dataset": "diabetes", "target": "progression"},
                "estimator": {"class_path": "sklearn.linear_model.Ridge"},
                "gate": {"metric": "test_rmse"},
                "monitoring": {"log_dir": str(tmp_path / "log")},
            }
        )
    )
    path = tmp_path / "labels.csv"
    path.write_text("request_id,label\nr0,12.5\nr1,high\n")
    message = _refused(regression, path)
    assert "column 'label' of feedback file" in message
    assert "must hold numbers for a regression model" in message
    assert "e.g. 'high' at row 2" in message


def test_a_file_of_another_format_or_that_does_not_exist_is_refused(
    config: PipelineConfig, tmp_path: Path
) -> None:
    path = tmp_path / "labels.json"
    path.write_text("{}")
    assert "must be a .csv or .parquet file" in _refused(config, path)
    assert "not found" in _refused(config, tmp_path / "nothing.csv")


def test_a_valid_file_becomes_a_part_that_the_reader_joins(
    config: PipelineConfig, tmp_path: Path
) -> None:
    log = PredictionLog(Path(config.monitoring.log_dir), config.registered_model)
    log.predictions_dir.mkdir(parents=True)
    rows = 3
    pq.write_table(
        pa.table(
            {
                "request_id": ["a", "a", "b"],
                "row": pa.array([0, 1, 0], pa.int64()),
                "timestamp": pa.array(
                    [START + timedelta(seconds=i) for i in range(rows)], TIMESTAMP
                ),
                "model_name": [config.registered_model] * rows,
                "model_version": ["1"] * rows,
                "feature.x": np.arange(rows, dtype=float),
                "prediction": ["setosa"] * rows,
            }
        ),
        log.predictions_dir / part_name(START),
    )
    path = tmp_path / "labels.parquet"
    pd.DataFrame(
        {"request_id": ["a", "b"], "row": [1, 0], "label": ["virginica", "setosa"]}
    ).to_parquet(path)
    result = feedback.run(config, path)
    assert result.rows == 2
    assert _feedback_parts(config) == [result.path]
    chunk = next(log.read(["x"], chunk_rows=10, labels=True))
    assert chunk["label"].isna().tolist() == [True, False, False]
    assert chunk["label"].tolist()[1:] == ["virginica", "setosa"]


def test_whole_number_labels_are_spelled_as_the_server_logs_them(tmp_path: Path) -> None:
    frame = pd.DataFrame({"request_id": ["a", "b"], "label": [1.0, 0.0]})
    labels = feedback.validate_labels(frame, "classification", source="x.parquet")
    assert labels["label"].tolist() == ["1", "0"]
    assert labels["row"].tolist() == [0, 0]
