"""Open Inference Protocol (KServe v2) routes and their errors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.serving.factories import MakeClient, TinyStore

INFER = "/v2/models/iris/infer"


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]


def column_inputs(rows: Any, shape_2d: bool = False) -> list[dict[str, Any]]:
    kinds = {"f": "FP64", "i": "INT64", "O": "BYTES"}
    return [
        {
            "name": name,
            "shape": [len(rows), 1] if shape_2d else [len(rows)],
            "datatype": kinds.get(rows[name].dtype.kind, "BYTES"),
            "data": rows[name].tolist(),
        }
        for name in rows.columns
    ]


@pytest.fixture
def iris(make_client: MakeClient) -> TestClient:
    return make_client("iris")


@pytest.fixture
def rows(store: TinyStore) -> Any:
    return store.models["iris"].features.iloc[[0, 60, 140]]


def test_health_live_and_ready_answer_200(iris: TestClient) -> None:
    assert iris.get("/v2/health/live").json() == {"live": True}
    assert iris.get("/v2/health/ready").json() == {"ready": True}


def test_model_metadata_lists_inputs_outputs_and_version(iris: TestClient) -> None:
    for path in ("/v2/models/iris", "/v2/models/iris/versions/1"):
        body = iris.get(path).json()
        assert (body["name"], body["versions"], body["platform"]) == ("iris", ["1"], "sklearn")
        assert body["inputs"][0] == {
            "name": "sepal length (cm)",
            "datatype": "FP64",
            "shape": [-1],
            "parameters": {"required": True},
        }
        assert body["outputs"] == [
            {"name": "predict", "datatype": "BYTES", "shape": [-1]},
            {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
        ]


def test_model_ready_answers_for_the_loaded_version(iris: TestClient) -> None:
    for path in ("/v2/models/iris/ready", "/v2/models/iris/versions/1/ready"):
        assert iris.get(path).json() == {"name": "iris", "ready": True}


def test_infer_with_one_tensor_per_column_returns_labels_and_probabilities(
    iris: TestClient, store: TinyStore, rows: Any
) -> None:
    estimator = store.models["iris"].estimator
    for shape_2d in (False, True):
        payload = {"id": "req-1", "inputs": column_inputs(rows, shape_2d)}
        response = iris.post(INFER, json=payload)
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["model_name"], body["model_version"], body["id"]) == ("iris", "1", "req-1")
        predict, proba = body["outputs"]
        assert predict == {
            "name": "predict",
            "shape": [3],
            "datatype": "BYTES",
            "data": estimator.predict(rows).tolist(),
        }
        assert (proba["name"], proba["shape"], proba["datatype"]) == (
            "predict_proba",
            [3, 3],
            "FP64",
        )
        np.testing.assert_allclose(
            proba["data"], estimator.predict_proba(rows).ravel(), rtol=0, atol=1e-9
        )


def test_infer_with_one_matrix_in_signature_order_answers_with_the_request_id(
    iris: TestClient, store: TinyStore, rows: Any
) -> None:
    matrix = {"name": "x", "shape": [3, 4], "datatype": "FP32", "data": rows.to_numpy().tolist()}
    response = iris.post("/v2/models/iris/versions/1/infer", json={"inputs": [matrix]})
    body = response.json()
    assert body["outputs"][0]["data"] == store.models["iris"].estimator.predict(rows).tolist()
    assert len(body["id"]) == 32
    assert body["id"] == response.headers["X-Request-ID"]


def test_infer_honours_requested_outputs(iris: TestClient, rows: Any) -> None:
    payload = {"inputs": column_inputs(rows), "outputs": [{"name": "predict_proba"}]}
    assert [o["name"] for o in iris.post(INFER, json=payload).json()["outputs"]] == [
        "predict_proba"
    ]


def test_regressor_and_mixed_models_infer_typed_outputs(
    make_client: MakeClient, store: TinyStore
) -> None:
    rows = store.models["diabetes"].features.head(2)
    body = (
        make_client("diabetes")
        .post("/v2/models/diabetes/infer", json={"inputs": column_inputs(rows)})
        .json()
    )
    assert body["outputs"][0]["datatype"] == "FP64"
    expected = store.models["diabetes"].estimator.predict(rows)
    np.testing.assert_allclose(body["outputs"][0]["data"], expected, atol=1e-9)
    mixed = store.models["mixed"].features.iloc[[0, 1]].drop(columns="city")  # optional
    response = make_client("mixed").post(
        "/v2/models/mixed/infer", json={"inputs": column_inputs(mixed)}
    )
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["datatype"] == "INT64"


# --- errors ----------------------------------------------------------------------------


def test_unknown_model_name_is_a_404(iris: TestClient) -> None:
    for path in ("/v2/models/wine", "/v2/models/wine/ready"):
        assert_error(iris.get(path), 404, "Model 'wine' is not served here", "'iris'")
    assert_error(iris.post("/v2/models/wine/infer", json={}), 404, "'wine'")


def test_other_version_is_a_404_naming_the_loaded_one(iris: TestClient) -> None:
    response = iris.post("/v2/models/iris/versions/7/infer", json={})
    assert_error(response, 404, "Version 7", "only version 1 is served")
    assert_error(iris.get("/v2/models/iris/versions/7"), 404, "Version 7")


def test_no_model_loaded_is_a_503(make_client: MakeClient, store: TinyStore) -> None:
    client = make_client(settings=store.settings(model_uri="models:/absent/1"))
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 503
    assert_error(client.post(INFER, json={}), 503, "absent")


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (lambda p: p.update(inputs=[]), ["'inputs' must be a non-empty list"]),
        (lambda p: p["inputs"][0].update(datatype="BYTES"), ["datatype BYTES", "send it as FP64"]),
        (lambda p: p["inputs"][0].update(datatype="FP128"), ["unknown datatype 'FP128'"]),
        (lambda p: p["inputs"][0].update(shape=[5]), ["has 3 values but shape [5]"]),
        (lambda p: p["inputs"][0].update(name="colour"), ["'colour' is not an input"]),
        (lambda p: p["inputs"].pop(), ["Missing required input(s) 'petal width (cm)'"]),
        (lambda p: p["inputs"][0]["data"].__setitem__(0, "x"), ["is FP64 but holds a string"]),
        (lambda p: p["inputs"][0].pop("data"), ["has no 'data'"]),
        (lambda p: p.update(outputs=[{"name": "scores"}]), ["Unknown output(s) 'scores'"]),
        (lambda p: p.update(id=3), ["'id' must be a string"]),
    ],
)
def test_bad_infer_request_is_a_400_naming_the_problem(
    iris: TestClient, rows: Any, change: Callable[[dict[str, Any]], Any], fragments: list[str]
) -> None:
    payload: dict[str, Any] = {"inputs": column_inputs(rows)}
    change(payload)
    assert_error(iris.post(INFER, json=payload), 400, *fragments)


def test_matrix_with_wrong_width_is_a_400(iris: TestClient) -> None:
    matrix = {"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [[1.0, 2.0, 3.0]]}
    assert_error(iris.post(INFER, json={"inputs": [matrix]}), 400, "send shape [N, 4]")


def test_matrix_for_a_model_with_string_columns_is_a_400(make_client: MakeClient) -> None:
    matrix = {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}
    response = make_client("mixed").post("/v2/models/mixed/infer", json={"inputs": [matrix]})
    assert_error(response, 400, "non-numeric columns", "one tensor per column")


def test_malformed_json_is_a_400(iris: TestClient) -> None:
    response = iris.post(INFER, content=b"{oops", headers={"Content-Type": "application/json"})
    assert_error(response, 400, "not valid JSON")


def test_infer_is_answered_by_the_plain_route_ahead_of_its_documented_one(
    iris: TestClient, rows: Any
) -> None:
    paths = [getattr(r, "path", None) for r in iris.app.router.routes]  # type: ignore[attr-defined]
    routes = [
        r
        for r in iris.app.router.routes
        if getattr(r, "path", None) == INFER.replace("iris", "{name}")
    ]  # type: ignore[attr-defined]
    assert [type(r).__name__ for r in routes] == ["_PlainRoute", "ProtocolRoute"]
    assert paths.index(routes[0].path) < paths.index("/v2/health/live")
    assert iris.post(INFER, json={"inputs": column_inputs(rows)}).status_code == 200
    wrong_method = iris.get(INFER)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "POST"
    metrics = iris.get("/metrics").text
    assert (
        'serving_requests_total{method="POST",route="/v2/models/{name}/infer",status="200"} 1.0'
        in metrics
    )
    assert INFER.replace("iris", "{name}") in iris.get("/openapi.json").json()["paths"]


def test_an_unexpected_failure_in_infer_is_a_500_in_the_protocol_shape_without_a_trace(
    iris: TestClient, rows: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail")

    monkeypatch.setattr("serving.protocols.kserve_v2.infer_response", broken)
    response = iris.post(INFER, json={"inputs": column_inputs(rows)})
    assert_error(response, 500, "the error is logged on the server")
    assert "secret detail" not in response.text and "Traceback" not in response.text
    assert "secret detail" in caplog.text
