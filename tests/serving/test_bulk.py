"""Bulk /predict: a {"records": [...]} batch too large to share a model call, for a model whose
inputs are all numbers, is checked column-wise and predicted as one DataFrame, with the same
answers and the same errors as the record-by-record way.

Two apps serve each model: ``bulk`` (``max_batch_size=2``: any batch of 2+ records takes the
column-wise path) and ``records`` (the default 256: these small batches go record by record).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

import serving.model.state
import serving.routes
from serving.model.inference import (
    build_request_models,
    parse_numeric_batch,
    parse_request,
    to_frame,
)
from serving.model.store import InputColumn
from tests.serving.factories import MakeClient, TinyModel, TinyStore

Pair = tuple[TestClient, TestClient]
JSON = {"Content-Type": "application/json"}


class RecordPathSpy:
    """Counts the requests validated record by record (``parse_request``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        self._real = serving.routes.parse_request
        monkeypatch.setattr(serving.routes, "parse_request", self)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._real(*args, **kwargs)


@pytest.fixture
def record_path(monkeypatch: pytest.MonkeyPatch) -> RecordPathSpy:
    return RecordPathSpy(monkeypatch)


@pytest.fixture
def serve(make_client: MakeClient) -> Callable[[str], Pair]:
    """``serve(name)`` -> (bulk app, records app) around the Production version of ``name``."""

    def _serve(name: str) -> Pair:
        return make_client(model_name=name, max_batch_size=2), make_client(model_name=name)

    return _serve


@pytest.fixture
def iris(serve: Callable[[str], Pair]) -> Pair:
    return serve("iris")


@pytest.fixture
def sparse(sparse_iris: TinyModel, serve: Callable[[str], Pair]) -> Pair:
    return serve("sparse-iris")


def both(pair: Pair, content: str) -> httpx.Response:
    """Send the same body to both apps; they must answer alike. Returns the bulk answer."""
    fast = pair[0].post("/predict", content=content, headers=JSON)
    slow = pair[1].post("/predict", content=content, headers=JSON)
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    assert fast.json() == slow.json()
    assert fast.headers.get("X-Model-Version") == slow.headers.get("X-Model-Version")
    return fast


def assert_error(response: httpx.Response, status: int, *fragments: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    text = error["message"] + " ".join(f"{d['field']}: {d['message']}" for d in error["details"])
    for fragment in fragments:
        assert fragment in text, text


def records_of(model: TinyModel, rows: slice = slice(None)) -> list[dict[str, Any]]:
    return [
        {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
        for r in model.features.iloc[rows].to_dict(orient="records")
    ]


# --- the same answers ----------------------------------------------------------------------


def test_bulk_records_answer_exactly_as_record_by_record_and_like_sklearn(
    iris: Pair, store: TinyStore, record_path: RecordPathSpy
) -> None:
    model = store.models["iris"]
    response = iris[0].post("/predict", json={"records": records_of(model)})
    assert response.status_code == 200, response.text
    assert record_path.calls == 0
    body = response.json()
    assert (body["model_name"], body["model_version"]) == ("iris", "1")
    predictions = body["predictions"]
    assert [p["label"] for p in predictions] == model.estimator.predict(model.features).tolist()
    expected = model.estimator.predict_proba(model.features)
    classes = [str(c) for c in model.estimator.classes_]
    got = np.array([[p["probabilities"][c] for c in classes] for p in predictions])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert [p["confidence"] for p in predictions] == got.max(axis=1).tolist()
    slow = iris[1].post("/predict", json={"records": records_of(model)})
    assert record_path.calls == 1
    assert slow.json() == body


def test_a_forest_with_an_optional_input_imputes_nulls_and_omissions_alike(
    sparse: Pair, sparse_iris: TinyModel, record_path: RecordPathSpy
) -> None:
    records = records_of(sparse_iris, slice(0, 40))
    response = both(sparse, json.dumps({"records": records}))
    expected = sparse_iris.estimator.predict(sparse_iris.features.iloc[:40]).tolist()
    assert [p["label"] for p in response.json()["predictions"]] == expected
    assert record_path.calls == 1  # the records app only
    omitted = [{k: v for k, v in r.items() if v is not None} for r in records]
    assert both(sparse, json.dumps({"records": omitted})).json() == response.json()


def test_regressor_bulk_values_equal_record_by_record_and_sklearn(
    serve: Callable[[str], Pair], store: TinyStore, record_path: RecordPathSpy
) -> None:
    model = store.models["diabetes"]
    response = both(serve("diabetes"), json.dumps({"records": records_of(model)}))
    assert record_path.calls == 1  # the records app only
    values = [p["value"] for p in response.json()["predictions"]]
    assert values == pytest.approx(model.estimator.predict(model.features).tolist(), abs=1e-9)


def test_integers_pass_for_doubles_as_on_the_record_path(iris: Pair, store: TinyStore) -> None:
    records = [{k: round(v) for k, v in r.items()} for r in records_of(store.models["iris"])]
    response = both(iris, json.dumps({"records": records[::10]}))
    assert response.status_code == 200, response.text


def test_a_model_with_string_inputs_goes_record_by_record_and_still_works(
    serve: Callable[[str], Pair], store: TinyStore, record_path: RecordPathSpy
) -> None:
    model = store.models["mixed"]
    response = serve("mixed")[0].post("/predict", json={"records": records_of(model, slice(20))})
    assert response.status_code == 200, response.text
    assert record_path.calls == 1
    labels = [p["label"] for p in response.json()["predictions"]]
    assert labels == model.estimator.predict(model.features.iloc[:20]).tolist()


def test_one_record_goes_the_usual_way(iris: Pair, record_path: RecordPathSpy) -> None:
    record = records_of_first(iris)
    assert iris[0].post("/predict", json=record).status_code == 200
    assert record_path.calls == 1


def records_of_first(pair: Pair) -> dict[str, Any]:
    inputs = pair[0].get("/model").json()["inputs"]
    return {column["name"]: 1.0 for column in inputs}


# --- the same errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        ({"petal width (cm)": None}, ("records[2].petal width (cm)", "cannot be null")),
        ({"petal width (cm)": math.nan}, ("records[2].petal width (cm)", "finite number")),
        ({"petal width (cm)": math.inf}, ("records[2].petal width (cm)", "finite number")),
        ({"petal width (cm)": "wide"}, ("records[2].petal width (cm)", "got a string")),
        ({"petal width (cm)": True}, ("records[2].petal width (cm)", "got a boolean")),
        ({"colour": 1.0}, ("records[2].colour", "not an input of this model")),
    ],
)
def test_each_bad_value_is_the_same_422_naming_the_field(
    iris: Pair, store: TinyStore, change: dict[str, Any], fragments: tuple[str, ...]
) -> None:
    records = records_of(store.models["iris"], slice(0, 5))
    records[2] = {**records[2], **change}
    assert_error(both(iris, json.dumps({"records": records})), 422, *fragments)


def test_an_omitted_required_field_is_the_same_422(iris: Pair, store: TinyStore) -> None:
    records = records_of(store.models["iris"], slice(0, 5))
    del records[3]["sepal length (cm)"]
    response = both(iris, json.dumps({"records": records}))
    assert_error(response, 422, "records[3].sepal length (cm)", "is required")


def test_a_record_that_is_not_an_object_and_an_extra_top_level_key_are_the_same_422(
    iris: Pair, store: TinyStore
) -> None:
    records: list[Any] = records_of(store.models["iris"], slice(0, 3))
    assert_error(both(iris, json.dumps({"records": [*records, [1, 2, 3, 4]]})), 422, "records[3]")
    assert_error(both(iris, json.dumps({"records": records, "extra": 1})), 422, "extra")


def test_model_failure_on_a_bulk_batch_is_a_500_without_traceback(
    iris: Pair, store: TinyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom inside the model")

    monkeypatch.setattr(serving.model.state, "predict_frame", failing)
    response = iris[0].post("/predict", json={"records": records_of(store.models["iris"])})
    assert response.status_code == 500, response.text
    assert response.json()["error"]["type"] == "prediction_failed"
    assert "boom" not in response.text


# --- no HTTP ---------------------------------------------------------------------------------

COLUMNS = (
    InputColumn("a", "double", True),
    InputColumn("b", "double", False),
    InputColumn("f", "float", True),
)


def test_the_bulk_frame_equals_the_frame_built_from_validated_records() -> None:
    models = build_request_models(COLUMNS)
    payload = {
        "records": [
            {"a": 1, "b": None, "f": 0.1},
            {"a": -0.0, "b": 2.5, "f": 1e30},
            {"a": 3.25, "b": 4, "f": 7},
        ]
    }
    frame = parse_numeric_batch(models, payload, min_rows=2)
    assert frame is not None
    records, is_batch = parse_request(models, payload)
    assert is_batch
    pd.testing.assert_frame_equal(frame, to_frame(COLUMNS, records))
    assert parse_numeric_batch(models, payload, min_rows=4) is None


def test_a_column_named_records_or_a_boolean_leaves_it_to_the_record_path() -> None:
    records_model = build_request_models((InputColumn("records", "double", True),))
    payload: dict[str, Any] = {"records": [1.0, 2.0]}
    assert parse_numeric_batch(records_model, payload, 1) is None
    models = build_request_models(COLUMNS)
    payload = {"records": [{"a": 1.0, "b": 2.0, "f": 3.0}, {"a": True, "b": 2.0, "f": 3.0}]}
    assert parse_numeric_batch(models, payload, 1) is None
