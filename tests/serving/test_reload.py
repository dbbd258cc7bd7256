"""Hot reload: warm before the swap, keep the old model when a new one fails, report why."""

from __future__ import annotations

import dataclasses
import gc
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
    assert body["model_version"] == "1"
    error = body["last_reload_error"]
    assert error["version"] == "2"
    assert "skops file" in error["message"] and "missing" in error["message"]
    assert error["at"].startswith("20")
    response = client.post("/predict", json=SETOSA)
    assert response.status_code == 200
    assert response.headers["X-Model-Version"] == "1"
    assert metric(client, 'serving_model_reloads_total{result="failure"}') >= 1
    assert metric(client, "serving_model_reload_failing") == 1

    store.register(unique_name, store.models["iris_svc"], production=True)
    wait_until(lambda: client.get("/health/ready").json()["model_version"] == "3")
    assert client.get("/health/ready").json()["last_reload_error"] is None
    assert metric(client, "serving_model_reload_failing") == 0


def test_an_unreachable_registry_keeps_the_model_serving_and_is_reported(
    make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(model_name="iris")

    def unreachable(*_args: Any) -> None:
        raise ModelLoadError("Could not reach the MLflow registry at sqlite:///gone.db: down.")

    monkeypatch.setattr(serving.model.state, "resolve_version", unreachable)
    wait_until(lambda: client.get("/health/ready").json()["last_reload_error"] is not None)
    body = client.get("/health/ready").json()
    assert body["model_version"] == "1"
    assert body["last_reload_error"]["version"] is None
    assert "Could not reach the MLflow registry" in body["last_reload_error"]["message"]
    assert client.post("/predict", json=SETOSA).status_code == 200
    assert metric(client, "serving_model_reload_failing") == 1


def test_a_swapped_in_model_and_everything_alive_then_are_kept_out_of_full_gc_passes(
    make_client: MakeClient,
) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    client = make_client()
    assert client.get("/health/ready").status_code == 200
    assert gc.get_freeze_count() > 0
