"""Replay sends each held-out row as its own request over real HTTP, then the labels."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pipeline.config import PipelineConfig, load_config
from pipeline.monitoring import replay
from pipeline.steps import features, ingest


def _request_id(body: Any) -> str:
    """An id the test can recompute from the row, so it can check which label went with it."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]


class _Recorder(BaseHTTPRequestHandler):
    """Answers /predict like the server's headers do; records every body it receives."""

    seen: ClassVar[list[tuple[str, dict[str, str], Any]]] = []
    status = 200

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.path, dict(self.headers), body))
        self.send_response(self.status)
        self.send_header("X-Request-ID", _request_id(body))
        self.send_header(
            "X-Model-Version", "2" if "7" in self.headers.get("X-Routing-Key", "") else "1"
        )
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"detail": "refused: sepal_length_cm is not a number"}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Recorder]]]:
    handler = type("Recorder", (_Recorder,), {"seen": [], "status": 200})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    httpd.shutdown()


@pytest.fixture
def config(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> PipelineConfig:
    return load_config(write_config(iris_config()))


def test_every_held_out_row_is_one_request_with_its_own_routing_key_then_its_label(
    config: PipelineConfig, server: tuple[str, type[_Recorder]]
) -> None:
    url, handler = server
    held_out = features.split(config, ingest.run(config))

    result = replay.run(config, replay.ReplaySettings(url=url, api_key="k"))

    predictions = [seen for seen in handler.seen if seen[0] == "/predict"]
    feedback = [seen for seen in handler.seen if seen[0] == "/feedback"]
    assert result.sent == len(held_out.X_test) == len(predictions)
    assert {body["sepal_length_cm"] for _, _, body in predictions} == set(
        held_out.X_test["sepal_length_cm"]
    )
    keys = [headers["X-Routing-Key"] for _, headers, _ in predictions]
    assert len(set(keys)) == len(keys)
    assert all(headers["Authorization"] == "Bearer k" for _, headers, _ in handler.seen)
    (labels,) = [body["labels"] for _, _, body in feedback]
    assert sorted(label["label"] for label in labels) == sorted(map(str, held_out.y_test))
    truth = {
        _request_id(replay._record(row)): str(label)
        for row, label in zip(
            held_out.X_test.to_dict(orient="records"), held_out.y_test, strict=True
        )
    }
    assert {label["request_id"]: label["label"] for label in labels} == truth
    assert sum(result.answered_by.values()) == result.sent
    assert set(result.answered_by) == {"1", "2"}


def test_rows_limits_how_many_are_replayed(
    config: PipelineConfig, server: tuple[str, type[_Recorder]]
) -> None:
    url, handler = server
    result = replay.run(config, replay.ReplaySettings(url=url, rows=5))
    assert result.sent == 5 == result.labelled
    assert len(handler.seen) == 6


def test_a_refused_request_names_the_route_the_status_and_the_servers_reason(
    config: PipelineConfig, server: tuple[str, type[_Recorder]]
) -> None:
    url, handler = server
    handler.status = 422
    with pytest.raises(replay.ReplayError, match=r"/predict answered 422: .*sepal_length_cm"):
        replay.run(config, replay.ReplaySettings(url=url, rows=1))


def test_an_unreachable_server_says_how_to_start_one(config: PipelineConfig) -> None:
    with pytest.raises(replay.ReplayError, match=r"cannot reach the server .*make serve"):
        replay.run(config, replay.ReplaySettings(url="http://127.0.0.1:9", rows=1))


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"rows": 0}, "--rows must be at least 1, got 0"),
        ({"concurrency": 0}, "--concurrency must be at least 1, got 0"),
    ],
)
def test_a_count_below_one_is_refused_naming_the_option(
    settings: dict[str, int], message: str
) -> None:
    with pytest.raises(replay.ReplayError, match=message):
        replay.ReplaySettings(url="http://127.0.0.1:9", **settings)
