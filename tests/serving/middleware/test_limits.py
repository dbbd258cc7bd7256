"""Limits on the prediction routes: body size (413), per-request timeout (504), and a shutdown
that lets the requests waiting in a batcher finish, each error in its protocol's body."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from starlette.types import Message, Receive, Scope, Send

import serving.model.state
from serving.app import create_app
from serving.middleware.limits import RequestTimeoutMiddleware, keyed_protocol, prediction_protocol
from serving.settings import Settings
from tests.serving.factories import SETOSA, MakeClient, TinyStore

pytestmark = pytest.mark.timeout(120)


GENEROUS = 15.0
"""Seconds: an upper bound on "promptly" that no loaded machine should ever miss."""


@dataclass(frozen=True)
class Route:
    """A prediction route, a body for it with ``rows`` iris rows, and its error shape."""

    path: str
    protocol: str

    def body(self, rows: int = 1) -> dict[str, Any]:
        if self.protocol == "predict":
            return SETOSA if rows == 1 else {"records": [SETOSA] * rows}
        if self.protocol == "mlflow":
            return {"dataframe_split": {"columns": list(SETOSA), "data": [list(SETOSA.values())]}}
        matrix = [list(SETOSA.values())] * rows
        return {"inputs": [{"name": "x", "shape": [rows, 4], "datatype": "FP64", "data": matrix}]}

    def big_body(self) -> dict[str, Any]:
        body = self.body(20)
        if self.protocol == "mlflow":
            body["dataframe_split"]["data"] *= 20
        return body


PREDICT = Route("/predict", "predict")
INVOCATIONS = Route("/invocations", "mlflow")
INFER = Route("/v2/models/iris/infer", "v2")
ROUTES = [PREDICT, INVOCATIONS, INFER]
ROUTE_IDS = [route.protocol for route in ROUTES]


def assert_protocol_error(
    response: httpx.Response, route: Route, status: int, code: str, *fragments: str
) -> None:
    """The status, the route's own error body (with ``code`` where it has one), the fragments."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    if route.protocol == "predict":
        assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "details"}
        assert body["error"]["type"] == code
        message = body["error"]["message"]
    elif route.protocol == "mlflow":
        assert set(body) == {"error_code", "message"}, body
        assert body["error_code"] == code
        message = body["message"]
    else:
        assert set(body) == {"error"}, body
        message = body["error"]
    for fragment in fragments:
        assert fragment in message, message


_CODES = {
    "too_large": {"predict": "payload_too_large", "mlflow": "REQUEST_LIMIT_EXCEEDED", "v2": ""},
    "timeout": {"predict": "timeout", "mlflow": "DEADLINE_EXCEEDED", "v2": ""},
}


