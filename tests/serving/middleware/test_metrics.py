"""GET /metrics: Prometheus text with request, batch, queue, model and reload series."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.serving.factories import SETOSA, MakeClient, TinyStore

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(client: TestClient) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(found: Samples, series: str, **labels: str) -> float:
    return found[(series, frozenset(labels.items()))]


def test_metrics_count_requests_by_route_template_and_status(make_client: MakeClient) -> None:
    client = make_client()
    for _ in range(3):
        assert client.post("/predict", json=SETOSA).status_code == 200
    assert client.post("/predict", json={**SETOSA, "x": 1}).status_code == 422
    assert client.get("/health/ready").status_code == 200
    assert client.get("/nowhere").status_code == 404
    found = samples(client)
    predict = {"method": "POST", "route": "/predict"}
    assert value(found, "serving_requests_total", **predict, status="200") == 3
    assert value(found, "serving_requests_total", **predict, status="422") == 1
    assert (
        value(found, "serving_requests_total", method="GET", route="unmatched", status="404") == 1
    )
    ready = {"method": "GET", "route": "/health/ready", "status": "200"}
    assert value(found, "serving_requests_total", **ready) == 1
    latency = "serving_request_duration_seconds_count"
    assert value(found, latency, **predict, status="200") == 3
    assert value(found, latency, **predict, status="422") == 1


def test_health_routes_and_metrics_stay_out_of_the_latency_histogram(
    make_client: MakeClient,
) -> None:
    client = make_client()
    client.get("/health/live")
    client.get("/health/ready")
    client.get("/metrics")
    found = samples(client)
    timed_routes = {
        dict(labels).get("route")
        for name, labels in found
        if name.startswith("serving_request_duration_seconds")
    }
    assert timed_routes.isdisjoint({"/health/live", "/health/ready", "/metrics"})
    live = {"method": "GET", "route": "/health/live", "status": "200"}
    assert value(found, "serving_requests_total", **live) == 1


def test_metrics_expose_batch_sizes_queue_depth_model_version_and_reloads(
    make_client: MakeClient,
) -> None:
    client = make_client()
    client.post("/predict", json={"records": [SETOSA] * 5})
    client.post("/predict", json=SETOSA)
    found = samples(client)
    assert value(found, "serving_batch_size_rows_count") == 2
    assert value(found, "serving_batch_size_rows_sum") == 6
    assert value(found, "serving_batch_size_rows_bucket", le="4.0") == 1
    assert value(found, "serving_queue_depth") == 0
    assert value(found, "serving_model_info", name="iris", version="1") == 1
    assert value(found, "serving_model_reloads_total", result="success") == 1
    assert value(found, "serving_model_reloads_total", result="failure") == 0
    assert value(found, "serving_model_reload_failing") == 0
    assert not [name for name, _ in found if name == "serving_model_fault"]
    assert value(found, "serving_batch_fallbacks_total") == 0


def test_two_apps_in_one_process_keep_separate_metrics(make_client: MakeClient) -> None:
    first, second = make_client(), make_client()
    first.post("/predict", json=SETOSA)
    predict = {"method": "POST", "route": "/predict", "status": "200"}
    assert value(samples(first), "serving_requests_total", **predict) == 1
    assert ("serving_requests_total", frozenset(predict.items())) not in samples(second)


def test_metrics_report_no_model_info_while_no_model_is_loaded(
    make_client: MakeClient, store: TinyStore, unique_name: str
) -> None:
    store.register(unique_name, store.models["iris"])
    client = make_client(model_name=unique_name)
    found = samples(client)
    assert not [name for name, _ in found if name == "serving_model_info"]
    assert value(found, "serving_model_reloads_total", result="failure") >= 1
    assert value(found, "serving_model_reload_failing") == 1
    assert value(found, "serving_model_fault", type="no_version_in_stage") == 1
