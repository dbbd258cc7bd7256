"""The OpenAPI document declares every request body and every status a route can answer
(schemathesis checks the live server against it in test_openapi_schemathesis.py)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.serving.factories import MakeClient


@pytest.fixture
def document(make_client: MakeClient) -> dict[str, Any]:
    schema: dict[str, Any] = make_client(model_uri="models:/iris/1").get("/openapi.json").json()
    return schema


@pytest.mark.parametrize(
    ("path", "media_types"),
    [
        ("/invocations", {"application/json", "text/csv", "application/vnd.apache.parquet"}),
        ("/v2/models/{name}/infer", {"application/json"}),
        ("/v2/models/{name}/versions/{version}/infer", {"application/json"}),
        ("/predict", {"application/json"}),
        ("/feedback", {"application/json"}),
    ],
)
def test_every_prediction_route_declares_its_request_body(
    document: dict[str, Any], path: str, media_types: set[str]
) -> None:
    body = document["paths"][path]["post"]["requestBody"]
    assert body["required"] is True
    assert set(body["content"]) == media_types
    assert all(content.get("schema") for content in body["content"].values())


@pytest.mark.parametrize(
    ("path", "statuses"),
    [
        ("/predict", {"200", "400", "413", "415", "422", "500", "503", "504"}),
        ("/feedback", {"202", "400", "413", "415", "422", "500", "503"}),
        ("/invocations", {"200", "400", "413", "415", "500", "503", "504"}),
        ("/v2/models/{name}/infer", {"200", "400", "404", "413", "415", "500", "503", "504"}),
    ],
)
def test_every_prediction_route_declares_each_status_it_answers(
    document: dict[str, Any], path: str, statuses: set[str]
) -> None:
    assert set(document["paths"][path]["post"]["responses"]) == statuses


def test_v2_routes_declare_only_the_parameters_of_their_path(document: dict[str, Any]) -> None:
    for path, operations in document["paths"].items():
        if not path.startswith("/v2/"):
            continue
        for operation in operations.values():
            declared = {(p["name"], p["in"]) for p in operation.get("parameters", [])}
            declared.discard(("X-Routing-Key", "header"))  # the inference routes' canary key
            in_path = {(part.strip("{}"), "path") for part in path.split("/") if part[:1] == "{"}
            assert declared == in_path, path
            assert "404" in operation["responses"] or "{" not in path, path


@pytest.mark.parametrize(
    "path",
    [
        "/predict",
        "/invocations",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ],
)
def test_prediction_routes_declare_the_routing_key_and_the_answering_version(
    document: dict[str, Any], path: str
) -> None:
    operation = document["paths"][path]["post"]
    routing = [p for p in operation["parameters"] if p["name"] == "X-Routing-Key"]
    assert routing and routing[0]["in"] == "header" and routing[0]["required"] is False
    assert "X-Model-Version" in operation["responses"]["200"]["headers"]
