"""The prediction log writer on its own: real models from the store, real Parquet files.

No HTTP here (see test_prediction_log_routes.py). Rotation by age is driven by a hand-turned
clock, and a blocked or failing disk by a sink that blocks or fails: nothing waits on time.
"""

from __future__ import annotations

import errno
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.contracts import part_store_id
from serving.model.inference import predict_frame, predict_rows, to_frame
from serving.model.ref import ModelRef
from serving.model.store import LoadedModel, load_model
from serving.prediction_log import (
    TIMESTAMP,
    FeedbackLabel,
    PredictionLog,
    feedback_schema,
    prediction_schema,
)
from tests.serving.factories import TinyModel, TinyStore

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def models(store: TinyStore, gappy: TinyModel) -> dict[str, LoadedModel]:
    """Models loaded as the server loads them: iris v1 (logistic regression), iris v2
    (LinearSVC, no probabilities), diabetes (regressor), mixed (strings, gaps, integers),
    gappy (numeric inputs with an optional double and a long, integer classes)."""
    refs = {
        "iris": ModelRef("iris", "version", "1"),
        "iris_svc": ModelRef("iris", "version", "2"),
        "diabetes": ModelRef("diabetes", "version", "1"),
        "mixed": ModelRef("mixed", "version", "1"),
        "gappy": ModelRef("gappy", "version", "1"),
    }
    return {key: load_model(ref, store.tracking_uri) for key, ref in refs.items()}


@pytest.fixture
def make_log(tmp_path: Path) -> Iterator[Callable[..., PredictionLog]]:
    logs: list[PredictionLog] = []

    def _make(**options: Any) -> PredictionLog:
        log = PredictionLog(tmp_path / "log", **options)
        logs.append(log)
        return log

    yield _make
    for log in logs:
        log.close(timeout=10)


def records_of(store: TinyStore, key: str, rows: list[int]) -> list[dict[str, Any]]:
    frame = store.models[key].features.iloc[rows]
    records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    return [{str(k): v for k, v in record.items()} for record in records]


def parts(root: Path, model: str, kind: str = "predictions") -> list[Path]:
    return sorted((root / model / kind).glob("part-*.parquet"))


def read(paths: list[Path]) -> pd.DataFrame:
    return pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)


def log_rows(
    log: PredictionLog, model: LoadedModel, records: list[dict[str, Any]], rid: str
) -> None:
    assert log.log_predictions(rid, model, records, predict_rows(model, records))


