"""Micro-batching through the app: many concurrent /predict calls against tiny real models.

Requests run concurrently on one event loop (httpx over ASGI, lifespan included). The first
model call is held until every other request is queued, so a merged batch always forms.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI

import serving.model.state
from serving.app import create_app
from serving.model.state import ModelHolder
from serving.settings import Settings
from tests.serving.factories import TinyModel, TinyStore

pytestmark = pytest.mark.timeout(60)


@contextlib.asynccontextmanager
async def serve(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            yield client, app


class HoldFirstBatch:
    """Wraps predict_rows: once armed, the first call waits until the requests it holds and
    those queued behind it number ``expected``, so at most two batches take them all."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_on: float | None = None) -> None:
        self.real = serving.model.state.predict_rows
        self.ready: Callable[[], bool] = lambda: True
        self.armed = threading.Event()
        self.held = False
        self.fail_on = fail_on
        monkeypatch.setattr(serving.model.state, "predict_rows", self)

    def arm(self, holder: ModelHolder, expected: int) -> None:
        assert holder.active is not None
        stats = holder.active.batcher.stats
        self.ready = lambda: stats.largest_batch_requests + holder.queue_depth >= expected
        self.armed.set()

    def __call__(self, loaded: Any, records: list[dict[str, Any]]) -> Any:
        if self.armed.is_set() and not self.held:
            self.held = True
            deadline = time.monotonic() + 10
            while not self.ready() and time.monotonic() < deadline:
                time.sleep(0.001)
        if self.fail_on is not None and any(self.fail_on in r.values() for r in records):
            raise ValueError("this model cannot take 666")
        return self.real(loaded, records)


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-ready records: NaN becomes null, numpy scalars become Python values."""
    cleaned = frame.astype(object).where(frame.notna(), None)
    return [
        {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
        for row in cleaned.to_dict(orient="records")
    ]


def mixed_size_requests(tiny: TinyModel, count: int) -> list[tuple[list[int], dict[str, Any]]]:
    """``count`` requests of 1 to 4 rows: single records and {"records": [...]} bodies."""
    records = json_records(tiny.features)
    requests = []
    start = 0
    for i in range(count):
        size = 1 + i % 4
        index = [(start + k) % len(records) for k in range(size)]
        start += size
        if size == 1 and i % 2 == 0:
            body = records[index[0]]
        else:
            body = {"records": [records[k] for k in index]}
        requests.append((index, body))
    return requests


def metric_value(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{series} not in /metrics")


@pytest.mark.parametrize(
    ("model", "name"),
    [("forest", None), ("iris", "iris"), ("diabetes", "diabetes"), ("mixed", "mixed")],
)
def test_concurrent_requests_of_mixed_sizes_are_batched_and_equal_unbatched_predictions(
    store: TinyStore,
    forest_model: TinyModel,
    unique_name: str,
    monkeypatch: pytest.MonkeyPatch,
    model: str,
    name: str | None,
) -> None:
    tiny = forest_model if model == "forest" else store.models[model]
    if name is None:
        name = unique_name
        store.register(name, tiny, production=True)
    hold = HoldFirstBatch(monkeypatch)
    requests = mixed_size_requests(tiny, 48)

    async def scenario() -> tuple[list[httpx.Response], str, ModelHolder]:
        async with serve(store.settings(model_name=name)) as (client, app):
            holder: ModelHolder = app.state.models
            hold.arm(holder, expected=len(requests))
            responses = await asyncio.gather(
                *(client.post("/predict", json=body) for _, body in requests)
            )
            metrics = (await client.get("/metrics")).text
            return list(responses), metrics, holder

    responses, metrics, holder = asyncio.run(scenario())

    estimator = tiny.estimator
    for (index, body), response in zip(requests, responses, strict=True):
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == response.json()["model_version"]
        answer = response.json()
        predictions = answer["predictions"] if "records" in body else [answer["prediction"]]
        rows = tiny.features.iloc[index]
        assert len(predictions) == len(index)
        if model == "diabetes":
            expected = estimator.predict(rows)
            assert [p["value"] for p in predictions] == pytest.approx(expected, abs=1e-9, rel=0)
            continue
        assert [p["label"] for p in predictions] == estimator.predict(rows).tolist()
        probabilities = np.array([list(p["probabilities"].values()) for p in predictions])
        np.testing.assert_allclose(probabilities, estimator.predict_proba(rows), rtol=0, atol=1e-9)

    stats = holder.active.batcher.stats if holder.active else None
    assert stats is not None and stats.largest_batch_requests > 1
    assert metric_value(metrics, "serving_batch_size_rows_count") < len(requests)
    total_rows = sum(len(index) for index, _ in requests)
    assert metric_value(metrics, "serving_batch_size_rows_sum") == total_rows


def test_bad_requests_in_a_batch_fail_alone_and_the_others_are_answered(
    store: TinyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    hold = HoldFirstBatch(monkeypatch, fail_on=666.0)
    tiny = store.models["iris"]
    good = json_records(tiny.features.iloc[:12])
    culprit = {**good[0], "sepal length (cm)": 666.0}
    invalid = {**good[0], "colour": "blue"}
    bodies: list[Any] = [*good[:6], culprit, invalid, {"records": good[6:]}]

    async def scenario() -> tuple[list[httpx.Response], str]:
        async with serve(store.settings(model_name="iris")) as (client, app):
            # The invalid body never reaches the queue.
            hold.arm(app.state.models, expected=len(bodies) - 1)
            responses = await asyncio.gather(*(client.post("/predict", json=b) for b in bodies))
            return list(responses), (await client.get("/metrics")).text

    responses, metrics = asyncio.run(scenario())

    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 6 + [500, 422, 200]
    failed = responses[6].json()["error"]
    assert failed["type"] == "prediction_failed"
    assert "failed to predict this request" in failed["message"]
    assert "666" not in responses[6].text
    assert "Traceback" not in responses[6].text
    rejected = responses[7].json()["error"]
    assert rejected["type"] == "invalid_request"
    assert "colour" in rejected["message"]
    labels = [r.json()["prediction"]["label"] for r in responses[:6]]
    labels += [p["label"] for p in responses[8].json()["predictions"]]
    assert labels == tiny.estimator.predict(tiny.features.iloc[:12]).tolist()
    assert metric_value(metrics, "serving_batch_fallbacks_total") == 1
    assert (
        metric_value(metrics, 'serving_requests_total{method="POST",route="/predict",status="500"}')
        == 1
    )
