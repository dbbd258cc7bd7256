"""The optional API key: off by default; when set, prediction routes need the bearer key and
answer 401 in their own protocol's body; the other routes stay open; the key never leaks."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from serving.settings import Settings
from tests.serving.factories import SETOSA, MakeClient

KEY = "s3cret-key-for-tests"


@dataclass(frozen=True)
class Route:
    path: str
    protocol: str
    body: dict[str, Any]


ROUTES = [
    Route("/predict", "predict", SETOSA),
    Route(
        "/invocations",
        "mlflow",
        {"dataframe_split": {"columns": list(SETOSA), "data": [list(SETOSA.values())]}},
    ),
    Route(
        "/v2/models/iris/infer",
        "v2",
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [list(SETOSA.values())]}
            ]
        },
    ),
    Route(
        "/v2/models/iris/versions/1/infer",
        "v2",
        {
            "inputs": [
                {"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [list(SETOSA.values())]}
            ]
        },
    ),
]
ROUTE_IDS = [route.path for route in ROUTES]


def assert_unauthorized(
    response: httpx.Response, route: Route, challenge: str, *fragments: str
) -> None:
    """401, the Bearer challenge, and the route's own error body carrying the fragments."""
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == challenge
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if route.protocol == "predict":
        assert set(body["error"]) == {"type", "message", "details"}
        assert body["error"]["type"] == "unauthorized"
        message = body["error"]["message"]
    elif route.protocol == "mlflow":
        assert body["error_code"] == "UNAUTHENTICATED"
        assert set(body) == {"error_code", "message"}
        message = body["message"]
    else:
        assert set(body) == {"error"}
        message = body["error"]
    for fragment in fragments:
        assert fragment in message, message
    assert KEY not in response.text


@pytest.fixture
def secured(make_client: MakeClient) -> TestClient:
    return make_client(api_key=KEY)


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_prediction_routes_need_no_key_by_default(make_client: MakeClient, route: Route) -> None:
    response = make_client().post(route.path, json=route.body)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_prediction_without_a_key_is_a_401_asking_for_a_bearer_key(
    secured: TestClient, route: Route
) -> None:
    response = secured.post(route.path, json=route.body)
    assert_unauthorized(response, route, "Bearer", "needs an API key", "Authorization: Bearer")


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_prediction_with_a_wrong_key_is_a_401_saying_the_key_is_not_valid(
    secured: TestClient, route: Route
) -> None:
    response = secured.post(
        route.path, json=route.body, headers={"Authorization": f"Bearer {KEY}-not"}
    )
    assert_unauthorized(response, route, 'Bearer error="invalid_token"', "not valid")


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_prediction_with_the_right_key_is_answered(secured: TestClient, route: Route) -> None:
    response = secured.post(route.path, json=route.body, headers={"Authorization": f"Bearer {KEY}"})
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == "1"


@pytest.mark.parametrize(
    "authorization",
    [f"Basic {KEY}", "Bearer", "Bearer ", KEY, f"bearer{KEY}"],
    ids=["basic", "no-token", "blank-token", "no-scheme", "no-space"],
)
def test_malformed_authorization_is_a_401_showing_the_expected_header(
    secured: TestClient, authorization: str
) -> None:
    response = secured.post("/predict", json=SETOSA, headers={"Authorization": authorization})
    assert_unauthorized(response, ROUTES[0], "Bearer", "Authorization: Bearer <key>")


def test_bearer_scheme_is_case_insensitive(secured: TestClient) -> None:
    response = secured.post("/predict", json=SETOSA, headers={"Authorization": f"bearer {KEY}"})
    assert response.status_code == 200, response.text


def test_unauthorized_request_never_reaches_the_route(secured: TestClient) -> None:
    """A refused request is refused before its body is read: no 413 or 422 leaks through."""
    response = secured.post("/predict", json={"not": "a feature"})
    assert_unauthorized(response, ROUTES[0], "Bearer", "needs an API key")


@pytest.mark.parametrize(
    "path",
    [
        "/health/live",
        "/health/ready",
        "/metrics",
        "/model",
        "/docs",
        "/openapi.json",
        "/ping",
        "/version",
        "/v2/health/ready",
        "/v2/models/iris",
    ],
)
def test_health_metrics_model_and_docs_stay_open_with_a_key(secured: TestClient, path: str) -> None:
    response = secured.get(path)
    assert response.status_code == 200, response.text


def test_refusals_are_counted_in_metrics(secured: TestClient) -> None:
    assert secured.post("/predict", json=SETOSA).status_code == 401
    metrics = secured.get("/metrics").text
    assert 'status="401"' in metrics


def test_the_key_is_a_secret_never_shown_by_the_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVING_API_KEY", KEY)
    settings = Settings()
    assert settings.api_key is not None
    assert settings.api_key.get_secret_value() == KEY
    assert KEY not in repr(settings) and KEY not in str(settings)
    assert KEY not in settings.model_dump_json()


def test_a_blank_key_means_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVING_API_KEY", "  ")
    assert Settings().api_key is None


def test_the_key_never_appears_in_the_logs(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = make_client(api_key=KEY)
    client.post("/predict", json=SETOSA, headers={"Authorization": f"Bearer {KEY}x"})
    client.post("/predict", json=SETOSA, headers={"Authorization": f"Bearer {KEY}"})
    assert "401" in caplog.text  # the refusal is logged, without the key
    assert KEY not in caplog.text


def test_docs_declare_the_bearer_key_on_prediction_routes_only(secured: TestClient) -> None:
    schema = secured.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    paths = schema["paths"]
    for path in ("/predict", "/invocations", "/v2/models/{name}/infer", "/feedback"):
        assert paths[path]["post"]["security"] == [{"bearer": []}], path
        assert "401" in paths[path]["post"]["responses"]
    assert "security" not in paths["/model"]["get"]
    assert "security" not in paths["/health/ready"]["get"]


def test_docs_declare_no_key_when_none_is_set(make_client: MakeClient) -> None:
    schema = make_client().get("/openapi.json").json()
    assert "securitySchemes" not in schema.get("components", {})
    assert "security" not in schema["paths"]["/predict"]["post"]


FEEDBACK = {"request_id": "r-1", "label": "setosa"}


def test_feedback_needs_the_key_when_one_is_set(secured: TestClient) -> None:
    refused = secured.post("/feedback", json=FEEDBACK)
    assert_unauthorized(refused, ROUTES[0], "Bearer", "needs an API key")
    wrong = secured.post("/feedback", json=FEEDBACK, headers={"Authorization": "Bearer no"})
    assert_unauthorized(wrong, ROUTES[0], 'Bearer error="invalid_token"', "not valid")
    accepted = secured.post("/feedback", json=FEEDBACK, headers={"Authorization": f"Bearer {KEY}"})
    assert accepted.status_code == 202, accepted.text


def test_a_refused_prediction_still_carries_its_request_id(secured: TestClient) -> None:
    response = secured.post("/predict", json=SETOSA, headers={"X-Request-ID": "who-was-it"})
    assert response.status_code == 401
    assert response.headers["X-Request-ID"] == "who-was-it"
