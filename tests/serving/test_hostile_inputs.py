"""Inputs that used to answer 500 (or a response breaking its own schema), and requests a web
page could send cross-site: each now gets the protocol's 4xx naming the problem.

Found by review (issue 13): an integer beyond float64 overflowed the value coercion; a lone
surrogate echoed back in an error failed UTF-8 encoding; extreme finite inputs made the model
answer NaN; ``text/plain`` bodies were taken as JSON; invented HTTP methods added series to
``/metrics``; a duplicate ``dataframe_split`` column silently took its last value.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.serving.factories import SETOSA, MakeClient

HUGE_INTEGER = "1" + "0" * 400
"""A JSON integer no float64 holds."""
JSON = {"content-type": "application/json"}
INFER = "/v2/models/iris/infer"
DIABETES = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


@pytest.fixture
def iris(make_client: MakeClient) -> TestClient:
    return make_client(model_uri="models:/iris/1")


def _v2_body(values: dict[str, Any], **extra: Any) -> dict[str, Any]:
    inputs = [
        {"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
        for name, value in values.items()
    ]
    return {"inputs": inputs, **extra}


def _with_huge_sepal_length(body: str) -> str:
    return body.replace('"sepal length (cm)": 5.1', f'"sepal length (cm)": {HUGE_INTEGER}')


# --- integers beyond float64 -------------------------------------------------------------


def test_invocations_json_refuses_an_integer_beyond_float64_naming_the_column(
    iris: TestClient,
) -> None:
    body = _with_huge_sepal_length(json.dumps({"dataframe_records": [SETOSA]}))
    response = iris.post("/invocations", content=body, headers=JSON)
    assert response.status_code == 400, response.text
    message = response.json()["message"]
    assert "column 'sepal length (cm)' row 0: a number out of range for double" in message
    assert HUGE_INTEGER not in message


def test_invocations_csv_refuses_an_integer_beyond_float64_naming_the_column(
    iris: TestClient,
) -> None:
    header = ",".join(SETOSA)
    body = f"{header}\n{HUGE_INTEGER},3.5,1.4,0.2\n"
    response = iris.post("/invocations", content=body, headers={"content-type": "text/csv"})
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "BAD_REQUEST"
    assert "column 'sepal length (cm)' row 0: a number out of range" in response.json()["message"]


def test_v2_infer_refuses_an_integer_beyond_float64_naming_the_input(iris: TestClient) -> None:
    body = json.dumps(_v2_body(SETOSA)).replace("[5.1]", f"[{HUGE_INTEGER}]")
    response = iris.post(INFER, content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error": "input 'sepal length (cm)', column 'sepal length (cm)': a number out of range "
        "for double: send a smaller value."
    }


# --- lone surrogates ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/invocations", '{"dataframe_records": [{"\\ud800": 1}]}'),
        ("/v2/models/iris/infer", '{"id": "\\ud800", "inputs": []}'),
        ("/feedback", '{"request_id": "r1", "\\ud800": 1, "label": "setosa"}'),
        ("/predict", '{"\\ud800": 1}'),
    ],
)
def test_a_lone_surrogate_is_refused_as_invalid_json_on_every_route(
    iris: TestClient, path: str, body: str
) -> None:
    response = iris.post(path, content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert "lone UTF-16 surrogate escape" in response.text
    assert "send valid Unicode text" in response.text


def test_a_lone_surrogate_in_the_v2_id_is_refused_before_anything_is_predicted(
    iris: TestClient,
) -> None:
    body = json.dumps(_v2_body(SETOSA, id="\ud800"))  # json.dumps escapes it as \ud800
    response = iris.post(INFER, content=body, headers=JSON)
    assert response.status_code == 400, response.text
    assert "lone UTF-16 surrogate escape" in response.json()["error"]
    assert "serving_batch_size_rows_count 0.0" in iris.get("/metrics").text


# --- extreme finite inputs ---------------------------------------------------------------


def _diabetes_extremes() -> dict[str, float]:
    # Finite inputs whose scaled values overflow the regression to +inf and -inf: NaN.
    return {name: (1e306 if index % 2 else -1e306) for index, name in enumerate(DIABETES)}


def test_predict_refuses_inputs_that_make_the_model_answer_a_non_finite_number(
    make_client: MakeClient,
) -> None:
    client = make_client(model_uri="models:/diabetes/1")
    response = client.post("/predict", json=_diabetes_extremes())
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert message.startswith("The model's output is not a finite number for these values")
    assert "'age'" in message


def test_invocations_and_v2_refuse_a_non_finite_model_output_with_a_400(
    make_client: MakeClient,
) -> None:
    client = make_client(model_uri="models:/diabetes/1")
    values = _diabetes_extremes()
    split = {"dataframe_split": {"columns": list(values), "data": [list(values.values())]}}
    mlflow = client.post("/invocations", json=split)
    assert mlflow.status_code == 400, mlflow.text
    assert "not a finite number" in mlflow.json()["message"]
    v2 = client.post("/v2/models/diabetes/infer", json=_v2_body(values))
    assert v2.status_code == 400, v2.text
    assert "not a finite number" in v2.json()["error"]


# --- content types -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/predict", SETOSA),
        ("/feedback", {"request_id": "r1", "label": "setosa"}),
        ("/v2/models/iris/infer", _v2_body(SETOSA)),
    ],
)
@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_routes_refuse_a_body_that_is_not_declared_json_with_a_415(
    iris: TestClient, path: str, body: dict[str, Any], content_type: str | None
) -> None:
    headers = {} if content_type is None else {"content-type": content_type}
    response = iris.post(path, content=json.dumps(body), headers=headers)
    assert response.status_code == 415, response.text
    assert "Content-Type: application/json" in response.text
    assert "Unsupported Content-Type" in response.text


def test_predict_takes_json_with_a_charset_parameter(iris: TestClient) -> None:
    response = iris.post(
        "/predict",
        content=json.dumps(SETOSA),
        headers={"content-type": "Application/JSON; charset=utf-8"},
    )
    assert response.status_code == 200, response.text


# --- metrics labels ----------------------------------------------------------------------


def test_invented_http_methods_share_one_metrics_label(iris: TestClient) -> None:
    for index in range(20):
        iris.request(f"BREW{index}", "/predict")
    text = iris.get("/metrics").text
    assert "BREW" not in text
    assert 'serving_requests_total{method="other",route="/predict",status="405"} 20.0' in text, text


# --- duplicate columns -------------------------------------------------------------------


def test_invocations_refuses_a_column_named_twice_in_dataframe_split(iris: TestClient) -> None:
    columns = [*SETOSA, "sepal length (cm)"]
    payload = {"dataframe_split": {"columns": columns, "data": [[*SETOSA.values(), 9.0]]}}
    response = iris.post("/invocations", json=payload)
    assert response.status_code == 400, response.text
    assert response.json() == {
        "error_code": "INVALID_PARAMETER_VALUE",
        "message": "Invalid input. 'dataframe_split.columns' names 'sepal length (cm)' more "
        "than once: send each column once (which of the values was meant cannot be told).",
    }
