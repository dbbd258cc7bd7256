"""MLflow's scoring protocol on our server: every format, every error, /ping and /version."""

from __future__ import annotations

import json
from typing import Any

import httpx
import mlflow
import pytest
from fastapi.testclient import TestClient

from serving.model.state import ActiveModel
from serving.protocols import mlflow_scoring
from tests.serving.factories import MakeClient, TinyStore

JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}
MIXED = {"age": 41.0, "rooms": 4, "city": "lyon", "owner": "yes"}


def assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> None:
    """Status, MLflow's error body, and every fragment in the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "message"}, body
    assert body["error_code"] == code
    for fragment in fragments:
        assert fragment in body["message"], body["message"]


def post(client: TestClient, payload: Any, headers: dict[str, str] = JSON) -> httpx.Response:
    return client.post("/invocations", content=json.dumps(payload), headers=headers)


@pytest.fixture
def iris(make_client: MakeClient) -> TestClient:
    return make_client("iris")


@pytest.fixture
def rows(store: TinyStore) -> Any:
    return store.models["iris"].features.iloc[[0, 60, 140]]


@pytest.fixture
def expected(store: TinyStore, rows: Any) -> list[str]:
    return [str(label) for label in store.models["iris"].estimator.predict(rows)]


# --- formats ---------------------------------------------------------------------------


def test_dataframe_split_returns_sklearn_predictions(
    iris: TestClient, rows: Any, expected: list[str]
) -> None:
    split = rows.to_dict(orient="split")
    response = post(iris, {"dataframe_split": split})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": expected}
    assert response.headers["X-Model-Version"] == "1"


def test_dataframe_records_returns_sklearn_predictions(
    iris: TestClient, rows: Any, expected: list[str]
) -> None:
    response = post(iris, {"dataframe_records": rows.to_dict(orient="records")})
    assert response.json() == {"predictions": expected}


def test_instances_as_records_or_columns_return_sklearn_predictions(
    iris: TestClient, rows: Any, expected: list[str]
) -> None:
    for instances in (rows.to_dict(orient="records"), rows.to_dict(orient="list")):
        response = post(iris, {"instances": instances})
        assert response.json() == {"predictions": expected}, instances


def test_inputs_as_columns_records_or_one_row_return_sklearn_predictions(
    iris: TestClient, rows: Any, expected: list[str]
) -> None:
    assert post(iris, {"inputs": rows.to_dict(orient="list")}).json()["predictions"] == expected
    assert post(iris, {"inputs": rows.to_dict(orient="records")}).json()["predictions"] == expected
    one = rows.iloc[0].to_dict()
    assert post(iris, {"inputs": one}).json() == {"predictions": expected[:1]}


def test_csv_with_header_row_returns_sklearn_predictions(
    iris: TestClient, rows: Any, expected: list[str]
) -> None:
    response = iris.post("/invocations", content=rows.to_csv(index=False), headers=CSV)
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": expected}


def test_parquet_body_returns_sklearn_predictions(
    iris: TestClient, rows: Any, expected: list[str]
) -> None:
    headers = {"Content-Type": "application/vnd.apache.parquet"}
    response = iris.post("/invocations", content=rows.to_parquet(), headers=headers)
    assert response.json() == {"predictions": expected}


def test_regressor_answers_values_as_numbers(make_client: MakeClient, store: TinyStore) -> None:
    rows = store.models["diabetes"].features.head(3)
    response = post(make_client("diabetes"), {"dataframe_split": rows.to_dict(orient="split")})
    predicted = store.models["diabetes"].estimator.predict(rows)
    assert response.json()["predictions"] == pytest.approx(list(predicted), abs=1e-9)


def test_integer_labels_stay_integers_and_missing_optional_values_are_imputed(
    make_client: MakeClient, store: TinyStore
) -> None:
    records = [MIXED, {**MIXED, "age": None, "city": None}, {"rooms": 2, "owner": "no"}]
    response = post(make_client("mixed"), {"dataframe_records": records})
    assert response.status_code == 200, response.text
    frame = store.models["mixed"].features.iloc[:0].reindex(range(3))
    for i, record in enumerate(records):
        for key, value in record.items():
            frame.loc[i, key] = value
    frame["rooms"] = frame["rooms"].astype("int64")
    assert response.json()["predictions"] == store.models["mixed"].estimator.predict(frame).tolist()
    assert all(type(p) is int for p in response.json()["predictions"])


def test_params_charset_and_unknown_top_level_keys_are_accepted_like_mlflow(
    iris: TestClient, rows: Any, expected: list[str]
) -> None:
    payload = {"inputs": rows.to_dict(orient="records"), "params": {"x": 1}, "extra": True}
    headers = {"Content-Type": "application/json; charset=utf-8"}
    assert post(iris, payload, headers).json() == {"predictions": expected}


def test_ints_pass_for_doubles(iris: TestClient) -> None:
    record = {"sepal length (cm)": 5, "sepal width (cm)": 3, "petal length (cm)": 1}
    response = post(iris, {"dataframe_records": [record | {"petal width (cm)": 0}]})
    assert response.json() == {"predictions": ["setosa"]}


def test_an_unknown_column_is_a_400_naming_it(iris: TestClient) -> None:
    record = {"sepal length (cm)": 5, "sepal width (cm)": 3, "petal length (cm)": 1}
    response = post(iris, {"dataframe_records": [record | {"petal width (cm)": 0, "colour": 1}]})
    assert_error(
        response,
        400,
        "INVALID_PARAMETER_VALUE",
        "Record 0 of 'dataframe_records' names unknown column(s) 'colour': remove them",
    )


# --- errors ----------------------------------------------------------------------------


def test_missing_content_type_is_a_415_naming_the_accepted_types(iris: TestClient) -> None:
    response = iris.post("/invocations", content=b'{"inputs": {}}')
    assert_error(response, 415, "BAD_REQUEST", "no Content-Type", "application/json", "text/csv")


def test_unsupported_content_type_is_a_415(iris: TestClient) -> None:
    response = iris.post("/invocations", content=b"x", headers={"Content-Type": "text/plain"})
    assert_error(response, 415, "BAD_REQUEST", "Unsupported Content-Type 'text/plain'")


def test_non_utf8_charset_and_unknown_parameters_are_415s(iris: TestClient) -> None:
    latin = {"Content-Type": "application/json; charset=latin-1"}
    assert_error(post(iris, {}, latin), 415, "BAD_REQUEST", "charset 'latin-1'", "UTF-8")
    split = {"Content-Type": "application/json; format=pandas-split"}
    assert_error(post(iris, {}, split), 415, "BAD_REQUEST", "parameters: format")


def test_malformed_json_is_a_400(iris: TestClient) -> None:
    response = iris.post("/invocations", content=b"{not json", headers=JSON)
    assert_error(response, 400, "BAD_REQUEST", "not valid JSON", "dataframe_split")


def test_a_json_list_body_is_a_400(iris: TestClient) -> None:
    assert_error(post(iris, [1, 2]), 400, "BAD_REQUEST", "must be a JSON object, got an array")


def test_no_recognised_key_is_a_400_listing_the_keys(iris: TestClient) -> None:
    response = post(iris, {"data": [[1, 2, 3, 4]]})
    assert_error(response, 400, "BAD_REQUEST", "has none of the input fields", "'data'")


def test_two_format_keys_are_a_400(iris: TestClient, rows: Any) -> None:
    records = rows.to_dict(orient="records")
    response = post(iris, {"inputs": records, "instances": records})
    assert_error(response, 400, "BAD_REQUEST", "more than one", "'inputs', 'instances'")


def test_missing_column_is_a_400_naming_it(iris: TestClient, rows: Any) -> None:
    response = post(
        iris, {"dataframe_split": rows.drop(columns="petal width (cm)").to_dict(orient="split")}
    )
    assert_error(
        response, 400, "INVALID_PARAMETER_VALUE", "'petal width (cm)'", "add them to every row"
    )


def test_wrong_type_is_a_400_naming_column_row_and_type(iris: TestClient, rows: Any) -> None:
    records = rows.to_dict(orient="records")
    records[1]["petal width (cm)"] = "wide"
    response = post(iris, {"dataframe_records": records})
    assert_error(
        response, 400, "BAD_REQUEST", "column 'petal width (cm)' row 1", "expected a number"
    )


def test_fractional_value_for_a_long_column_is_a_400(make_client: MakeClient) -> None:
    response = post(make_client("mixed"), {"dataframe_records": [{**MIXED, "rooms": 4.5}]})
    assert_error(response, 400, "BAD_REQUEST", "column 'rooms' row 0", "expected an integer")


def test_dataframe_split_without_columns_is_a_400(iris: TestClient) -> None:
    response = post(iris, {"dataframe_split": {"data": [[5.1, 3.5, 1.4, 0.2]]}})
    assert_error(response, 400, "INVALID_PARAMETER_VALUE", "needs 'columns'")


def test_dataframe_records_that_is_not_a_list_is_a_400(iris: TestClient) -> None:
    response = post(iris, {"dataframe_records": {"a": 1}})
    assert_error(response, 400, "BAD_REQUEST", "must be a list of records", "got an object")


def test_csv_that_cannot_be_parsed_is_a_400(iris: TestClient) -> None:
    response = iris.post("/invocations", content=b"", headers=CSV)
    assert_error(response, 400, "BAD_REQUEST", "Failed to parse input as a CSV table")


def test_model_failure_is_a_500_without_traceback(
    make_client: MakeClient, rows: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client = make_client("iris")

    class Failing(ActiveModel):
        async def predict(self, records: Any) -> Any:
            raise RuntimeError("boom inside the model")

    holder = client.app.state.models  # type: ignore[attr-defined]
    active = holder.active
    holder.active = Failing(active.loaded, active.requests, active.batcher)
    response = post(client, {"dataframe_split": rows.to_dict(orient="split")})
    assert_error(response, 500, "INTERNAL_ERROR", "The model failed", "logged on the server")
    assert "boom" not in response.text
    assert "boom inside the model" in caplog.text


def test_no_model_loaded_is_a_503_in_mlflow_body(make_client: MakeClient, store: TinyStore) -> None:
    client = make_client(settings=store.settings(model_uri="models:/absent/1"))
    response = post(client, {"inputs": {}})
    assert_error(response, 503, "TEMPORARILY_UNAVAILABLE", "absent")
    assert client.get("/ping").status_code == 503


# --- ping and version ------------------------------------------------------------------


def test_ping_and_health_answer_200_with_a_newline(iris: TestClient) -> None:
    for path in ("/ping", "/health"):
        response = iris.get(path)
        assert (response.status_code, response.text) == (200, "\n")


def test_version_returns_the_mlflow_version(iris: TestClient) -> None:
    response = iris.get("/version")
    assert (response.status_code, response.text) == (200, mlflow.__version__)


def test_format_predictions_needs_no_http() -> None:
    from serving.model.inference import ClassPrediction, RegressionPrediction

    labels = [ClassPrediction(label=1, confidence=None, probabilities=None)]
    assert mlflow_scoring.format_predictions(labels) == {"predictions": [1]}
    assert mlflow_scoring.format_predictions([RegressionPrediction(value=2.5)]) == {
        "predictions": [2.5]
    }
