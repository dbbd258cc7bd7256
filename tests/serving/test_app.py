"""The REST API through FastAPI's TestClient, lifespan included, around tiny real models.

Every response is checked for leaked stack traces by the ``make_client`` fixture.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

import serving.app
import serving.routes
from serving.app import create_app
from tests.serving.factories import SETOSA, MakeClient, TinyStore

MIXED = {"age": 41.0, "rooms": 4, "city": "lyon", "owner": "yes"}
JSON = {"content-type": "application/json"}


def assert_error(response: httpx.Response, status: int, error_type: str, *fragments: str) -> None:
    """The status, the shared error shape, and every fragment in the message or details."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) == {"type", "message", "details"}
    assert error["type"] == error_type
    text = error["message"] + " ".join(f"{d['field']}: {d['message']}" for d in error["details"])
    for fragment in fragments:
        assert fragment in text, text


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture
def iris(make_client: MakeClient) -> TestClient:
    return make_client()


# --- success paths ---------------------------------------------------------------------


def test_predict_one_record_returns_label_probabilities_and_model_version(
    iris: TestClient, store: TinyStore
) -> None:
    response = iris.post("/predict", json=SETOSA)
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == "1"
    body = response.json()
    assert (body["model_name"], body["model_version"]) == ("iris", "1")
    prediction = body["prediction"]
    assert prediction["label"] == "setosa"
    classes = [str(c) for c in store.models["iris"].estimator.classes_]
    assert list(prediction["probabilities"]) == classes
    assert prediction["confidence"] == max(prediction["probabilities"].values())
    assert sum(prediction["probabilities"].values()) == pytest.approx(1.0)


