"""Hot reload: warm before the swap, keep the old model when a new one fails, report why."""

from __future__ import annotations

import dataclasses
import gc
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient

import serving.model.state
from serving.errors import ModelLoadError
from serving.model.ref import ModelRef
from serving.model.state import ModelHolder, prepare
from serving.model.store import LoadedModel, load_model
from tests.serving.factories import SETOSA, MakeClient, TinyModel, TinyStore


def wait_until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def metric(client: TestClient, series: str) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")


class Recording:
    """Wraps an estimator and records the row counts it is asked to predict."""

    def __init__(self, estimator: Any, fail: bool = False) -> None:
        self.estimator = estimator
        self.fail = fail
        self.classes_ = estimator.classes_
        self.calls: list[int] = []

    def predict(self, frame: Any) -> Any:
        self.calls.append(len(frame))
        if self.fail:
            raise ValueError("broken estimator")
        return self.estimator.predict(frame)

    def predict_proba(self, frame: Any) -> Any:
        self.calls.append(len(frame))
        if self.fail:
            raise ValueError("broken estimator")
        return self.estimator.predict_proba(frame)


@pytest.fixture(scope="module")
def iris_loaded(store: TinyStore) -> LoadedModel:
    return load_model(ModelRef.from_uri("models:/iris/1"), store.tracking_uri)


def test_warm_up_predicts_the_logged_input_example_before_the_model_answers(
    iris_loaded: LoadedModel,
) -> None:
    recording = Recording(iris_loaded.estimator)
    assert len(iris_loaded.input_example) == 5
    prepare(dataclasses.replace(iris_loaded, estimator=recording))
    assert recording.calls == [5, 5]


def test_warm_up_uses_a_synthetic_row_when_no_input_example_was_logged(
    iris_loaded: LoadedModel,
) -> None:
    recording = Recording(iris_loaded.estimator)
    prepare(dataclasses.replace(iris_loaded, estimator=recording, input_example=()))
    assert recording.calls == [1, 1]


def test_a_model_failing_on_its_own_input_example_is_refused(iris_loaded: LoadedModel) -> None:
    broken = dataclasses.replace(iris_loaded, estimator=Recording(iris_loaded.estimator, True))
    with pytest.raises(ModelLoadError) as info:
        prepare(broken)
    assert info.value.status_code == 503
    assert "fails to predict its own logged input example" in info.value.message
    assert "version 1" in info.value.message


def test_a_synthetic_warm_up_failure_does_not_refuse_the_model(iris_loaded: LoadedModel) -> None:
    broken = Recording(iris_loaded.estimator, fail=True)
    prepare(dataclasses.replace(iris_loaded, estimator=broken, input_example=()))
    assert broken.calls == [1]


