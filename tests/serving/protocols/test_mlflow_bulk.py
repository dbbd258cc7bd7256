"""Bulk /invocations: requests too large to share a batch are parsed column-wise into one
DataFrame and predicted in one call, with the same answers and the same errors as the
record way.

Two apps serve each model: ``bulk`` (``max_batch_size=2``, so any request of 2+ rows takes
the column-wise path when the model's inputs are all numeric) and ``records`` (the default
256, so these small requests take the record path). Every answer of one is compared with the
other's, and with scikit-learn's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import serving.model.state
from serving.model.inference import to_frame
from serving.model.store import InputColumn
from serving.protocols import mlflow_scoring
from serving.protocols._common import numeric_values_fit
from serving.settings import Settings
from tests.serving.factories import MakeClient, TinyModel, TinyStore

JSON = {"Content-Type": "application/json"}
CSV = {"Content-Type": "text/csv"}
Pair = tuple[TestClient, TestClient]


class RecordPathSpy:
    """Counts the requests that went the record way (``to_records``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._real = mlflow_scoring.to_records
        monkeypatch.setattr(mlflow_scoring, "to_records", self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._real(*args, **kwargs)


@pytest.fixture
def record_path(monkeypatch: pytest.MonkeyPatch) -> RecordPathSpy:
    return RecordPathSpy(monkeypatch)


@pytest.fixture
def serve(make_client: MakeClient, store: TinyStore) -> Callable[[str], Pair]:
    """``serve(name)`` -> (bulk app, records app) for registered model ``name``."""

    def _serve(name: str) -> Pair:
        bulk = Settings(
            tracking_uri=store.tracking_uri,
            model_uri=f"models:/{name}/1",
            poll_seconds=0.05,
            max_batch_size=2,
        )
        return make_client(settings=bulk), make_client(name)

    return _serve


@pytest.fixture
def iris(serve: Callable[[str], Pair]) -> Pair:
    return serve("iris")


@pytest.fixture
def gappy_pair(gappy: TinyModel, serve: Callable[[str], Pair]) -> Pair:
    return serve("gappy")


def post(client: TestClient, payload: Any, headers: dict[str, str] = JSON) -> httpx.Response:
    return client.post("/invocations", content=json.dumps(payload), headers=headers)


def both(pair: Pair, content: str | bytes, headers: dict[str, str] = JSON) -> httpx.Response:
    """Send the same body to both apps; they must answer alike. Returns the bulk answer."""
    bulk, records = pair
    fast = bulk.post("/invocations", content=content, headers=headers)
    slow = records.post("/invocations", content=content, headers=headers)
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    assert fast.json() == slow.json()
    return fast


def assert_error(response: httpx.Response, status: int, code: str, *fragments: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error_code", "message"}, body
    assert body["error_code"] == code
    for fragment in fragments:
        assert fragment in body["message"], body["message"]


def split(frame: pd.DataFrame) -> str:
    return json.dumps({"dataframe_split": frame.to_dict(orient="split")})


# --- the same predictions ----------------------------------------------------------------


def test_dataframe_split_bulk_gives_sklearn_labels_without_the_record_path(
    iris: Pair, store: TinyStore, record_path: RecordPathSpy
) -> None:
    model = store.models["iris"]
    bulk, records = iris
    response = bulk.post("/invocations", content=split(model.features), headers=JSON)
    assert response.status_code == 200, response.text
    assert record_path.calls == 0
    assert response.headers["X-Model-Version"] == "1"
    expected = model.estimator.predict(model.features).tolist()
    assert response.json() == {"predictions": expected}
    slow = records.post("/invocations", content=split(model.features), headers=JSON)
    assert record_path.calls == 1
    assert slow.json() == response.json()


def test_every_json_format_and_csv_take_the_column_wise_path_with_the_same_labels(
    iris: Pair, store: TinyStore, record_path: RecordPathSpy
) -> None:
    model = store.models["iris"]
    rows = model.features.iloc[::7]
    expected = {"predictions": model.estimator.predict(rows).tolist()}
    records = rows.to_dict(orient="records")
    columns = rows.to_dict(orient="list")
    bodies = [
        (split(rows), JSON),
        (json.dumps({"dataframe_records": records}), JSON),
        (json.dumps({"instances": records}), JSON),
        (json.dumps({"inputs": records, "params": {"a": 1}}), JSON),
        (json.dumps({"instances": columns}), JSON),
        (json.dumps({"inputs": columns}), JSON),
        (rows.to_csv(index=False), CSV),
    ]
    bulk, _ = iris
    for body, headers in bodies:
        response = bulk.post("/invocations", content=body, headers=headers)
        assert response.json() == expected, body[:80]
    assert record_path.calls == 0


def test_regressor_bulk_values_equal_the_record_path_and_sklearn(
    serve: Callable[[str], Pair], store: TinyStore, record_path: RecordPathSpy
) -> None:
    model = store.models["diabetes"]
    pair = serve("diabetes")
    response = pair[0].post("/invocations", content=split(model.features), headers=JSON)
    assert record_path.calls == 0
    values = response.json()["predictions"]
    assert all(type(v) is float for v in values)
    assert values == pytest.approx(model.estimator.predict(model.features).tolist(), abs=1e-9)
    slow = pair[1].post("/invocations", content=split(model.features), headers=JSON).json()
    assert values == pytest.approx(slow["predictions"], abs=1e-9)


def test_columns_may_come_in_any_order(
    iris: Pair, store: TinyStore, record_path: RecordPathSpy
) -> None:
    model = store.models["iris"]
    rows = model.features.iloc[::5]
    shuffled = rows[list(reversed(rows.columns))]
    response = both(iris, split(shuffled))
    assert response.json() == {"predictions": model.estimator.predict(rows).tolist()}
    assert record_path.calls == 1  # the records app only


def test_an_unknown_column_is_the_same_400_on_both_paths(iris: Pair, store: TinyStore) -> None:
    rows = store.models["iris"].features.iloc[::5].assign(colour=1.5)
    for payload, headers, where in (
        (split(rows), JSON, "'dataframe_split.columns'"),
        (rows.to_csv(index=False), CSV, "The CSV header"),
        (json.dumps({"dataframe_records": rows.to_dict(orient="records")}), JSON, "Record 0"),
    ):
        response = both(iris, payload, headers)
        assert_error(response, 400, "INVALID_PARAMETER_VALUE", where, "unknown column(s) 'colour'")


def test_integer_labels_stay_integers_and_missing_optional_values_are_imputed(
    gappy_pair: Pair, gappy: TinyModel, record_path: RecordPathSpy
) -> None:
    rows = gappy.features.iloc[::3].copy()
    rows.loc[rows.index[[1, 4]], "sepal width (cm)"] = np.nan  # sent as NaN
    frame = rows.to_dict(orient="split")
    nulls = json.loads(json.dumps(frame).replace("NaN", "null"))  # sent as null
    omitted = rows.drop(columns="sepal width (cm)")
    expected_omitted = gappy.estimator.predict(omitted.assign(**{"sepal width (cm)": np.nan}))
    for payload, expected in (
        (json.dumps({"dataframe_split": frame}), gappy.estimator.predict(rows)),
        (json.dumps({"dataframe_split": nulls}), gappy.estimator.predict(rows)),
        (split(omitted), expected_omitted),
        (omitted.to_csv(index=False), expected_omitted),
    ):
        headers = JSON if payload.startswith("{") else CSV
        response = both(gappy_pair, payload, headers)
        assert response.json() == {"predictions": expected.tolist()}, payload[:80]
        assert all(type(p) is int for p in response.json()["predictions"])
    assert record_path.calls == 4  # the records app only


def test_numeric_strings_and_whole_floats_for_longs_are_accepted_as_on_the_record_path(
    gappy_pair: Pair, gappy: TinyModel
) -> None:
    rows = gappy.features.iloc[:6]
    data = rows.to_dict(orient="split")
    data["data"] = [[str(v) for v in row[:-1]] + [float(row[-1])] for row in data["data"]]
    response = both(gappy_pair, json.dumps({"dataframe_split": data}))
    assert response.json() == {"predictions": gappy.estimator.predict(rows).tolist()}


def test_a_model_with_string_inputs_uses_the_record_path_and_still_works(
    serve: Callable[[str], Pair], store: TinyStore, record_path: RecordPathSpy
) -> None:
    model = store.models["mixed"]
    rows = model.features.iloc[:20]
    payload = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split"))})
    response = serve("mixed")[0].post("/invocations", content=payload, headers=JSON)
    assert response.status_code == 200, response.text
    assert record_path.calls == 1
    assert response.json() == {"predictions": model.estimator.predict(rows).tolist()}


# --- the same errors ---------------------------------------------------------------------


def test_missing_required_column_is_the_same_400_naming_it(iris: Pair, store: TinyStore) -> None:
    rows = store.models["iris"].features.iloc[:5].drop(columns="petal width (cm)")
    for body, headers in (
        (split(rows), JSON),
        (json.dumps({"inputs": rows.to_dict(orient="list")}), JSON),
        (json.dumps({"dataframe_records": rows.to_dict(orient="records")}), JSON),
        (rows.to_csv(index=False), CSV),
    ):
        response = both(iris, body, headers)
        assert_error(
            response, 400, "INVALID_PARAMETER_VALUE", "'petal width (cm)'", "add them to every row"
        )


def test_null_in_a_required_long_column_is_the_same_400(gappy_pair: Pair, gappy: TinyModel) -> None:
    data = gappy.features.iloc[:4].to_dict(orient="split")
    data["data"][1][-1] = None
    response = both(gappy_pair, json.dumps({"dataframe_split": data}))
    assert_error(response, 400, "BAD_REQUEST", "column 'petals' row 1", "a value is required")


def test_infinity_is_the_same_400_in_json_and_csv(iris: Pair, store: TinyStore) -> None:
    rows = store.models["iris"].features.iloc[:4].copy()
    rows.iloc[2, 1] = math.inf
    for body, headers in ((split(rows), JSON), (rows.to_csv(index=False), CSV)):
        response = both(iris, body, headers)
        assert_error(
            response, 400, "BAD_REQUEST", "column 'sepal width (cm)' row 2", "finite number"
        )


def test_nan_in_a_required_double_column_is_the_same_400_on_both_paths(
    iris: Pair, store: TinyStore
) -> None:
    rows = store.models["iris"].features.iloc[:4].copy()
    rows.iloc[1, 0] = math.nan
    response = both(iris, split(rows))
    assert_error(
        response,
        400,
        "BAD_REQUEST",
        "column 'sepal length (cm)' row 1: a value is required (double, no gaps in training)",
    )


def test_text_and_boolean_values_are_the_same_400_naming_column_and_row(
    iris: Pair, store: TinyStore
) -> None:
    records = store.models["iris"].features.iloc[:4].to_dict(orient="records")
    for value, fragment in (("wide", "expected a number"), (True, "got a boolean")):
        sent = [dict(r) for r in records]
        sent[3]["petal width (cm)"] = value
        for payload in ({"dataframe_records": sent}, {"instances": sent}):
            response = both(iris, json.dumps(payload))
            assert_error(response, 400, "BAD_REQUEST", "column 'petal width (cm)' row 3", fragment)
    csv = pd.DataFrame(records).assign(**{"petal width (cm)": ["1", "2", "x", "3"]})
    response = both(iris, csv.to_csv(index=False), CSV)
    assert_error(response, 400, "BAD_REQUEST", "column 'petal width (cm)' row 2", "a number")


def test_fractional_value_in_a_long_column_is_the_same_400(
    gappy_pair: Pair, gappy: TinyModel
) -> None:
    data = gappy.features.iloc[:4].to_dict(orient="split")
    data["data"][2][-1] = 4.5
    response = both(gappy_pair, json.dumps({"dataframe_split": data}))
    assert_error(response, 400, "BAD_REQUEST", "column 'petals' row 2", "expected an integer")


def test_rows_of_different_lengths_are_the_same_400(iris: Pair, store: TinyStore) -> None:
    data = store.models["iris"].features.iloc[:4].to_dict(orient="split")
    data["data"][1] = data["data"][1][:3]
    response = both(iris, json.dumps({"dataframe_split": data}))
    assert_error(response, 400, "BAD_REQUEST", "Row 1 of 'dataframe_split.data' has 3 values")


def test_model_failure_on_a_bulk_request_is_a_500_without_traceback(
    iris: Pair, store: TinyStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom inside the model")

    monkeypatch.setattr(serving.model.state, "predict_frame", failing)
    response = iris[0].post(
        "/invocations", content=split(store.models["iris"].features), headers=JSON
    )
    assert_error(response, 500, "INTERNAL_ERROR", "The model failed", "logged on the server")
    assert "boom" not in response.text
    assert "boom inside the model" in caplog.text


# --- no HTTP -------------------------------------------------------------------------------

COLUMNS = (
    InputColumn("a", "double", True),
    InputColumn("b", "double", False),
    InputColumn("n", "long", True),
    InputColumn("i", "integer", False),
    InputColumn("f", "float", True),
)


def bodies() -> Iterator[bytes]:
    records = [
        {"a": 1.5, "b": None, "n": 3, "i": 2, "f": 0.25},
        {"a": 2, "b": 0.5, "n": 4.0, "i": None, "f": 1e30},
        {"a": -0.0, "b": 7, "n": -2, "i": 5, "f": 3},
    ]
    yield json.dumps({"dataframe_records": records}).encode()
    names = ["f", "i", "n", "b", "a"]
    rows = [[r[name] for name in names] for r in records]
    yield json.dumps({"dataframe_split": {"columns": names, "data": rows}}).encode()
    yield json.dumps({"inputs": {k: [r[k] for r in records] for k in ("a", "n", "f")}}).encode()
    ints = [{"a": 1, "n": 2, "i": 3, "f": 4}, {"a": 5, "n": 6, "i": 7, "f": 8}]
    yield json.dumps({"instances": ints}).encode()


@pytest.mark.parametrize("body", list(bodies()))
def test_the_bulk_frame_equals_the_frame_built_from_the_records(body: bytes) -> None:
    frame = mlflow_scoring.parse_request("application/json", body, COLUMNS, bulk_rows=2)
    records = mlflow_scoring.parse_request("application/json", body, COLUMNS)
    assert isinstance(frame, pd.DataFrame) and isinstance(records, list)
    pd.testing.assert_frame_equal(frame, to_frame(COLUMNS, records))


def test_the_bulk_csv_frame_equals_the_frame_built_from_the_records() -> None:
    body = b"a,b,n,i,f\n1.5,,3,2,0.1\n2,0.30000000000000004,4,,1e30\n-0.0,7,-2,5,3\n"
    frame = mlflow_scoring.parse_request("text/csv", body, COLUMNS, bulk_rows=2)
    records = mlflow_scoring.parse_request("text/csv", body, COLUMNS)
    assert isinstance(frame, pd.DataFrame) and isinstance(records, list)
    pd.testing.assert_frame_equal(frame, to_frame(COLUMNS, records))


def test_requests_smaller_than_bulk_rows_come_back_as_records() -> None:
    body = next(bodies())
    assert isinstance(
        mlflow_scoring.parse_request("application/json", body, COLUMNS, bulk_rows=4), list
    )


@pytest.mark.parametrize(
    ("column", "values", "fits"),
    [
        (InputColumn("x", "double", True), [1.0, np.nan], False),
        (InputColumn("x", "double", False), [1.0, np.nan], True),
        (InputColumn("x", "double", True), [1.0, np.inf], False),
        (InputColumn("x", "long", True), [1.0, 2.0], True),
        (InputColumn("x", "long", True), [1.0, np.nan], False),
        (InputColumn("x", "long", False), [1.0, np.nan], True),
        (InputColumn("x", "long", True), [1.5], False),
        (InputColumn("x", "long", True), [2.0**60], False),
        (InputColumn("x", "integer", True), [2**40], False),
        (InputColumn("x", "integer", True), [7], True),
    ],
)
def test_numeric_values_fit_follows_coerce_value(
    column: InputColumn, values: list[float], fits: bool
) -> None:
    assert numeric_values_fit(column, np.array(values)) is fits