def test_predict_records_returns_one_prediction_per_record_in_order(
    iris: TestClient, store: TinyStore
) -> None:
    rows = store.models["iris"].features.iloc[[0, 60, 140]]
    response = iris.post("/predict", json={"records": rows.to_dict(orient="records")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert "prediction" not in body
    labels = [p["label"] for p in body["predictions"]]
    assert labels == store.models["iris"].estimator.predict(rows).tolist()
    assert set(labels) <= set(store.models["iris"].estimator.classes_)
    assert response.headers["X-Model-Version"] == "1"


def test_predict_with_regressor_returns_a_value(make_client: MakeClient, store: TinyStore) -> None:
    client = make_client(model_name="diabetes")
    row = store.models["diabetes"].features.iloc[0]
    response = client.post("/predict", json=row.to_dict())
    assert response.status_code == 200, response.text
    prediction = response.json()["prediction"]
    assert set(prediction) == {"value"}
    expected = store.models["diabetes"].estimator.predict(row.to_frame().T)[0]
    assert prediction["value"] == pytest.approx(expected)


def test_predict_with_classifier_without_predict_proba_returns_label_only(
    make_client: MakeClient,
) -> None:
    client = make_client(model_uri="models:/iris/2")
    response = client.post("/predict", json=SETOSA)
    assert response.status_code == 200, response.text
    assert response.json()["prediction"] == {
        "label": "setosa",
        "confidence": None,
        "probabilities": None,
    }
    assert response.headers["X-Model-Version"] == "2"


def test_alias_uri_serves_the_aliased_version(make_client: MakeClient) -> None:
    client = make_client(model_uri="models:/iris@challenger")
    assert client.get("/health/ready").json()["model_version"] == "2"
    assert client.get("/model").json()["reference"] == "models:/iris@challenger"


def test_predict_accepts_omitted_or_null_optional_fields(make_client: MakeClient) -> None:
    client = make_client(model_name="mixed")
    omitted = client.post("/predict", json={"rooms": 3, "owner": "yes"})
    nulls = client.post("/predict", json={**MIXED, "age": None, "city": None})
    assert omitted.status_code == nulls.status_code == 200, omitted.text + nulls.text
    assert omitted.json()["prediction"]["label"] in (0, 1)
    assert type(nulls.json()["prediction"]["label"]) is int


def test_predict_accepts_an_unseen_category(make_client: MakeClient) -> None:
    client = make_client(model_name="mixed")
    response = client.post("/predict", json={**MIXED, "city": "atlantis"})
    assert response.status_code == 200, response.text


def test_health_live_is_always_ok(iris: TestClient) -> None:
    response = iris.get("/health/live")
    assert response.status_code == 200
    assert response.json() == {"status": "alive"}


def test_health_ready_names_the_loaded_model(iris: TestClient) -> None:
    response = iris.get("/health/ready")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "model_name": "iris",
        "model_version": "1",
        "last_reload_error": None,
        "warnings": [],
    }


def test_model_info_describes_the_answering_version(iris: TestClient, store: TinyStore) -> None:
    response = iris.get("/model")
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "1"
    info = response.json()
    tiny = store.models["iris"]
    assert (info["name"], info["version"], info["stage"]) == ("iris", "1", "Production")
    assert info["run_id"] == tiny.run_id
    assert info["task"] == "classification"
    assert info["classes"] == ["setosa", "versicolor", "virginica"]
    assert info["has_probabilities"] is True
    assert info["metrics"] == {"test_accuracy": tiny.metrics["test_accuracy"]}
    assert info["inputs"][0] == {"name": "sepal length (cm)", "type": "double", "required": True}
    assert [c["name"] for c in info["inputs"]] == list(tiny.features.columns)


def test_model_info_marks_optional_inputs_and_has_no_classes_for_regressors(
    make_client: MakeClient,
) -> None:
    mixed = make_client(model_name="mixed").get("/model").json()
    assert {c["name"]: c["required"] for c in mixed["inputs"]} == {
        "age": False,
        "rooms": True,
        "city": False,
        "owner": True,
    }
    assert {c["name"]: c["type"] for c in mixed["inputs"]}["rooms"] == "long"
    diabetes = make_client(model_name="diabetes").get("/model").json()
    assert diabetes["task"] == "regression"
    assert diabetes["classes"] is None
    assert "test_rmse" in diabetes["metrics"]


def test_openapi_describes_predict_with_the_real_feature_names(make_client: MakeClient) -> None:
    client = make_client(model_name="mixed")
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    refs = [option["$ref"].rsplit("/", 1)[-1] for option in body["schema"]["oneOf"]]
    assert refs == ["PredictRecord", "PredictBatch"]
    record = spec["components"]["schemas"]["PredictRecord"]
    assert list(record["properties"]) == ["age", "rooms", "city", "owner"]
    assert record["properties"]["rooms"]["type"] == "integer"
    assert record["required"] == ["rooms", "owner"]
    batch = spec["components"]["schemas"]["PredictBatch"]
    assert batch["properties"]["records"]["minItems"] == 1
    assert client.get("/docs").status_code == 200


def test_predict_is_answered_by_the_plain_route_ahead_of_its_documented_one(
    iris: TestClient,
) -> None:
    routes = [r for r in iris.app.router.routes if getattr(r, "path", None) == "/predict"]  # type: ignore[attr-defined]
    assert [type(r).__name__ for r in routes] == ["_PlainRoute", "APIRoute"]
    assert iris.post("/predict", json=SETOSA).status_code == 200
    wrong_method = iris.get("/predict")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    assert "/predict" in iris.get("/openapi.json").json()["paths"]


# --- request errors --------------------------------------------------------------------


def test_predict_rejects_missing_required_field_naming_it(iris: TestClient) -> None:
    body = {k: v for k, v in SETOSA.items() if k != "petal width (cm)"}
    response = iris.post("/predict", json=body)
    assert_error(response, 422, "invalid_request", "petal width (cm)", "is required")


def test_predict_rejects_null_for_required_field_naming_it(iris: TestClient) -> None:
    response = iris.post("/predict", json={**SETOSA, "sepal width (cm)": None})
    assert_error(response, 422, "invalid_request", "sepal width (cm)", "cannot be null")


def test_predict_rejects_wrong_type_naming_field_and_expected_type(iris: TestClient) -> None:
    response = iris.post("/predict", json={**SETOSA, "sepal length (cm)": "long"})
    assert_error(response, 422, "invalid_request", "sepal length (cm)", "must be a number (double)")


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_predict_rejects_nan_and_infinity_naming_the_field(iris: TestClient, literal: str) -> None:
    content = (
        f'{{"sepal length (cm)": {literal}, "sepal width (cm)": 3.5, '
        '"petal length (cm)": 1.4, "petal width (cm)": 0.2}'
    )
    response = iris.post("/predict", content=content, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request", "sepal length (cm)", "finite number")


def test_predict_rejects_unknown_field_naming_it(iris: TestClient) -> None:
    response = iris.post("/predict", json={**SETOSA, "species": "setosa"})
    assert_error(response, 422, "invalid_request", "species", "not an input of this model")


def test_predict_rejects_empty_records_list(iris: TestClient) -> None:
    response = iris.post("/predict", json={"records": []})
    assert_error(response, 422, "invalid_request", "records", "at least one record")


def test_predict_rejects_bad_record_in_batch_naming_its_index(iris: TestClient) -> None:
    response = iris.post("/predict", json={"records": [SETOSA, {**SETOSA, "x": 1}]})
    assert_error(response, 422, "invalid_request", "records[1].x")


def test_predict_rejects_a_json_array_body(iris: TestClient) -> None:
    response = iris.post("/predict", json=[SETOSA])
    assert_error(response, 422, "invalid_request", "must be a JSON object", '{"records"')


@pytest.mark.parametrize("content", ['{"sepal length (cm)": 5.1,', "not json", "\xff"])
def test_predict_rejects_malformed_json_saying_what_to_send(iris: TestClient, content: str) -> None:
    response = iris.post(
        "/predict", content=content.encode("latin-1"), headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "malformed_request", "not valid JSON", "JSON object")


def test_predict_rejects_absurdly_nested_json_as_malformed(iris: TestClient) -> None:
    response = iris.post("/predict", content=b"[" * 200_000, headers=JSON)
    assert_error(response, 400, "malformed_request", "not valid JSON")


def test_predict_rejects_an_empty_body(iris: TestClient) -> None:
    response = iris.post("/predict", content=b"", headers=JSON)
    assert_error(response, 400, "malformed_request", "body is empty")


def test_predict_rejects_body_over_the_limit_by_content_length(
    make_client: MakeClient,
) -> None:
    client = make_client(max_body_bytes=200)
    response = client.post("/predict", json={"records": [SETOSA] * 10})
    assert_error(response, 413, "payload_too_large", "200 bytes", "fewer records")


def test_predict_rejects_body_over_the_limit_when_streamed_without_length(
    make_client: MakeClient,
) -> None:
    client = make_client(max_body_bytes=200)

    def chunks() -> Any:
        yield b'{"records": ['
        for _ in range(10):
            yield b'{"sepal length (cm)": 5.1, "sepal width (cm)": 3.5},'
        yield b"]}"

    response = client.post("/predict", content=chunks(), headers=JSON)
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "payload_too_large", "200 bytes")


def test_unknown_route_answers_with_the_error_shape(iris: TestClient) -> None:
    assert_error(iris.get("/nope"), 404, "http_error", "/docs")
    assert_error(iris.get("/predict"), 405, "http_error", "GET")


def test_unexpected_error_is_a_500_without_internals(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def explode(*_args: Any) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(serving.routes, "parse_request", explode)
    client = make_client(raise_server_exceptions=False)
    response = client.post("/predict", json=SETOSA)
    assert_error(response, 500, "internal_error", "logged on the server")
    assert "secret internals" not in response.text


# --- no model yet ----------------------------------------------------------------------


def test_server_starts_without_production_version_then_picks_it_up_once_promoted(
    make_client: MakeClient, store: TinyStore, unique_name: str
) -> None:
    version = store.register(unique_name, store.models["iris"])
    client = make_client(model_name=unique_name, poll_seconds=0.05)
    promote = f"python -m pipeline promote --name {unique_name} --version <v>"

    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert ready.json()["status"] == "not_ready"
    assert promote in ready.json()["reason"]
    assert_error(client.post("/predict", json=SETOSA), 503, "model_not_ready", promote)
    assert_error(client.get("/model"), 503, "model_not_ready", "make pipeline")
    no_model_spec = client.get("/openapi.json").json()
    assert "PredictRecord" not in no_model_spec["components"]["schemas"]

    store.promote(unique_name, version)
    wait_until(lambda: client.get("/health/ready").status_code == 200)
    response = client.post("/predict", json=SETOSA)
    assert response.status_code == 200, response.text
    assert response.json()["model_name"] == unique_name
    assert response.headers["X-Model-Version"] == version
    spec = client.get("/openapi.json").json()
    assert "sepal length (cm)" in spec["components"]["schemas"]["PredictRecord"]["properties"]


def test_server_swaps_in_a_newly_promoted_version_and_its_docs(
    make_client: MakeClient, store: TinyStore, unique_name: str
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    client = make_client(model_name=unique_name, poll_seconds=0.05)
    assert client.post("/predict", json=SETOSA).headers["X-Model-Version"] == "1"
    assert "PredictRecord" in client.get("/openapi.json").json()["components"]["schemas"]

    store.register(unique_name, store.models["mixed"], production=True)
    wait_until(lambda: client.get("/health/ready").json().get("model_version") == "2")
    response = client.post("/predict", json=MIXED)
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == "2"
    record = client.get("/openapi.json").json()["components"]["schemas"]["PredictRecord"]
    assert list(record["properties"]) == ["age", "rooms", "city", "owner"]
    assert_error(client.post("/predict", json=SETOSA), 422, "invalid_request", "rooms")


def test_explicit_version_uri_that_does_not_exist_keeps_the_server_up(
    make_client: MakeClient,
) -> None:
    client = make_client(model_uri="models:/iris/42")
    assert client.get("/health/live").status_code == 200
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    assert "has no version 42" in ready.json()["reason"]
    assert_error(client.post("/predict", json=SETOSA), 503, "model_not_ready", "version 42")


def test_create_app_does_not_load_the_model_before_startup(store: TinyStore) -> None:
    app = create_app(store.settings())
    assert not hasattr(app.state, "models")
    with TestClient(app) as client:
        assert client.get("/health/ready").status_code == 200


def test_fastapi_s_opentelemetry_is_off_unless_the_environment_asks_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [n for n in os.environ if n.startswith(("OTEL_", "FASTAPI_OTEL_"))]:
        monkeypatch.delenv(name)
    assert serving.app._fastapi_telemetry() == {"tracing": False, "metrics": False, "logs": False}
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert serving.app._fastapi_telemetry() is None  # FastAPI's default: it looks per request