def test_a_promotion_then_a_rollback_are_both_picked_up_and_the_old_batcher_stops(
    make_client: MakeClient, store: TinyStore, unique_name: str
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    client = make_client(model_name=unique_name)
    holder: ModelHolder = client.app.state.models  # type: ignore[attr-defined]
    assert holder.active is not None
    first_batcher = holder.active.batcher
    assert client.post("/predict", json=SETOSA).headers["X-Model-Version"] == "1"

    store.register(unique_name, store.models["iris_svc"], production=True)
    wait_until(lambda: client.post("/predict", json=SETOSA).headers["X-Model-Version"] == "2")
    assert client.post("/predict", json=SETOSA).json()["model_version"] == "2"
    wait_until(lambda: not first_batcher.running)

    store.promote(unique_name, "1")  # what `python -m pipeline rollback` does to the registry
    wait_until(lambda: client.post("/predict", json=SETOSA).headers["X-Model-Version"] == "1")
    assert metric(client, "serving_model_info{" + f'name="{unique_name}",version="1"' + "}") == 1
    assert metric(client, 'serving_model_reloads_total{result="success"}') == 3


def test_a_version_with_missing_artifacts_keeps_the_old_one_serving_and_is_reported(
    make_client: MakeClient, store: TinyStore, unique_name: str, broken_model: TinyModel
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    client = make_client(model_name=unique_name)
    store.register(unique_name, broken_model, production=True)

    wait_until(lambda: client.get("/health/ready").json()["last_reload_error"] is not None)
    ready = client.get("/health/ready")
    assert ready.status_code == 200
    body = ready.json()
    assert (body["status"], body["model_version"]) == ("degraded", "1")
    error = body["last_reload_error"]
    assert (error["version"], error["type"]) == ("2", "model_artifact_error")
    assert "skops file" in error["message"] and "missing at file://" in error["message"]
    assert body["reason"] == error["message"]
    assert body["since"] == error["since"] <= error["at"]
    assert error["at"].startswith("20")
    response = client.post("/predict", json=SETOSA)
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "1"
    assert metric(client, 'serving_model_reloads_total{result="failure"}') >= 1
    assert metric(client, "serving_model_reload_failing") == 1

    store.register(unique_name, store.models["iris_svc"], production=True)
    wait_until(lambda: client.get("/health/ready").json()["model_version"] == "3")
    assert client.get("/health/ready").json()["last_reload_error"] is None
    assert client.get("/health/ready").json()["status"] == "ready"
    assert metric(client, "serving_model_reload_failing") == 0


def test_a_rollback_to_the_serving_version_clears_the_fault_and_the_gauge(
    make_client: MakeClient, store: TinyStore, unique_name: str, broken_model: TinyModel
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    client = make_client(model_name=unique_name)
    store.register(unique_name, broken_model, production=True)
    wait_until(lambda: client.get("/health/ready").json()["status"] == "degraded")
    assert metric(client, "serving_model_reload_failing") == 1

    store.promote(unique_name, "1")  # nothing to load: the registry now names what serves
    wait_until(lambda: client.get("/health/ready").json()["status"] == "ready")
    assert client.get("/health/ready").json()["last_reload_error"] is None
    assert metric(client, "serving_model_reload_failing") == 0
    assert "serving_model_fault{" not in client.get("/metrics").text


@pytest.mark.timeout(60)
def test_a_dead_tracking_server_is_reported_at_start_not_after_mlflow_retries(
    make_client: MakeClient,
) -> None:
    with socket.socket() as sock:  # a port nobody listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    # Startup waits for the first attempt; unbounded, MLflow's retries would outlast it.
    client = make_client(model_name="iris", tracking_uri=uri)
    ready = client.get("/health/ready")
    assert ready.status_code == 503
    reason = ready.json()["reason"]
    assert f"The MLflow registry at {uri} is unreachable: connection refused" in reason
    assert metric(client, "serving_model_reload_failing") == 1
    assert metric(client, 'serving_model_fault{type="registry_unavailable"}') == 1


@pytest.mark.timeout(60)
def test_a_registry_that_never_answers_is_reported_after_the_deadline_without_piling_threads(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The floor keeps sub-second polls from reading a slow store as an outage; lowered here
    # only so the test is quick. The fault itself is real: a registry whose connections are
    # accepted (the listen backlog) and never answered.
    monkeypatch.setattr(serving.model.state, "REGISTRY_DEADLINE_FLOOR_SECONDS", 0.5)
    client = make_client(model_name="iris")
    holder: ModelHolder = client.app.state.models  # type: ignore[attr-defined]
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        threads_before = threading.active_count()
        holder.tracking_uri = uri  # the registry now hangs

        def reason() -> str:
            body = client.get("/health/ready").json()
            assert body["model_version"] == "1"  # the old model keeps answering
            return str(body.get("reason"))

        wait_until(lambda: f"The MLflow registry at {uri} did not answer within 0.5s" in reason())
        wait_until(lambda: "has not answered for" in reason())  # the first request still hangs
        # One request in flight at a time, not one more per poll.
        assert threading.active_count() <= threads_before + 4
        # MLflow's own timeout (bounded by the poller) ends that request, so a later poll
        # asks again instead of waiting on it for minutes.
        wait_until(lambda: "did not answer within 0.5s" in reason())
        assert client.post("/predict", json=SETOSA).headers["X-Model-Version"] == "1"
        assert metric(client, "serving_model_reload_failing") == 1
        faults = [r for r in caplog.records if r.levelname == "WARNING" and "Keeping" in r.msg]
        assert len(faults) == 1  # one line, however many polls
        holder.tracking_uri = client.app.state.settings.tracking_uri  # type: ignore[attr-defined]
        wait_until(lambda: client.get("/health/ready").json()["status"] == "ready")
        assert metric(client, "serving_model_reload_failing") == 0


def test_a_swapped_in_model_and_everything_alive_then_are_kept_out_of_full_gc_passes(
    make_client: MakeClient,
) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    client = make_client()
    assert client.get("/health/ready").status_code == 200
    assert gc.get_freeze_count() > 0