class SlowModel:
    """Wraps ``predict_rows``: once armed, every model call waits until released."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = serving.model.state.predict_rows
        self.armed = threading.Event()
        self.entered = threading.Event()
        self.released = threading.Event()
        monkeypatch.setattr(serving.model.state, "predict_rows", self)

    def __call__(self, loaded: Any, records: list[dict[str, Any]]) -> Any:
        if self.armed.is_set():
            self.entered.set()
            self.released.wait(timeout=60)
        return self.real(loaded, records)


@pytest.fixture
def slow_model(make_client: MakeClient, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlowModel]:
    """A model that hangs once armed; released before the apps stop (make_client first)."""
    slow = SlowModel(monkeypatch)
    yield slow
    slow.released.set()


# --- body limit ------------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_body_over_the_limit_is_a_413_in_the_route_protocol(
    make_client: MakeClient, route: Route
) -> None:
    client = make_client(max_body_bytes=200)
    response = client.post(route.path, json=route.big_body())
    assert int(response.request.headers["content-length"]) > 200
    assert_protocol_error(response, route, 413, _CODES["too_large"][route.protocol], "200 bytes")


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_body_over_the_limit_streamed_without_length_is_a_413_in_the_route_protocol(
    make_client: MakeClient, route: Route
) -> None:
    client = make_client(max_body_bytes=200)
    content = json.dumps(route.big_body()).encode()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(content), 50):
            yield content[start : start + 50]

    response = client.post(
        route.path, content=chunks(), headers={"content-type": "application/json"}
    )
    assert "content-length" not in response.request.headers
    assert_protocol_error(response, route, 413, _CODES["too_large"][route.protocol], "200 bytes")


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_body_under_the_limit_is_predicted(make_client: MakeClient, route: Route) -> None:
    client = make_client(max_body_bytes=2_000)
    response = client.post(route.path, json=route.body())
    assert response.status_code == 200, response.text
    assert response.headers["x-model-version"] == "1"


# --- request timeout -------------------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=ROUTE_IDS)
def test_prediction_slower_than_the_timeout_is_a_prompt_504_in_the_route_protocol(
    make_client: MakeClient, slow_model: SlowModel, route: Route
) -> None:
    client = make_client(request_timeout_seconds=0.2)
    slow_model.armed.set()
    start = time.monotonic()
    response = client.post(route.path, json=route.body())
    elapsed = time.monotonic() - start
    assert slow_model.entered.is_set(), "the request never reached the model"
    assert not slow_model.released.is_set()  # answered while the model call still hangs
    assert elapsed < GENEROUS
    assert_protocol_error(
        response,
        route,
        504,
        _CODES["timeout"][route.protocol],
        "longer than 0.2 seconds",
        "SERVING_REQUEST_TIMEOUT_SECONDS",
    )


def test_the_server_answers_again_once_the_abandoned_model_call_finishes(
    make_client: MakeClient, slow_model: SlowModel
) -> None:
    client = make_client(request_timeout_seconds=0.2)
    slow_model.armed.set()
    assert client.post("/predict", json=SETOSA).status_code == 504
    slow_model.armed.clear()
    slow_model.released.set()
    response = client.post("/predict", json=SETOSA)
    assert response.status_code == 200, response.text
    assert response.json()["prediction"]["label"] == "setosa"


def test_timed_out_requests_are_counted_as_504_in_metrics(
    make_client: MakeClient, slow_model: SlowModel
) -> None:
    client = make_client(request_timeout_seconds=0.2)
    slow_model.armed.set()
    assert client.post("/predict", json=SETOSA).status_code == 504
    metrics = client.get("/metrics").text
    assert 'serving_requests_total{method="POST",route="/predict",status="504"} 1.0' in metrics, (
        metrics
    )


def test_prediction_within_the_timeout_is_answered_normally(make_client: MakeClient) -> None:
    response = make_client(request_timeout_seconds=30).post("/predict", json=SETOSA)
    assert response.status_code == 200, response.text


# The middleware alone, around tiny ASGI apps: what it limits and what it leaves alone.


def _app(delay: float, *, raise_timeout: bool = False, start_first: bool = False) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if start_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await asyncio.sleep(delay)
        if raise_timeout:
            raise TimeoutError("the app's own timeout")
        if not start_first:
            await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    return app


async def _call(app: Any, path: str) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    await app(scope, receive, send)
    return sent


def test_timeout_middleware_answers_504_json_for_a_slow_prediction_route() -> None:
    sent = asyncio.run(_call(RequestTimeoutMiddleware(_app(5), seconds=0.05), "/predict"))
    assert sent[0]["status"] == 504
    assert (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["type"] == "timeout"


@pytest.mark.parametrize(
    ("seconds", "path"), [(0, "/predict"), (0.05, "/health/ready"), (0.05, "/v2/models/iris")]
)
def test_timeout_middleware_leaves_other_routes_and_a_zero_limit_alone(
    seconds: float, path: str
) -> None:
    sent = asyncio.run(_call(RequestTimeoutMiddleware(_app(0.2), seconds=seconds), path))
    assert [m.get("status") for m in sent] == [200, None]
    assert sent[1]["body"] == b"done"


def test_timeout_middleware_stops_counting_once_the_response_has_started() -> None:
    app = RequestTimeoutMiddleware(_app(0.2, start_first=True), seconds=0.05)
    sent = asyncio.run(_call(app, "/predict"))
    assert [m.get("status") for m in sent] == [200, None]


def test_timeout_middleware_lets_the_app_own_timeout_error_through() -> None:
    app = RequestTimeoutMiddleware(_app(0, raise_timeout=True), seconds=5)
    with pytest.raises(TimeoutError, match="the app's own timeout"):
        asyncio.run(_call(app, "/predict"))


@pytest.mark.parametrize(
    ("path", "protocol"),
    [
        ("/predict", "predict"),
        ("/invocations", "mlflow"),
        ("/v2/models/iris/infer", "v2"),
        ("/v2/models/iris/versions/1/infer", "v2"),
        ("/v2/models/iris", None),
        ("/v2/health/ready", None),
        ("/model", None),
        ("/metrics", None),
        ("/predict/extra", None),
    ],
)
def test_prediction_routes_are_recognised_by_path(path: str, protocol: str | None) -> None:
    assert prediction_protocol(path) == protocol
    assert keyed_protocol(path) == protocol  # the API key guards every prediction route


def test_feedback_needs_the_key_but_is_no_prediction_route() -> None:
    assert keyed_protocol("/feedback") == "predict"
    assert prediction_protocol("/feedback") is None  # no timeout, no request id


# --- shutdown --------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _serve(settings: Settings) -> AsyncIterator[tuple[httpx.AsyncClient, FastAPI]]:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serving") as client:
            yield client, app


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + GENEROUS
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


def test_shutdown_lets_requests_waiting_on_the_batcher_finish(
    store: TinyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowModel(monkeypatch)

    async def scenario() -> list[httpx.Response]:
        settings = store.settings(max_batch_wait_ms=0)
        async with contextlib.AsyncExitStack() as stack:
            client, app = await stack.enter_async_context(_serve(settings))
            holder = app.state.models
            slow.armed.set()
            first = asyncio.create_task(client.post("/predict", json=SETOSA))
            await _until(slow.entered.is_set, "the first request to reach the model")
            queued = [asyncio.create_task(client.post("/predict", json=SETOSA)) for _ in range(3)]
            await _until(lambda: holder.queue_depth == 3, "three requests to queue behind it")
            # Leave the lifespan (shutdown) while they wait; release the model meanwhile.
            threading.Timer(0.3, slow.released.set).start()
        # The lifespan has shut down: every request must have been answered, none cancelled.
        return await asyncio.gather(first, *queued)

    try:
        responses = asyncio.run(scenario())
    finally:
        slow.released.set()
    assert [r.status_code for r in responses] == [200] * 4
    assert {r.json()["prediction"]["label"] for r in responses} == {"setosa"}


def test_one_timer_holds_each_request_to_its_own_deadline() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await asyncio.sleep(scope["delay"])  # each request says how long it takes
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    middleware = RequestTimeoutMiddleware(app, seconds=0.2)

    async def scenario() -> dict[str, tuple[int, float]]:
        loop = asyncio.get_running_loop()
        start = loop.time()

        async def request(arrives: float, takes: float) -> tuple[int, float]:
            await asyncio.sleep(arrives)
            sent: list[Message] = []

            async def send(message: Message) -> None:
                sent.append(message)

            scope = {"type": "http", "method": "POST", "path": "/predict", "delay": takes}
            await middleware(scope, _no_body, send)
            return sent[0]["status"], loop.time() - start

        slow, quick, later = await asyncio.gather(
            request(0, 5), request(0.1, 0.05), request(0.12, 5)
        )
        return {"slow": slow, "quick": quick, "later": later}

    answers = asyncio.run(scenario())
    assert answers["slow"][0] == 504 and 0.2 <= answers["slow"][1] < 2  # not its 5 s
    assert answers["quick"][0] == 200
    assert answers["later"][0] == 504 and 0.32 <= answers["later"][1] < 2  # its own deadline


async def _no_body() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_timeout_middleware_lets_another_cancellation_through() -> None:
    async def scenario() -> None:
        task = asyncio.create_task(_call(RequestTimeoutMiddleware(_app(5), seconds=2), "/predict"))
        await asyncio.sleep(0.05)
        task.cancel()  # the server stopping, say: not a 504
        await task

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(scenario())
