"""Batch scoring: chunked pandas scoring equals one predict call, Spark equals pandas, bad input
leaves no file behind.

One small real model for the whole module, trained through the pipeline in a throwaway store:
numeric, integer and categorical (with gaps) inputs, so every column type of a signature is
scored. Spark starts once, in the one test marked `spark`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils
from sklearn.datasets import load_iris

from pipeline import model_io
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.errors import DataValidationError, RegistryError
from pipeline.scoring import score
from pipeline.scoring.model import resolve_model_uri
from pipeline.scoring.spark_engine import stop_spark
from pipeline.steps import flow

REPO_ROOT = Path(__file__).resolve().parents[3]
NAME = "score-test"
NUMERIC = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]
FEATURES = [*NUMERIC, "petals", "colour"]
CLASSES = ["setosa", "versicolor", "virginica"]
ROWS = 2_500
CHUNK = 400  # 7 chunks, the last one short


@dataclass(frozen=True)
class Store:
    root: Path
    uri: str
    csv: Path
    parquet: Path
    frame: pd.DataFrame


def _iris_with_extras(rows: int | None, seed: int) -> pd.DataFrame:
    """Iris, plus an integer and a categorical feature with gaps; `rows` resamples with noise."""
    iris = load_iris(as_frame=True)
    frame = iris.data.set_axis(NUMERIC, axis=1)
    frame["species"] = [CLASSES[i] for i in iris.target]
    rng = np.random.default_rng(seed)
    if rows is not None:
        frame = frame.sample(rows, replace=True, random_state=seed).reset_index(drop=True)
        frame[NUMERIC] += rng.normal(0.0, 0.05, (rows, len(NUMERIC)))
    frame["petals"] = rng.integers(3, 7, len(frame))
    colour = rng.choice(np.array(["red", "green", "blue"], dtype=object), len(frame))
    colour[rng.random(len(frame)) < 0.15] = np.nan
    frame["colour"] = colour
    return frame


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    """A throwaway store whose model `score-test` v1 is in Production, and files to score."""
    root = tmp_path_factory.mktemp("score")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # MLflow's default ./mlruns artifact root is the temporary one
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        _iris_with_extras(None, seed=0).to_csv(root / "train.csv", index=False)
        config = {
            "experiment": NAME,
            "registered_model": NAME,
            "task": "classification",
            "data": {"path": "train.csv", "target": "species"},
            "estimator": {
                "class_path": "sklearn.linear_model.LogisticRegression",
                "params": {"max_iter": 1000},
            },
            "split": {"test_size": 0.3, "seed": 42, "stratify": True, "cv_folds": 3},
            "gate": {"metric": "test_f1_macro", "threshold": 0.5, "min_improvement": 0.0},
        }
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        assert flow.run_all(load_config(root / "config.yaml")).decision.promoted
        frame = _iris_with_extras(ROWS, seed=1)
        frame.insert(0, "id", np.arange(ROWS, dtype=np.int64))
        frame["note"] = np.where(np.arange(ROWS) % 7 == 0, "checked, twice", "")
        frame.to_csv(root / "input.csv", index=False)
        frame.to_parquet(root / "input.parquet", index=False)
        yield Store(root, uri, root / "input.csv", root / "input.parquet", frame)
    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None


def _score(store: Store, source: Path, output: str, **options: object) -> score.ScoreResult:
    request = score.ScoreRequest(
        input_path=source,
        output_path=store.root / output,
        name=NAME,
        chunk_rows=CHUNK,
        progress=False,
        **options,  # type: ignore[arg-type]
    )
    return score.run(request)


def _leftovers(directory: Path, output: str) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if output in p.name)


def test_the_pandas_engine_scores_a_csv_in_chunks_exactly_like_one_predict_call(
    store: Store,
) -> None:
    result = _score(store, store.csv, "scores.parquet")
    assert (result.rows, result.model_uri, result.model_version) == (
        ROWS,
        f"models:/{NAME}/Production",
        "1",
    )
    table = pq.read_table(store.root / "scores.parquet")
    proba = [f"proba.{c}" for c in CLASSES]
    assert table.schema.names == [*store.frame.columns, "prediction", *proba]
    assert [str(t) for t in table.schema.types] == [
        "string",  # id: not a feature, so kept as the CSV's text
        *["double"] * 4,
        "string",  # species: passed through
        "int64",  # petals: a long in the signature
        "string",  # colour
        "string",  # note
        "string",  # prediction: the label
        *["double"] * 3,
    ]
    scored = table.to_pandas()
    model = model_io.load_model(f"models:/{NAME}/Production")
    expected = store.frame[FEATURES]
    np.testing.assert_array_equal(scored["prediction"], model.predict(expected).astype(str))
    np.testing.assert_array_equal(scored[proba].to_numpy(), model.predict_proba(expected))
    assert scored["id"].tolist() == [str(i) for i in range(ROWS)]
    assert scored["colour"].isna().sum() == store.frame["colour"].isna().sum() > 0
    # Empty CSV cells are missing values, as pandas.read_csv reads them for training.
    assert table.column("note").to_pylist() == [n or None for n in store.frame["note"]]


def test_parquet_files_and_directories_of_parts_score_like_the_csv(store: Store) -> None:
    _score(store, store.csv, "from_csv.parquet")
    _score(store, store.parquet, "from_parquet.parquet")
    parts = store.root / "parts"
    parts.mkdir()
    for index, start in enumerate(range(0, ROWS, 1_000)):
        store.frame.iloc[start : start + 1_000].to_parquet(parts / f"part-{index}.parquet")
    _score(store, parts, "from_parts.parquet")
    from_parquet = pq.read_table(store.root / "from_parquet.parquet")
    # Columns that are not features keep their Parquet types; from CSV they are text.
    assert from_parquet.column("id").type == pa.int64()
    assert from_parquet.column("species").type == pa.large_string()
    passed_through = ["id", "species", "note"]
    from_csv = pq.read_table(store.root / "from_csv.parquet").drop_columns(passed_through)
    assert from_parquet.drop_columns(passed_through).equals(from_csv)
    assert pq.read_table(store.root / "from_parts.parquet").equals(from_parquet)


def test_a_registered_name_with_an_alias_resolves_to_that_version(store: Store) -> None:
    assert resolve_model_uri(None, f"{NAME}@champion") == (f"models:/{NAME}@champion", "1")
    assert resolve_model_uri("runs:/abc/model", None) == ("runs:/abc/model", None)


def test_a_missing_column_is_named_and_no_output_is_written(store: Store) -> None:
    source = store.root / "no_petal_width.csv"
    store.frame.drop(columns="petal_width_cm").to_csv(source, index=False)
    with pytest.raises(DataValidationError) as raised:
        _score(store, source, "missing.parquet")
    assert raised.value.exit_code == 3
    assert "lacks the model's input column(s) 'petal_width_cm'; add them" in str(raised.value)
    assert _leftovers(store.root, "missing.parquet") == []


def test_a_non_numeric_value_in_a_late_chunk_is_named_with_its_row_and_nothing_is_left(
    store: Store,
) -> None:
    frame = store.frame.astype({"sepal_width_cm": object})
    frame.loc[1_800, "sepal_width_cm"] = "3,1"  # data row 1801, in the fifth chunk
    source = store.root / "comma.csv"
    frame.to_csv(source, index=False)
    with pytest.raises(DataValidationError) as raised:
        _score(store, source, "comma.parquet")
    assert raised.value.exit_code == 3
    assert str(raised.value) == (
        f"column 'sepal_width_cm' of '{source}' has 1 non-numeric value(s) in rows 1601-2000 "
        "(e.g. '3,1' at row 1801); fix them, or leave the cells empty for a missing value"
    )
    assert _leftovers(store.root, "comma.parquet") == []


def test_a_text_column_where_the_model_expects_numbers_is_refused_before_scoring(
    store: Store,
) -> None:
    source = store.root / "text.parquet"
    store.frame.astype({"petal_length_cm": str}).to_parquet(source)
    with pytest.raises(DataValidationError) as raised:
        _score(store, source, "text_scores.parquet")
    assert "column 'petal_length_cm' of" in str(raised.value)
    assert "holds text (large_string); the model expects numbers" in str(raised.value)
    assert _leftovers(store.root, "text_scores.parquet") == []


def test_an_unknown_model_name_is_a_registry_error_that_says_what_to_do(store: Store) -> None:
    request = score.ScoreRequest(
        input_path=store.csv, output_path=store.root / "unknown.parquet", name="no-such-model"
    )
    with pytest.raises(RegistryError) as raised:
        score.run(request)
    assert raised.value.exit_code == 4
    assert "registered model 'no-such-model' does not exist" in str(raised.value)
    assert "--model-uri" in str(raised.value)
    assert _leftovers(store.root, "unknown.parquet") == []


@pytest.mark.process
def test_the_cli_scores_by_name_in_a_real_process(store: Store) -> None:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": store.uri,
        "PYTHONPATH": str(REPO_ROOT),
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }
    command = ["score", "--name", NAME, "--input", str(store.csv), "--output", "cli.parquet"]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *command],
        cwd=store.root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"scored {ROWS} rows with models:/{NAME}/Production v1 (pandas)" in done.stdout
    assert pq.read_metadata(store.root / "cli.parquet").num_rows == ROWS


def test_the_cli_exits_3_naming_the_missing_column_and_writes_nothing(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    source = store.root / "no_petals.csv"
    store.frame.drop(columns=["petals"]).to_csv(source, index=False)
    argv = ["score", "--name", NAME, "--input", str(source), "--output", "bad_cli.parquet"]
    assert main(argv) == 3
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "lacks the model's input column(s) 'petals'; add them" in errors[0]
    assert _leftovers(store.root, "bad_cli.parquet") == []


@pytest.mark.spark
def test_the_spark_engine_writes_exactly_what_the_pandas_engine_writes(store: Store) -> None:
    pytest.importorskip("pyspark")
    if shutil.which("java") is None:
        pytest.skip("the spark engine needs Java")
    pandas_result = _score(store, store.csv, "pandas.parquet")
    bad = store.frame.head(300).astype({"petal_length_cm": object})
    bad.loc[[17, 250], "petal_length_cm"] = ["1.4cm", "2,5"]
    bad.to_csv(store.root / "bad_spark.csv", index=False)
    try:
        spark_result = _score(store, store.csv, "spark.parquet", engine="spark")
        with pytest.raises(DataValidationError) as raised:
            _score(store, store.root / "bad_spark.csv", "bad_spark.parquet", engine="spark")
    finally:
        stop_spark()
    assert str(raised.value).startswith(
        f"column 'petal_length_cm' of '{store.root / 'bad_spark.csv'}' has 2 non-numeric "
        "value(s) (e.g. '1.4cm'); fix them"
    )
    assert _leftovers(store.root, "bad_spark.parquet") == []
    assert spark_result.rows == pandas_result.rows == ROWS
    assert spark_result.columns == pandas_result.columns
    from_pandas = pq.read_table(store.root / "pandas.parquet")
    from_spark = pq.read_table(store.root / "spark.parquet")
    assert from_spark.schema.equals(from_pandas.schema)
    # Bit for bit, probabilities included: both engines run the same scikit-learn calls on
    # the same batches (one Spark partition, Arrow batches of chunk_rows rows).
    assert from_spark.equals(from_pandas)
    assert _leftovers(store.root, "spark.parquet") == ["spark.parquet"]
