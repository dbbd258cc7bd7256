"""Every prediction route writes the prediction log, with the values it answered; request
ids; ``POST /feedback``; the log's metrics. Through FastAPI's TestClient, lifespan included.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from serving.prediction_log import PredictionLog
from tests.serving.factories import SETOSA, MakeClient, TinyStore

FEATURES = list(SETOSA)
HEX32 = r"^[0-9a-f]{32}$"


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


@pytest.fixture
def logging_client(make_client: MakeClient, log_dir: Path) -> Callable[..., TestClient]:
    """An app serving ``models:/<name>/1`` whose prediction log writes under ``log_dir``."""

    def _make(name: str = "iris", **overrides: Any) -> TestClient:
        return make_client(model_uri=f"models:/{name}/1", prediction_log_dir=log_dir, **overrides)

    return _make


def logged(
    client: TestClient, log_dir: Path, model: str, kind: str = "predictions"
) -> pd.DataFrame:
    """Everything the app logged so far for ``model``, after making the writer write it."""
    log: PredictionLog = client.app.state.prediction_log  # type: ignore[attr-defined]
    assert log.flush()
    paths = sorted((log_dir / model / kind).glob("part-*.parquet"))
    assert paths, f"no {kind} part for {model} under {log_dir}"
    return pd.concat([pq.read_table(p).to_pandas() for p in paths], ignore_index=True)


def of_request(frame: pd.DataFrame, request_id: str) -> pd.DataFrame:
    rows = frame[frame["request_id"] == request_id].sort_values("row")
    return rows.reset_index(drop=True)


def assert_features(rows: pd.DataFrame, records: list[dict[str, Any]]) -> None:
    for name in records[0]:
        assert rows[f"feature.{name}"].tolist() == [r[name] for r in records], name


def assert_class_answers(rows: pd.DataFrame, answers: list[dict[str, Any]]) -> None:
    assert rows["prediction"].tolist() == [str(a["label"]) for a in answers]
    for name in answers[0]["probabilities"]:
        assert rows[f"proba.{name}"].tolist() == [a["probabilities"][name] for a in answers]


# --- every route logs what it answered -------------------------------------------------


def test_predict_logs_each_record_with_its_answer_under_the_request_id(
    logging_client: Callable[..., TestClient], log_dir: Path, store: TinyStore
) -> None:
    client = logging_client()
    one = client.post("/predict", json=SETOSA)
    records = store.models["iris"].features.iloc[[0, 60, 140]].to_dict(orient="records")
    many = client.post("/predict", json={"records": records})
    assert (one.status_code, many.status_code) == (200, 200)

    frame = logged(client, log_dir, "iris")
    assert len(frame) == 4
    single = of_request(frame, one.headers["X-Request-ID"])
    assert single["row"].tolist() == [0]
    assert (single["model_name"][0], single["model_version"][0]) == ("iris", "1")
    assert_features(single, [SETOSA])
    assert_class_answers(single, [one.json()["prediction"]])
    batch = of_request(frame, many.headers["X-Request-ID"])
    assert batch["row"].tolist() == [0, 1, 2]
    assert_features(batch, records)
    assert_class_answers(batch, many.json()["predictions"])
    assert one.headers["X-Request-ID"] != many.headers["X-Request-ID"]
    assert frame["request_id"].str.fullmatch(HEX32[1:-1]).all()


def test_a_regressor_logs_the_value_it_answered(
    logging_client: Callable[..., TestClient], log_dir: Path, store: TinyStore
) -> None:
    client = logging_client("diabetes")
    records = store.models["diabetes"].features.iloc[[3, 4]].to_dict(orient="records")
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200, response.text
    rows = of_request(logged(client, log_dir, "diabetes"), response.headers["X-Request-ID"])
    assert rows["prediction"].tolist() == [p["value"] for p in response.json()["predictions"]]
    assert rows["prediction"].dtype == np.float64
    assert not [c for c in rows.columns if c.startswith("proba.")]
    assert_features(rows, records)


def test_a_bulk_request_predicted_as_one_frame_is_logged_like_its_answer(
    logging_client: Callable[..., TestClient], log_dir: Path, store: TinyStore
) -> None:
    client = logging_client(max_batch_size=2)  # 2 rows or more take the column-wise path
    records = store.models["iris"].features.iloc[::10].to_dict(orient="records")
    response = client.post("/predict", json={"records": records})
    assert response.status_code == 200, response.text
    rows = of_request(logged(client, log_dir, "iris"), response.headers["X-Request-ID"])
    assert rows["row"].tolist() == list(range(len(records)))
    assert_features(rows, records)
    assert_class_answers(rows, response.json()["predictions"])


@pytest.mark.parametrize("max_batch_size", [256, 2], ids=["records", "bulk-frame"])
def test_invocations_log_labels_and_probabilities(
    logging_client: Callable[..., TestClient],
    log_dir: Path,
    store: TinyStore,
    max_batch_size: int,
) -> None:
    client = logging_client(max_batch_size=max_batch_size)
    features = store.models["iris"].features.iloc[[0, 75, 149]]
    response = client.post(
        "/invocations", json={"dataframe_split": features.to_dict(orient="split")}
    )
    assert response.status_code == 200, response.text
    rows = of_request(logged(client, log_dir, "iris"), response.headers["X-Request-ID"])
    assert rows["prediction"].tolist() == response.json()["predictions"]
    estimator = store.models["iris"].estimator
    expected = estimator.predict_proba(features)
    for index, name in enumerate(estimator.classes_):
        np.testing.assert_allclose(rows[f"proba.{name}"], expected[:, index], rtol=0, atol=1e-9)


def test_v2_infer_logs_under_the_body_id_unless_a_header_names_the_request(
    logging_client: Callable[..., TestClient], log_dir: Path
) -> None:
    client = logging_client()
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [list(SETOSA.values())]}
    by_body = client.post("/v2/models/iris/infer", json={"id": "order-7", "inputs": [tensor]})
    by_header = client.post(
        "/v2/models/iris/infer",
        json={"id": "order-8", "inputs": [tensor]},
        headers={"X-Request-ID": "trace-8"},
    )
    anonymous = client.post("/v2/models/iris/infer", json={"inputs": [tensor]})
    assert by_body.headers["X-Request-ID"] == by_body.json()["id"] == "order-7"
    assert by_header.headers["X-Request-ID"] == "trace-8"
    assert by_header.json()["id"] == "order-8"  # the protocol echoes the body's id
    assert anonymous.json()["id"] == anonymous.headers["X-Request-ID"]
    frame = logged(client, log_dir, "iris")
    ids = ["order-7", "trace-8", anonymous.headers["X-Request-ID"]]
    assert sorted(frame["request_id"]) == sorted(ids)
    assert frame["prediction"].tolist() == ["setosa"] * 3


# --- request ids -----------------------------------------------------------------------


def test_a_valid_client_request_id_is_echoed_and_logged(
    logging_client: Callable[..., TestClient], log_dir: Path
) -> None:
    client = logging_client()
    given = "3f2c-AB_1.2:x"
    response = client.post("/predict", json=SETOSA, headers={"X-Request-ID": given})
    assert response.headers["X-Request-ID"] == given
    assert logged(client, log_dir, "iris")["request_id"].tolist() == [given]


@pytest.mark.parametrize(
    "given",
    ["x" * 129, "has space", "semi;colon", 'quote"d', "é"],
    ids=["too-long", "space", "semicolon", "quote", "non-ascii"],
)
def test_an_invalid_client_request_id_is_replaced_by_a_new_one_not_refused(
    logging_client: Callable[..., TestClient], given: str
) -> None:
    response = logging_client().post(
        "/predict", json=SETOSA, headers={"X-Request-ID": given.encode()}
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] != given
    assert len(response.headers["X-Request-ID"]) == 32


def test_error_answers_of_prediction_routes_carry_a_request_id_and_other_routes_none(
    logging_client: Callable[..., TestClient],
) -> None:
    client = logging_client()
    refused = client.post("/predict", json={**SETOSA, "extra": 1}, headers={"X-Request-ID": "e-1"})
    assert (refused.status_code, refused.headers["X-Request-ID"]) == (422, "e-1")
    bad = client.post("/invocations", json={"nothing": 1})
    assert bad.status_code == 400
    assert len(bad.headers["X-Request-ID"]) == 32
    assert "X-Request-ID" not in client.get("/model").headers
    assert "X-Request-ID" not in client.get("/health/ready").headers


def test_requests_that_fail_validation_are_not_logged(
    logging_client: Callable[..., TestClient], log_dir: Path
) -> None:
    client = logging_client()
    assert client.post("/predict", json={**SETOSA, "extra": 1}).status_code == 422
    ok = client.post("/predict", json=SETOSA)
    assert logged(client, log_dir, "iris")["request_id"].tolist() == [ok.headers["X-Request-ID"]]


# --- feedback --------------------------------------------------------------------------


def test_feedback_is_accepted_and_written_with_the_canonical_class_label(
    logging_client: Callable[..., TestClient], log_dir: Path
) -> None:
    client = logging_client("mixed")  # integer classes 0 and 1
    one = client.post("/feedback", json={"request_id": "r-1", "label": 1})
    many = client.post(
        "/feedback",
        json={
            "labels": [
                {"request_id": "r-2", "row": 3, "label": "0"},
                {"request_id": "r-3", "label": 1.0},
            ]
        },
    )
    assert (one.status_code, one.json()) == (202, {"accepted": 1, "model_name": "mixed"})
    assert (many.status_code, many.json()["accepted"]) == (202, 2)
    labels = logged(client, log_dir, "mixed", "feedback")
    assert labels[["request_id", "row", "label"]].to_dict(orient="records") == [
        {"request_id": "r-1", "row": 0, "label": "1"},
        {"request_id": "r-2", "row": 3, "label": "0"},
        {"request_id": "r-3", "row": 0, "label": "1"},
    ]
    assert labels["timestamp"].dt.tz is not None


def test_feedback_for_a_regressor_is_written_as_a_float(
    logging_client: Callable[..., TestClient], log_dir: Path
) -> None:
    client = logging_client("diabetes")
    response = client.post("/feedback", json={"request_id": "r", "row": 1, "label": 151})
    assert response.status_code == 202, response.text
    labels = logged(client, log_dir, "diabetes", "feedback")
    assert labels["label"].tolist() == [151.0]
    assert labels["label"].dtype == np.float64


def test_a_label_joins_the_prediction_it_names(
    logging_client: Callable[..., TestClient], log_dir: Path
) -> None:
    client = logging_client()
    prediction = client.post("/predict", json=SETOSA)
    request_id = prediction.headers["X-Request-ID"]
    feedback = client.post("/feedback", json={"request_id": request_id, "label": "versicolor"})
    assert feedback.status_code == 202, feedback.text
    joined = logged(client, log_dir, "iris").merge(
        logged(client, log_dir, "iris", "feedback"), on=["request_id", "row"]
    )
    assert joined[["prediction", "label"]].to_dict(orient="records") == [
        {"prediction": "setosa", "label": "versicolor"}
    ]


def assert_invalid(response: Any, field: str, *fragments: str) -> None:
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert field in error["message"]
    text = (
        error["message"] + " " + " ".join(f"{d['field']}: {d['message']}" for d in error["details"])
    )
    assert any(d["field"] == field for d in error["details"]), error["details"]
    for fragment in fragments:
        assert fragment in text, text


@pytest.mark.parametrize(
    ("body", "field", "fragments"),
    [
        ({"label": "setosa"}, "request_id", ["'request_id' is required", "X-Request-ID"]),
        ({"request_id": "a b", "label": "setosa"}, "request_id", ["letters, digits", "'a b'"]),
        ({"request_id": 12, "label": "setosa"}, "request_id", ["must be a string", "a number"]),
        ({"request_id": "r", "row": -1, "label": "setosa"}, "row", ["non-negative integer"]),
        ({"request_id": "r", "row": "0", "label": "setosa"}, "row", ["non-negative integer"]),
        ({"request_id": "r", "row": True, "label": "setosa"}, "row", ["got a boolean"]),
        ({"request_id": "r"}, "label", ["'label' is required", "true class"]),
        (
            {"request_id": "r", "label": "rose"},
            "label",
            ["one of the classes of model 'iris'", "setosa, versicolor, virginica", "'rose'"],
        ),
        ({"request_id": "r", "label": ["setosa"]}, "label", ["got an array"]),
        ({"request_id": "r", "label": "setosa", "note": 1}, "note", ["not a feedback field"]),
        ({"labels": []}, "labels", ["non-empty array", "got an empty array"]),
        ({"labels": {"request_id": "r"}}, "labels", ["got an object"]),
        ({"labels": [{"request_id": "r", "label": "setosa"}], "x": 1}, "x", ["takes nothing else"]),
        (
            {"labels": [{"request_id": "r", "label": "setosa"}, {"request_id": "s", "label": 3}]},
            "labels[1].label",
            ["one of the classes", "got 3"],
        ),
        ({"labels": ["r"]}, "labels[0]", ["must be a JSON object, got a string"]),
        (["r"], "body", ["must be a JSON object", "an array"]),
    ],
)
def test_invalid_feedback_is_a_422_naming_the_field(
    logging_client: Callable[..., TestClient],
    log_dir: Path,
    body: Any,
    field: str,
    fragments: list[str],
) -> None:
    client = logging_client()
    assert_invalid(client.post("/feedback", json=body), field, *fragments)
    log: PredictionLog = client.app.state.prediction_log  # type: ignore[attr-defined]
    log.flush()
    assert not (log_dir / "iris" / "feedback").exists()  # nothing of a refused body is kept


@pytest.mark.parametrize(
    ("label", "fragment"),
    [("high", "must be a number"), (True, "must be a number"), (math.inf, "finite number")],
    ids=["text", "boolean", "infinity"],
)
def test_a_regressor_label_must_be_a_finite_number(
    logging_client: Callable[..., TestClient], label: Any, fragment: str
) -> None:
    body = json.dumps({"request_id": "r", "label": label})  # Infinity: what Python's json sends
    response = logging_client("diabetes").post(
        "/feedback", content=body, headers={"Content-Type": "application/json"}
    )
    assert_invalid(response, "label", fragment)


def test_feedback_that_is_not_json_is_a_400(logging_client: Callable[..., TestClient]) -> None:
    response = logging_client().post(
        "/feedback", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_feedback_without_a_model_loaded_is_a_503_saying_why(
    make_client: MakeClient, log_dir: Path
) -> None:
    client = make_client(model_uri="models:/absent/1", prediction_log_dir=log_dir)
    response = client.post("/feedback", json={"request_id": "r", "label": "x"})
    assert response.status_code == 503
    assert "absent" in response.json()["error"]["message"]


def test_with_the_log_off_predictions_work_feedback_is_a_503_and_nothing_is_written(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client = make_client(prediction_log_enabled=False)
    assert client.post("/predict", json=SETOSA).status_code == 200
    response = client.post("/feedback", json={"request_id": "r", "label": "setosa"})
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["type"] == "prediction_log_unavailable"
    assert "SERVING_PREDICTION_LOG_ENABLED=true" in error["message"]
    assert "prediction_log_records_written" not in client.get("/metrics").text
    client.__exit__(None, None, None)
    assert list(tmp_path.iterdir()) == []  # the working directory (see conftest)


def test_feedback_is_a_503_when_the_queue_is_full(
    logging_client: Callable[..., TestClient],
) -> None:
    client = logging_client(prediction_log_queue_size=2)
    log: PredictionLog = client.app.state.prediction_log  # type: ignore[attr-defined]
    log.close()  # the writer is gone: nothing leaves the queue any more
    response = client.post("/feedback", json={"request_id": "r", "label": "setosa"})
    assert response.status_code == 503
    assert "not recorded" in response.json()["error"]["message"]
    too_many = [{"request_id": f"r{i}", "label": "setosa"} for i in range(3)]
    response = client.post("/feedback", json={"labels": too_many})
    assert_invalid(response, "labels", "at most 2 labels per request")


# --- the log by default, metrics, and a failing disk ----------------------------------


def test_the_log_is_on_by_default_under_prediction_log_in_the_working_directory(
    make_client: MakeClient, tmp_path: Path
) -> None:
    client = make_client()  # the conftest moved the working directory to tmp_path
    response = client.post("/predict", json=SETOSA)
    frame = logged(client, Path("prediction_log"), "iris")
    assert frame["request_id"].tolist() == [response.headers["X-Request-ID"]]
    assert (tmp_path / "prediction_log" / "iris" / "predictions").is_dir()


def metric(client: TestClient, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise AssertionError(f"no {name}{labels} in:\n{text}")


def test_metrics_count_written_dropped_and_queued_records(
    logging_client: Callable[..., TestClient], store: TinyStore
) -> None:
    client = logging_client(prediction_log_queue_size=3)
    log: PredictionLog = client.app.state.prediction_log  # type: ignore[attr-defined]
    records = store.models["iris"].features.iloc[:2].to_dict(orient="records")
    assert client.post("/predict", json={"records": records}).status_code == 200
    assert client.post("/feedback", json={"request_id": "r", "label": "setosa"}).status_code == 202
    log.flush()
    assert metric(client, "prediction_log_records_written_total", kind="prediction") == 2
    assert metric(client, "prediction_log_records_written_total", kind="feedback") == 1
    assert metric(client, "prediction_log_queue_records") == 0
    log.close()  # from now on the queue only fills
    assert client.post("/predict", json={"records": records}).status_code == 200
    assert metric(client, "prediction_log_records_dropped_total", kind="prediction") == 2
    assert metric(client, "prediction_log_write_errors_total") == 0


def test_a_log_directory_that_cannot_be_written_never_fails_a_prediction(
    make_client: MakeClient, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "occupied"
    blocker.write_text("a file, not a directory")
    client = make_client(prediction_log_dir=blocker)
    for _ in range(3):
        assert client.post("/predict", json=SETOSA).status_code == 200
    log: PredictionLog = client.app.state.prediction_log  # type: ignore[attr-defined]
    log.flush()
    assert client.post("/predict", json=SETOSA).status_code == 200
    assert metric(client, "prediction_log_write_errors_total") == 1
    assert metric(client, "prediction_log_records_failed_total", kind="prediction") == 3
    assert metric(client, "prediction_log_records_written_total", kind="prediction") == 0
    assert "Could not write 3 prediction records of model 'iris'" in caplog.text


def test_docs_describe_the_feedback_body(logging_client: Callable[..., TestClient]) -> None:
    operation = logging_client().get("/openapi.json").json()["paths"]["/feedback"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    single, batch = schema["oneOf"]
    assert single["required"] == ["request_id", "label"]
    assert batch["properties"]["labels"]["items"] == single
    assert "202" in operation["responses"]


# --- a crash, for real: python -m serving killed with SIGKILL -------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _logged_ids(log_dir: Path) -> list[str]:
    """The request id of every row in every part: each part must read whole."""
    ids: list[str] = []
    for part in sorted(log_dir.glob("iris/predictions/part-*.parquet")):
        ids += pq.read_table(part, columns=["request_id"]).column(0).to_pylist()
    return ids


def _until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)


@pytest.mark.e2e
@pytest.mark.timeout(120)
def test_a_server_killed_with_sigkill_keeps_what_it_answered_up_to_its_last_write(
    store: TinyStore, tmp_path: Path
) -> None:
    log_dir = tmp_path / "log"
    port = _free_port()
    env = {
        **os.environ,
        "SERVING_TRACKING_URI": store.tracking_uri,
        "SERVING_PORT": str(port),
        "SERVING_MODEL_NAME": "iris",
        "SERVING_PREDICTION_LOG_DIR": str(log_dir),  # its other settings: the defaults
    }
    env.pop("MLFLOW_TRACKING_URI", None)
    base_url = f"http://127.0.0.1:{port}"
    with (tmp_path / "server.log").open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "serving"], cwd=tmp_path, env=env, stdout=output, stderr=output
        )
    try:
        _until(lambda: _ready(process, base_url), 60, "the server to be ready")
        with httpx.Client(base_url=base_url, timeout=10.0) as client:

            def answered(request_id: str) -> str:
                response = client.post(
                    "/predict", json=SETOSA, headers={"X-Request-ID": request_id}
                )
                assert response.status_code == 200, response.text
                return request_id

            early = {answered(f"early-{i}") for i in range(30)}
            # On disk while the server runs (within the default 2 s), not at shutdown.
            _until(lambda: early <= set(_logged_ids(log_dir)), 15, "the answers on disk")
            late = {answered(f"late-{i}") for i in range(30)}
    finally:
        process.kill()  # SIGKILL: no shutdown, no last write
        process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    ids = _logged_ids(log_dir)  # every part reads whole
    assert early <= set(ids)
    assert len(ids) == len(set(ids))  # no row twice
    assert set(ids) <= early | late  # and nothing that was not answered
    assert "Traceback" not in (tmp_path / "server.log").read_text()


def _ready(process: subprocess.Popen[bytes], base_url: str) -> bool:
    assert process.poll() is None, "the server exited during startup"
    try:
        return httpx.get(f"{base_url}/health/ready", timeout=2.0).status_code == 200
    except httpx.TransportError:
        return False
