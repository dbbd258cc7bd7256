"""One input contract on every protocol (/predict, /invocations, v2): whole-number floats
pass for integer columns, a null in a required column and an unknown field are refused
naming them, and values outside the training domain are answered but flagged and counted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.serving.domain_factories import MIXED_DOMAIN, log_with_domain
from tests.serving.factories import MakeClient, TinyStore

MIXED = {"age": 41.0, "rooms": 4, "city": "lyon", "owner": "yes"}
V2_TYPES = {"age": "FP64", "rooms": "INT64", "city": "BYTES", "owner": "BYTES"}

Send = Callable[[TestClient, dict[str, Any]], httpx.Response]


def _predict(client: TestClient, record: dict[str, Any]) -> httpx.Response:
    return client.post("/predict", json=record)


def _invocations(client: TestClient, record: dict[str, Any]) -> httpx.Response:
    return client.post("/invocations", json={"dataframe_records": [record]})


def _v2(client: TestClient, record: dict[str, Any]) -> httpx.Response:
    name = client.get("/model").json()["name"]
    inputs = [
        {
            "name": column,
            "shape": [1],
            "datatype": "FP64" if isinstance(value, float) else V2_TYPES.get(column, "FP64"),
            "data": [value],
        }
        for column, value in record.items()
    ]
    return client.post(f"/v2/models/{name}/infer", json={"inputs": inputs})


PROTOCOLS: dict[str, Send] = {"predict": _predict, "invocations": _invocations, "v2": _v2}


def _label(protocol: str, response: httpx.Response) -> Any:
    body = response.json()
    if protocol == "predict":
        return body["prediction"]["label"]
    if protocol == "invocations":
        return body["predictions"][0]
    return body["outputs"][0]["data"][0]


def _error(protocol: str, response: httpx.Response) -> str:
    body = response.json()
    if protocol == "predict":
        return str(body["error"]["details"])
    return str(body["message"] if protocol == "invocations" else body["error"])


@pytest.fixture
def mixed(make_client: MakeClient) -> TestClient:
    return make_client(model_uri="models:/mixed/1")


@pytest.fixture(scope="module")
def domain_version(store: TinyStore) -> str:
    """'mixed-domain' version 1: the mixed model with its training domain logged."""
    model = log_with_domain(store, store.models["mixed"], MIXED_DOMAIN)
    return store.register("mixed-domain", model)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_whole_number_float_passes_for_an_integer_column(
    mixed: TestClient, protocol: str
) -> None:
    send = PROTOCOLS[protocol]
    as_integer = send(mixed, MIXED)
    as_float = send(mixed, {**MIXED, "rooms": 4.0})
    assert as_float.status_code == 200, as_float.text
    assert _label(protocol, as_float) == _label(protocol, as_integer)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_fractional_float_for_an_integer_column_is_refused_naming_it(
    mixed: TestClient, protocol: str
) -> None:
    response = PROTOCOLS[protocol](mixed, {**MIXED, "rooms": 4.5})
    assert response.status_code == (422 if protocol == "predict" else 400), response.text
    assert "rooms" in _error(protocol, response)


@pytest.mark.parametrize(
    ("protocol", "fragment"),
    [
        ("predict", "'owner' is required and cannot be null"),
        ("invocations", "column 'owner' row 0: a value is required (string, no gaps in training)"),
        ("v2", "holds null for required column 'owner'"),
    ],
)
def test_a_null_in_a_required_column_is_refused_naming_it(
    mixed: TestClient, protocol: str, fragment: str
) -> None:
    response = PROTOCOLS[protocol](mixed, {**MIXED, "owner": None})
    assert response.status_code == (422 if protocol == "predict" else 400), response.text
    assert fragment in _error(protocol, response)


@pytest.mark.parametrize(
    ("protocol", "fragment"),
    [
        ("predict", "'colour' is not an input of this model: remove it"),
        ("invocations", "names unknown column(s) 'colour': remove them"),
        ("v2", "input 'colour' is not an input of this model"),
    ],
)
def test_an_unknown_field_is_refused_naming_it(
    mixed: TestClient, protocol: str, fragment: str
) -> None:
    response = PROTOCOLS[protocol](mixed, {**MIXED, "colour": 1.0})
    assert response.status_code == (422 if protocol == "predict" else 400), response.text
    assert fragment in _error(protocol, response)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_null_in_an_optional_column_is_imputed_on_every_protocol(
    mixed: TestClient, protocol: str
) -> None:
    response = PROTOCOLS[protocol](mixed, {**MIXED, "age": None})
    assert response.status_code == 200, response.text


OUTSIDE = {**MIXED, "age": 99.0, "city": "rome"}
MESSAGES = [
    "age: 99 is outside the training range [20, 60]",
    "city: category 'rome' was not seen in training",
]


def test_predict_answers_values_outside_the_training_domain_with_warnings(
    make_client: MakeClient, domain_version: str
) -> None:
    client = make_client(model_uri=f"models:/mixed-domain/{domain_version}")
    response = client.post("/predict", json=OUTSIDE)
    assert response.status_code == 200, response.text
    assert response.json()["prediction"]["warnings"] == MESSAGES
    inside = client.post("/predict", json={"records": [MIXED, OUTSIDE]})
    rows = inside.json()["predictions"]
    assert "warnings" not in rows[0]
    assert rows[1]["warnings"] == MESSAGES
    metrics = client.get("/metrics").text
    assert 'serving_input_outside_domain_total{column="age"} 2.0' in metrics
    assert 'serving_input_outside_domain_total{column="city"} 2.0' in metrics


def test_invocations_and_v2_flag_values_outside_the_training_domain_per_row(
    make_client: MakeClient, domain_version: str
) -> None:
    client = make_client(model_uri=f"models:/mixed-domain/{domain_version}")
    mlflow = client.post("/invocations", json={"dataframe_records": [MIXED, OUTSIDE]})
    assert mlflow.status_code == 200, mlflow.text
    assert mlflow.json()["warnings"] == [{"row": 1, "messages": MESSAGES}]
    v2 = _v2(client, OUTSIDE)
    assert v2.status_code == 200, v2.text
    assert v2.json()["parameters"] == {"warnings": [{"row": 0, "messages": MESSAGES}]}


def test_a_version_without_a_training_domain_flags_nothing(mixed: TestClient) -> None:
    response = mixed.post("/predict", json=OUTSIDE)
    assert response.status_code == 200, response.text
    assert "warnings" not in response.json()["prediction"]
    assert (
        "warnings" not in mixed.post("/invocations", json={"dataframe_records": [OUTSIDE]}).json()
    )
