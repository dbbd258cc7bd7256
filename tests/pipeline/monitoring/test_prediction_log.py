"""Data layer: the prediction log is read in bounded chunks, by window and version, with labels."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.contracts import TIMESTAMP, part_store_id, store_id, with_store_id
from pipeline.errors import DataValidationError
from pipeline.monitoring.prediction_log import PredictionLog, part_name

START = datetime(2025, 3, 1, tzinfo=UTC)


def write_predictions(
    log_dir: Path,
    model: str,
    *,
    version: str,
    start: datetime,
    rows: int,
    features: dict[str, np.ndarray | list[object]],
    prediction: list[str] | None = None,
    proba: dict[str, list[float]] | None = None,
    prefix: str = "r",
    seconds_apart: float = 1.0,
    store: str | None = None,
) -> Path:
    """One predictions part in the layout the server writes (contracts: prediction log);
    `store`: the store id it records (none, as parts written before store ids)."""
    timestamps = [start + timedelta(seconds=i * seconds_apart) for i in range(rows)]
    columns: dict[str, pa.Array] = {
        "request_id": pa.array([f"{prefix}{i}" for i in range(rows)], pa.string()),
        "row": pa.array(np.zeros(rows, dtype=np.int64)),
        "timestamp": pa.array(timestamps, TIMESTAMP),
        "model_name": pa.array([model] * rows, pa.string()),
        "model_version": pa.array([version] * rows, pa.string()),
    }
    for name, values in features.items():
        kind = pa.float64() if isinstance(values, np.ndarray) else pa.string()
        columns[f"feature.{name}"] = pa.array(values, kind)
    columns["prediction"] = pa.array(prediction or ["a"] * rows, pa.string())
    for label, probabilities in (proba or {}).items():
        columns[f"proba.{label}"] = pa.array(probabilities, pa.float64())
    directory = log_dir / model / "predictions"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / part_name(start)
    table = pa.table(columns)
    table = with_store_id(table, store) if store else table
    pq.write_table(table, path, row_group_size=max(1, rows // 3))
    return path


def write_feedback(log_dir: Path, model: str, labels: dict[str, str], received: datetime) -> None:
    frame = pd.DataFrame({"request_id": list(labels), "row": 0, "label": list(labels.values())})
    PredictionLog(log_dir, model).write_feedback(frame, received=received)


def _numbers(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=rows)


def test_chunks_hold_the_window_of_one_version_with_feature_names_and_at_most_chunk_rows(
    tmp_path: Path,
) -> None:
    x = _numbers(100)
    write_predictions(tmp_path, "m", version="1", start=START, rows=100, features={"x": x})
    write_predictions(
        tmp_path, "m", version="2", start=START, rows=50, features={"x": _numbers(50, 1)}
    )
    log = PredictionLog(tmp_path, "m")
    since, until = START + timedelta(seconds=10), START + timedelta(seconds=90)
    chunks = list(log.read(["x"], chunk_rows=7, version="1", since=since, until=until))
    assert [len(c) for c in chunks] == [7] * 11 + [3]
    assert list(chunks[0].columns) == ["x", "prediction", "timestamp"]
    frame = pd.concat(chunks, ignore_index=True)
    np.testing.assert_array_equal(frame["x"].to_numpy(), x[10:90])
    assert frame["timestamp"].min() == pd.Timestamp(since)
    assert frame["timestamp"].max() < pd.Timestamp(until)


def test_parts_entirely_outside_the_window_or_of_another_version_are_not_listed(
    tmp_path: Path,
) -> None:
    early = write_predictions(
        tmp_path, "m", version="1", start=START, rows=10, features={"x": _numbers(10)}
    )
    late = write_predictions(
        tmp_path,
        "m",
        version="1",
        start=START + timedelta(days=2),
        rows=10,
        features={"x": _numbers(10)},
    )
    other = write_predictions(
        tmp_path,
        "m",
        version="2",
        start=START + timedelta(days=2),
        rows=10,
        features={"x": _numbers(10)},
    )
    (late.parent / "part-being-written.parquet.tmp").write_bytes(b"PAR1 half a file")
    log = PredictionLog(tmp_path, "m")
    assert [p.path for p in log.parts()] == [early, late, other]
    assert [p.path for p in log.parts(since=START + timedelta(days=1))] == [late, other]
    assert [p.path for p in log.parts(version="1", until=START + timedelta(days=1))] == [early]


def test_versions_counts_the_rows_of_every_version_in_the_window(tmp_path: Path) -> None:
    for version, rows in (("10", 5), ("2", 3), ("1", 4)):
        write_predictions(
            tmp_path, "m", version=version, start=START, rows=rows, features={"x": _numbers(rows)}
        )
    assert PredictionLog(tmp_path, "m").versions() == {"1": 4, "2": 3, "10": 5}
    assert PredictionLog(tmp_path, "m").versions(since=START + timedelta(seconds=4)) == {"10": 1}


def test_labels_are_joined_by_request_and_row_and_the_latest_label_wins(tmp_path: Path) -> None:
    write_predictions(
        tmp_path,
        "m",
        version="1",
        start=START,
        rows=4,
        features={"x": _numbers(4)},
        proba={"a": [0.9, 0.8, 0.7, 0.6], "b": [0.1, 0.2, 0.3, 0.4]},
    )
    write_feedback(tmp_path, "m", {"r0": "a", "r1": "b"}, received=START + timedelta(hours=2))
    # Written later but received earlier: the label of r1 above stays.
    write_feedback(tmp_path, "m", {"r1": "a", "r3": "b"}, received=START + timedelta(hours=1))
    write_feedback(tmp_path, "m", {"r0": "b"}, received=START + timedelta(hours=3))
    chunk = next(
        PredictionLog(tmp_path, "m").read(
            ["x"], chunk_rows=100, version="1", probabilities=True, labels=True
        )
    )
    assert list(chunk.columns) == ["x", "prediction", "timestamp", "proba.a", "proba.b", "label"]
    assert chunk["label"].tolist()[:2] == ["b", "b"]
    assert pd.isna(chunk["label"].iloc[2])
    assert chunk["label"].iloc[3] == "b"
    assert chunk["proba.b"].tolist() == [0.1, 0.2, 0.3, 0.4]


def test_a_part_lacking_a_feature_for_rows_in_scope_is_refused_naming_the_column(
    tmp_path: Path,
) -> None:
    write_predictions(tmp_path, "m", version="1", start=START, rows=5, features={"x": _numbers(5)})
    path = write_predictions(
        tmp_path, "m", version="2", start=START, rows=5, features={"z": ["u"] * 5}
    )
    log = PredictionLog(tmp_path, "m")
    assert len(pd.concat(log.read(["x"], chunk_rows=10, version="1"))) == 5
    with pytest.raises(DataValidationError) as error:
        next(log.read(["x"], chunk_rows=10, version="2"))
    assert error.value.exit_code == 3
    assert "lacks the column(s) feature.x in" in str(error.value)
    assert path.name in str(error.value)


def test_a_categorical_feature_keeps_its_missing_values(tmp_path: Path) -> None:
    write_predictions(
        tmp_path, "m", version="1", start=START, rows=3, features={"c": ["u", None, "v"]}
    )
    chunk = next(PredictionLog(tmp_path, "m").read(["c"], chunk_rows=10))
    assert chunk["c"].iloc[0] == "u"
    assert pd.isna(chunk["c"].iloc[1])


def test_a_feature_named_like_a_log_column_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match=r"feature names \['label'\] clash"):
        next(PredictionLog(tmp_path, "m").read(["x", "label"], chunk_rows=10))


OURS = "sqlite:////srv/ours/mlflow.db"
THEIRS = "http://tracking.example:5000"


def test_parts_and_labels_of_another_store_are_skipped_with_a_warning_naming_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_predictions(tmp_path, "m", version="1", start=START, rows=3, features={"x": _numbers(3)})
    theirs = write_predictions(
        tmp_path, "m", version="1", start=START, rows=5, features={"x": _numbers(5)},
        prefix="t", store=THEIRS,
    )  # fmt: skip
    write_predictions(
        tmp_path, "m", version="1", start=START, rows=2, features={"x": _numbers(2)},
        prefix="o", store=OURS,
    )  # fmt: skip
    ours_log = PredictionLog(tmp_path, "m", store_id=OURS)
    ours_log.write_feedback(pd.DataFrame({"request_id": ["o0"], "row": 0, "label": ["a"]}))
    # Their label for a request id ours also has: it must not label our prediction.
    PredictionLog(tmp_path, "m", store_id=THEIRS).write_feedback(
        pd.DataFrame({"request_id": ["o1"], "row": 0, "label": ["b"]})
    )

    with caplog.at_level("WARNING"):
        counts = ours_log.versions()
        (chunk,) = ours_log.read(["x"], chunk_rows=100, version="1", labels=True)
    assert counts == {"1": 5}  # 3 written before store ids + 2 of ours; their 5 are not
    assert len(chunk) == 5
    assert chunk["label"].notna().sum() == 1
    skipped = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(str(theirs) in m and THEIRS in m and OURS in m for m in skipped), skipped
    assert sum("feedback" in m for m in skipped) == 1
    assert PredictionLog(tmp_path, "m", store_id=THEIRS).versions() == {"1": 8}


def test_labels_written_by_the_feedback_step_record_its_store(tmp_path: Path) -> None:
    path = PredictionLog(tmp_path, "m", store_id=OURS).write_feedback(
        pd.DataFrame({"request_id": ["r0"], "row": 0, "label": ["a"]})
    )
    assert part_store_id(pq.read_schema(path)) == OURS


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://alice:secret@Tracking.Example:5000/", "http://tracking.example:5000"),
        ("postgresql://u:p@db:5432/mlflow?sslmode=require", "postgresql://db:5432/mlflow"),
        ("sqlite:////srv/ours/mlflow.db", "sqlite:////srv/ours/mlflow.db"),
    ],
)
def test_a_store_id_names_the_registry_without_credentials(uri: str, expected: str) -> None:
    assert store_id(uri) == expected


def test_a_relative_sqlite_store_is_named_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert store_id("sqlite:///mlflow.db") == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert store_id() == store_id("sqlite:///mlflow.db")


def _with_live_columns(
    path: Path, *, role: str, served: list[bool], latency: float, errors: list[str | None]
) -> None:
    """Add the live columns (`pipeline.contracts.LIVE_COLUMNS`) to a part written above."""
    table = pq.read_table(path)
    rows = table.num_rows
    table = (
        table.append_column("role", pa.array([role] * rows, pa.string()))
        .append_column("served", pa.array(served, pa.bool_()))
        .append_column("latency_ms", pa.array([latency] * rows, pa.float64()))
        .append_column("error", pa.array(errors, pa.string()))
    )
    pq.write_table(table, path)


def test_rows_of_parts_without_live_columns_read_as_the_champions_served_answers(
    tmp_path: Path,
) -> None:
    write_predictions(tmp_path, "m", version="1", start=START, rows=4, features={"x": _numbers(4)})
    (chunk,) = PredictionLog(tmp_path, "m").live_rows(["1"], chunk_rows=10)
    assert chunk["role"].tolist() == ["champion"] * 4
    assert chunk["served"].tolist() == [True] * 4
    assert chunk["latency_ms"].isna().all() and chunk["error"].isna().all()


def test_live_rows_hold_both_versions_errors_included_and_no_other_version(tmp_path: Path) -> None:
    champion = write_predictions(
        tmp_path, "m", version="1", start=START, rows=3, features={"x": _numbers(3)}
    )
    challenger = write_predictions(
        tmp_path, "m", version="2", start=START, rows=3, features={"x": _numbers(3)}
    )
    write_predictions(tmp_path, "m", version="3", start=START, rows=3, features={"x": _numbers(3)})
    _with_live_columns(champion, role="champion", served=[True] * 3, latency=2.0, errors=[None] * 3)
    _with_live_columns(
        challenger, role="challenger", served=[False] * 3, latency=5.0, errors=[None, "boom", None]
    )
    rows = pd.concat(PredictionLog(tmp_path, "m").live_rows(["1", "2"], chunk_rows=2))
    assert sorted(rows["model_version"].unique()) == ["1", "2"]
    assert rows.groupby("model_version")["error"].count().to_dict() == {"1": 0, "2": 1}
    assert set(rows.loc[rows["model_version"] == "2", "role"]) == {"challenger"}


def test_reading_predictions_skips_failed_answers_and_served_only_skips_shadow_answers(
    tmp_path: Path,
) -> None:
    champion = write_predictions(
        tmp_path, "m", version="1", start=START, rows=4, features={"x": _numbers(4)}
    )
    shadow = write_predictions(
        tmp_path, "m", version="2", start=START, rows=4, features={"x": _numbers(4)}, prefix="r"
    )
    old = write_predictions(  # written before the live columns: served, no error
        tmp_path, "m", version="1", start=START, rows=2, features={"x": _numbers(2)}, prefix="o"
    )
    assert old.exists()
    _with_live_columns(
        champion, role="champion", served=[True] * 4, latency=1.0, errors=[None, None, None, "x"]
    )
    _with_live_columns(
        shadow, role="challenger", served=[False] * 4, latency=1.0, errors=[None] * 4
    )
    log = PredictionLog(tmp_path, "m")
    assert sum(len(c) for c in log.read(["x"], chunk_rows=100, version="1")) == 3 + 2
    assert sum(len(c) for c in log.read(["x"], chunk_rows=100, version="2")) == 4
    assert sum(len(c) for c in log.read(["x"], chunk_rows=100, served_only=True)) == 3 + 2