def test_a_request_is_written_with_the_contract_columns_and_the_model_answers(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    iris = models["iris"]
    records = records_of(store, "iris", [0, 60, 140])
    answers = predict_rows(iris, records)
    log = make_log()
    assert log.log_predictions("req-1", iris, records, answers)
    log.close()

    (part,) = parts(log.log_dir, "iris")
    assert part.name.startswith("part-") and part.name.count("-") == 3
    table = pq.read_table(part)
    assert table.schema.equals(prediction_schema(iris))
    features = [f"feature.{c}" for c in store.models["iris"].features.columns]
    probas = [f"proba.{c}" for c in iris.classes or ()]
    assert table.column_names == [
        "request_id", "row", "timestamp", "model_name", "model_version",
        *features, "prediction", *probas, "role", "served", "latency_ms", "error",
    ]  # fmt: skip
    assert table.schema.field("timestamp").type == TIMESTAMP
    frame = table.to_pandas()
    assert frame["request_id"].tolist() == ["req-1"] * 3
    assert frame["row"].tolist() == [0, 1, 2]
    assert frame["model_name"].tolist() == ["iris"] * 3
    assert frame["model_version"].tolist() == ["1"] * 3
    assert frame["prediction"].tolist() == [a["label"] for a in answers]
    for name in iris.classes or ():
        assert frame[f"proba.{name}"].tolist() == [a["probabilities"][name] for a in answers]
    for column in store.models["iris"].features.columns:
        assert frame[f"feature.{column}"].tolist() == [r[column] for r in records]
    assert frame["timestamp"].dt.tz is not None
    assert frame["timestamp"].nunique() == 1
    assert frame["role"].tolist() == ["champion"] * 3
    assert frame["served"].tolist() == [True] * 3
    assert frame["error"].isna().all() and frame["latency_ms"].isna().all()


def test_a_regressor_logs_its_value_as_a_float_and_no_probabilities(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    diabetes = models["diabetes"]
    records = records_of(store, "diabetes", [0, 1])
    answers = predict_rows(diabetes, records)
    log = make_log()
    assert log.log_predictions("r", diabetes, records, answers)
    log.close()
    table = pq.read_table(parts(log.log_dir, "diabetes")[0])
    assert table.schema.field("prediction").type == pa.float64()
    assert not [name for name in table.column_names if name.startswith("proba.")]
    assert table.column("prediction").to_pylist() == [a["value"] for a in answers]


def test_text_missing_and_integer_inputs_become_strings_nulls_and_floats(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel]
) -> None:
    mixed = models["mixed"]
    records: list[dict[str, Any]] = [
        {"age": None, "rooms": 3, "city": None, "owner": "yes"},
        {"age": 41.5, "rooms": 2, "city": "lyon", "owner": "no"},
    ]
    log = make_log()
    log_rows(log, mixed, records, "r")
    log.close()
    table = pq.read_table(parts(log.log_dir, "mixed")[0])
    assert table.schema.field("feature.city").type == pa.string()
    assert table.schema.field("feature.rooms").type == pa.float64()
    assert table.column("feature.age").to_pylist() == [None, 41.5]
    assert table.column("feature.city").to_pylist() == [None, "lyon"]
    assert table.column("feature.rooms").to_pylist() == [3.0, 2.0]
    # Integer classes are written as text, as str() of the label.
    assert set(table.column("prediction").to_pylist()) <= {"0", "1"}
    assert {"proba.0", "proba.1"} <= set(table.column_names)


@pytest.mark.parametrize("key", ["iris", "gappy", "diabetes"])
def test_a_frame_and_its_records_are_logged_alike(
    make_log: Callable[..., PredictionLog],
    models: dict[str, LoadedModel],
    store: TinyStore,
    key: str,
) -> None:
    model = models[key]
    records = records_of(store, key, list(range(0, 150, 7)))
    frame = to_frame(model.columns, records)
    log = make_log()
    log_rows(log, model, records, "records")
    assert log.log_predictions("frame", model, frame, predict_frame(model, frame, proba=True))
    log.close()
    logged = read(parts(log.log_dir, key)).drop(columns="timestamp")
    by_records = logged[logged["request_id"] == "records"].drop(columns="request_id")
    by_frame = logged[logged["request_id"] == "frame"].drop(columns="request_id")
    assert len(by_frame) == len(records)
    pd.testing.assert_frame_equal(
        by_records.reset_index(drop=True), by_frame.reset_index(drop=True), rtol=0, atol=1e-12
    )


def test_a_part_is_written_every_rotate_rows_rows(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    log = make_log(rotate_rows=10)
    for request in range(5):
        log_rows(log, models["iris"], records_of(store, "iris", list(range(5))), f"r{request}")
    log.flush()
    assert [pq.read_metadata(p).num_rows for p in parts(log.log_dir, "iris")] == [10, 10, 5]
    logged = read(parts(log.log_dir, "iris"))
    assert logged["request_id"].tolist() == [f"r{i}" for i in range(5) for _ in range(5)]
    assert logged["row"].tolist() == list(range(5)) * 5
    assert log.stats.written["prediction"] == 25
    assert log.stats.parts == 3


def test_a_part_is_written_once_its_first_row_is_rotate_seconds_old(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    now = [1000.0]
    log = make_log(rotate_seconds=60, clock=lambda: now[0])  # passes run by hand, no thread
    log_rows(log, models["iris"], records_of(store, "iris", [0]), "r")
    log.write_due()
    now[0] += 59.9
    log_rows(log, models["iris"], records_of(store, "iris", [1]), "r2")
    log.write_due()
    assert log.stats.queued == 0
    assert parts(log.log_dir, "iris") == []  # taken by the writer, but not due yet
    now[0] += 0.1
    log.write_due()
    assert [pq.read_metadata(p).num_rows for p in parts(log.log_dir, "iris")] == [2]
    assert log.stats.written["prediction"] == 2


def test_parts_are_written_under_a_hidden_tmp_name_then_renamed(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    seen: list[tuple[str, bool]] = []

    def sink(table: pa.Table, path: Path) -> None:
        final = path.with_name(path.name.removesuffix(".tmp").removeprefix("."))
        seen.append((path.name, final.exists()))
        pq.write_table(table, path)

    log = make_log(sink=sink)
    log_rows(log, models["iris"], records_of(store, "iris", [0]), "r")
    log.close()
    ((name, final_existed),) = seen
    assert name.startswith(".part-") and name.endswith(".parquet.tmp")  # hidden from readers
    assert not final_existed
    (part,) = parts(log.log_dir, "iris")
    assert part.name == name.removesuffix(".tmp").removeprefix(".")
    assert list(part.parent.glob(".*")) == []


def test_records_beyond_the_queue_size_are_dropped_and_counted(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    iris = models["iris"]
    record = records_of(store, "iris", [0])
    log = make_log(queue_size=3)  # no writer thread: nothing leaves the queue
    log_rows(log, iris, record * 3, "fills-the-queue")
    assert log.stats.queued == 3
    assert not log.log_predictions("no-room", iris, record, predict_rows(iris, record))
    assert not log.log_feedback("iris", "classification", [FeedbackLabel("x", 0, "setosa")])
    assert log.stats.dropped == {"prediction": 1, "feedback": 1}
    log.close()
    assert set(read(parts(log.log_dir, "iris"))["request_id"]) == {"fills-the-queue"}


def test_a_half_full_queue_wakes_the_writer_before_its_next_poll(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    iris = models["iris"]
    record = records_of(store, "iris", [0])
    log = make_log(queue_size=10, poll_seconds=600)
    log.start()
    log_rows(log, iris, record * 4, "under-half")
    log_rows(log, iris, record * 1, "half")
    until(lambda: log.stats.queued == 0, "the writer to take a half-full queue", timeout=10)
    log_rows(log, iris, record * 4, "under-half-again")
    time.sleep(0.2)
    assert log.stats.queued == 4  # below half: left for the next poll


def test_while_the_disk_is_stuck_the_queue_drains_and_rows_beyond_held_rows_are_dropped(
    make_log: Callable[..., PredictionLog],
    models: dict[str, LoadedModel],
    store: TinyStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entered, release = threading.Event(), threading.Event()

    def stuck_sink(table: pa.Table, path: Path) -> None:
        entered.set()
        assert release.wait(30)
        pq.write_table(table, path)

    iris = models["iris"]
    record = records_of(store, "iris", [0])
    log = make_log(queue_size=100, held_rows=10, sink=stuck_sink, poll_seconds=0.01)
    log.start()
    log_rows(log, iris, record * 4, "first")
    flusher = threading.Thread(target=log.flush)
    flusher.start()
    assert entered.wait(30)  # the disk holds the first 4 rows and does not return
    try:
        log_rows(log, iris, record * 6, "held")
        until(lambda: log.stats.queued == 0, "the writer to take the rows while it writes")
        # The queue has room, so these are accepted; the writer cannot hold them.
        log_rows(log, iris, record, "no-room")
        assert log.log_feedback("iris", "classification", [FeedbackLabel("x", 0, "setosa")])
        until(lambda: log.stats.dropped == {"prediction": 1, "feedback": 1}, "the drops")
    finally:
        release.set()
        flusher.join(30)
    log.close()
    assert log.stats.written["prediction"] == 10
    assert set(read(parts(log.log_dir, "iris"))["request_id"]) == {"first", "held"}
    assert caplog.text.count("further records are dropped") == 1  # once, not per batch


def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_failed_write_is_counted_and_the_next_part_is_written(
    make_log: Callable[..., PredictionLog],
    models: dict[str, LoadedModel],
    store: TinyStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = [0]

    def full_then_fine(table: pa.Table, path: Path) -> None:
        calls[0] += 1
        if calls[0] == 1:
            path.write_bytes(b"half a file")
            raise OSError(errno.ENOSPC, "No space left on device")
        pq.write_table(table, path)

    iris = models["iris"]
    log = make_log(sink=full_then_fine)
    log_rows(log, iris, records_of(store, "iris", [0, 1, 2]), "lost")
    log.flush()
    assert log.stats.write_errors == 1
    assert log.stats.failed["prediction"] == 3
    assert "Could not write 3 prediction records of model 'iris'" in caplog.text
    assert "No space left on device" in caplog.text
    assert list((log.log_dir / "iris" / "predictions").iterdir()) == []  # no .tmp left behind

    log_rows(log, iris, records_of(store, "iris", [3]), "kept")
    log.close()
    assert read(parts(log.log_dir, "iris"))["request_id"].tolist() == ["kept"]
    assert log.stats.written["prediction"] == 1


def test_an_unwritable_directory_is_counted_as_a_write_error(
    tmp_path: Path, models: dict[str, LoadedModel], store: TinyStore
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the log directory should be")
    log = PredictionLog(blocker)
    log_rows(log, models["iris"], records_of(store, "iris", [0]), "r")
    log.close()
    assert (log.stats.write_errors, log.stats.failed["prediction"]) == (1, 1)
    assert blocker.read_text() == "a file where the log directory should be"


def test_a_version_with_other_columns_starts_a_part_of_its_own(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    log = make_log()
    record = records_of(store, "iris", [0])
    log_rows(log, models["iris"], record, "v1")
    log_rows(log, models["iris_svc"], record, "v2")
    log.close()
    tables = [pq.read_table(p) for p in parts(log.log_dir, "iris")]
    assert [t.column("model_version").to_pylist() for t in tables] == [["1"], ["2"]]
    assert [any(n.startswith("proba.") for n in t.column_names) for t in tables] == [True, False]


def test_labels_are_written_to_the_feedback_parts_with_the_contract_columns(
    make_log: Callable[..., PredictionLog],
) -> None:
    log = make_log()
    assert log.log_feedback(
        "iris",
        "classification",
        [FeedbackLabel("a", 0, "setosa"), FeedbackLabel("b", 2, "virginica")],
    )
    assert log.log_feedback("diabetes", "regression", [FeedbackLabel("c", 0, 151.0)])
    log.close()
    iris = pq.read_table(parts(log.log_dir, "iris", "feedback")[0])
    assert iris.schema.equals(feedback_schema("classification"))
    assert iris.column_names == ["request_id", "row", "label", "timestamp"]
    assert iris.select(["request_id", "row", "label"]).to_pylist() == [
        {"request_id": "a", "row": 0, "label": "setosa"},
        {"request_id": "b", "row": 2, "label": "virginica"},
    ]
    diabetes = pq.read_table(parts(log.log_dir, "diabetes", "feedback")[0])
    assert diabetes.schema.field("label").type == pa.float64()
    assert diabetes.column("label").to_pylist() == [151.0]
    assert log.stats.written == {"prediction": 0, "feedback": 3}


def test_every_part_records_the_store_id_of_the_registry_the_server_uses(
    make_log: Callable[..., PredictionLog],
    models: dict[str, LoadedModel],
    store: TinyStore,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    iris = models["iris"]
    records = records_of(store, "iris", [0])
    named = make_log(store_id="sqlite:////srv/team/mlflow.db")
    assert named.log_predictions("req-1", iris, records, predict_rows(iris, records))
    assert named.log_feedback("iris", "classification", [FeedbackLabel("req-1", 0, "setosa")])
    named.close()
    # Without one, the settings' own default: SERVING_TRACKING_URI, normalised.
    monkeypatch.setenv("SERVING_TRACKING_URI", "http://user:secret@Tracking.example:5000/")
    defaulted = make_log()
    assert defaulted.log_predictions("req-2", iris, records, predict_rows(iris, records))
    defaulted.close()

    recorded = {
        part_store_id(pq.read_schema(path))
        for path in parts(named.log_dir, "iris") + parts(named.log_dir, "iris", "feedback")
    }
    assert recorded == {"sqlite:////srv/team/mlflow.db", "http://tracking.example:5000"}
    (feedback_part,) = parts(named.log_dir, "iris", "feedback")
    assert part_store_id(pq.read_schema(feedback_part)) == "sqlite:////srv/team/mlflow.db"


def test_after_close_records_are_dropped_not_queued(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    log = make_log()
    log.start()
    log.close()
    iris = models["iris"]
    record = records_of(store, "iris", [0])
    assert not log.log_predictions("late", iris, record, predict_rows(iris, record))
    assert log.stats.dropped["prediction"] == 1
    assert not (log.log_dir / "iris").exists()


def test_nothing_is_created_on_disk_before_something_is_written(tmp_path: Path) -> None:
    log = PredictionLog(tmp_path / "log", poll_seconds=0.01)
    log.start()
    log.flush()
    log.close()
    assert not (tmp_path / "log").exists()


@pytest.mark.parametrize(
    "options",
    [
        {"queue_size": 0},
        {"rotate_rows": 0},
        {"rotate_seconds": 0},
        {"poll_seconds": -1},
        {"part_seconds": 0},
        {"held_rows": 0},
    ],
)
def test_sizes_and_intervals_must_be_positive(tmp_path: Path, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        PredictionLog(tmp_path, **options)


# --- a crash loses at most rotate_seconds: the open part grows by replacement -------------


def test_a_part_is_on_disk_rotate_seconds_after_its_rows_and_grows_in_place(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    now = [1000.0]
    log = make_log(rotate_seconds=2, clock=lambda: now[0])  # passes run by hand, no thread
    iris = models["iris"]
    log_rows(log, iris, records_of(store, "iris", [0, 1]), "first")
    log.write_due()
    assert parts(log.log_dir, "iris") == []  # not due yet: in memory
    now[0] += 2
    log.write_due()
    (part,) = parts(log.log_dir, "iris")
    assert read([part])["request_id"].tolist() == ["first"] * 2
    log_rows(log, iris, records_of(store, "iris", [2]), "second")
    log.write_due()  # taken now (in a server, within poll_seconds of the answer)
    now[0] += 2
    log.write_due()
    # The same file, written again with the older rows and the new one: no second part.
    assert parts(log.log_dir, "iris") == [part]
    assert read([part])["request_id"].tolist() == ["first", "first", "second"]
    assert (log.stats.parts, log.stats.written["prediction"]) == (1, 3)
    assert list(part.parent.glob(".*")) == []


def test_a_reader_holding_the_older_footer_still_reads_its_rows_after_a_replacement(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    log = make_log()
    iris = models["iris"]
    log_rows(log, iris, records_of(store, "iris", [0, 1, 2]), "older")
    log.flush()
    (part,) = parts(log.log_dir, "iris")
    older_bytes, older_footer = part.read_bytes(), pq.read_metadata(part)
    log_rows(log, iris, records_of(store, "iris", [3]), "newer")
    log.flush()
    footer_length = int.from_bytes(older_bytes[-8:-4], "little")
    assert part.read_bytes().startswith(older_bytes[: -(footer_length + 8)])
    # What a pyarrow dataset does when the file changes between its footer and its rows.
    stale = pq.ParquetFile(part, metadata=older_footer).read().to_pandas()
    assert stale["request_id"].tolist() == ["older"] * 3
    assert read([part])["request_id"].tolist() == ["older"] * 3 + ["newer"]
    assert pq.read_metadata(part).num_row_groups == 2  # one per write


def test_many_writes_make_few_parts_of_unique_rows(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    now = [0.0]
    log = make_log(rotate_rows=10, rotate_seconds=1, part_seconds=60, clock=lambda: now[0])
    iris = models["iris"]
    for request in range(25):  # one write per request: 25 writes
        log_rows(log, iris, records_of(store, "iris", [0]), f"r{request}")
        log.write_due()
        now[0] += 1
        log.write_due()
    assert [pq.read_metadata(p).num_rows for p in parts(log.log_dir, "iris")] == [10, 10, 5]
    now[0] += 60  # the open part is old: closed, and the next row starts another
    log.write_due()
    log_rows(log, iris, records_of(store, "iris", [0]), "late")
    log.close()
    logged = read(parts(log.log_dir, "iris"))
    assert [pq.read_metadata(p).num_rows for p in parts(log.log_dir, "iris")] == [10, 10, 5, 1]
    assert logged["request_id"].tolist() == [f"r{i}" for i in range(25)] + ["late"]
    assert not logged.duplicated(["request_id", "row"]).any()


def test_a_failed_rewrite_keeps_the_rows_already_on_disk(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    calls = [0]

    def second_write_fails(table: pa.Table, path: Path) -> None:
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        pq.write_table(table, path)

    log = make_log(sink=second_write_fails)
    iris = models["iris"]
    for request_id in ("kept", "lost", "after"):
        log_rows(log, iris, records_of(store, "iris", [0]), request_id)
        log.flush()
    (part,) = parts(log.log_dir, "iris")
    assert read([part])["request_id"].tolist() == ["kept", "after"]
    assert (log.stats.failed["prediction"], log.stats.write_errors) == (1, 1)
    assert log.stats.written["prediction"] == 2


def test_a_hidden_file_left_by_a_dead_writer_is_deleted_and_a_live_ones_kept(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    dead = _dead_pid()
    directory = make_log().log_dir / "iris" / "predictions"
    directory.mkdir(parents=True)
    left = directory / f".part-20260101T000000000000-{dead}-000001.parquet.tmp"
    writing = directory / f".part-20260101T000000000000-{os.getppid()}-000001.parquet.tmp"
    left.write_bytes(b"half a part")
    writing.write_bytes(b"half a part, still being written")
    log = make_log()
    log_rows(log, models["iris"], records_of(store, "iris", [0]), "r")
    log.close()
    assert not left.exists()
    assert writing.exists()
    assert len(parts(log.log_dir, "iris")) == 1


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def test_champion_and_challenger_answers_interleaved_are_written_with_their_live_columns(
    make_log: Callable[..., PredictionLog], models: dict[str, LoadedModel], store: TinyStore
) -> None:
    champion, challenger = models["iris"], models["iris_svc"]  # other columns: no probabilities
    records = records_of(store, "iris", [0, 60])
    log = make_log()
    for rid in ("a", "b", "c"):
        log.log_predictions(rid, champion, records, predict_rows(champion, records), latency_ms=2.0)
        log.log_predictions(
            rid,
            challenger,
            records,
            predict_rows(challenger, records),
            role="challenger",
            served=False,
            latency_ms=3.5,
        )
    log.log_predictions(
        "d", challenger, records, None, role="challenger", served=False, error="Boom: no"
    )
    log.close()

    written = parts(log.log_dir, "iris")
    assert len(written) == 2, "one part per role, not one per alternation"
    frame = read(written)
    assert len(frame) == 14
    first = frame[frame["role"] == "champion"]
    second = frame[frame["role"] == "challenger"]
    assert first["served"].all() and (first["latency_ms"] == 2.0).all()
    assert set(first["model_version"]) == {"1"} and set(second["model_version"]) == {"2"}
    answered = second[second["error"].isna()]
    assert not answered["served"].any() and (answered["latency_ms"] == 3.5).all()
    assert {(r.request_id, r.row) for r in answered.itertuples()} == {
        (r.request_id, r.row) for r in first.itertuples()
    }
    failed = second[second["request_id"] == "d"]
    assert failed["error"].tolist() == ["Boom: no"] * 2
    assert failed["prediction"].isna().all() and failed["latency_ms"].isna().all()
    assert failed["feature.sepal length (cm)"].notna().all(), "the inputs are kept"
