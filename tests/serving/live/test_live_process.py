"""Champion and challenger on live traffic with a real ``python -m serving`` process over real
HTTP, against a temp MLflow store: a canary challenger that fails for real, a slow shadow
challenger, and sticky routing."""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.contracts import CANARY_ROLLBACK_TAG
from tests.serving.factories import SETOSA, TinyModel, TinyStore, read_predictions, wait_until
from tests.serving.test_server_process import running_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NICE = {"age": 30.0, "rooms": 3, "city": "nice", "owner": "yes"}
"""A 'mixed' record the strict challenger fails on: it never saw the city 'nice'."""


def _challenger(base_url: str) -> dict[str, Any]:
    info: dict[str, Any] = httpx.get(f"{base_url}/model", timeout=10).json()["challenger"]
    return info


def _wait_for_state(base_url: str, state: str) -> dict[str, Any]:
    wait_until(
        lambda: _challenger(base_url)["state"] == state,
        timeout=60,
        what=f"the challenger never became {state}: {_challenger(base_url)}",
    )
    return _challenger(base_url)


def test_a_canary_challenger_that_always_fails_costs_clients_nothing_and_is_rolled_back(
    store: TinyStore, unique_name: str, strict_mixed: TinyModel, tmp_path: Path
) -> None:
    store.register(unique_name, store.models["mixed"], production=True)
    store.stage_challenger(unique_name, store.register(unique_name, strict_mixed))
    settings = {
        "SERVING_MODEL_NAME": unique_name,
        "SERVING_POLL_SECONDS": "0.5",
        "SERVING_CHALLENGER_MODE": "canary",
        "SERVING_CANARY_PERCENT": "50",
        "SERVING_CANARY_MIN_REQUESTS": "20",
        "SERVING_PREDICTION_LOG_ROTATE_SECONDS": "0.2",
    }
    with running_server(store, tmp_path, **settings) as (base_url, log_path):
        _wait_for_state(base_url, "active")
        with httpx.Client(base_url=base_url, timeout=20) as client:

            def ask(_: int) -> httpx.Response:
                return client.post("/predict", json=NICE)

            with ThreadPoolExecutor(max_workers=4) as pool:
                answers = list(pool.map(ask, range(200)))
        challenger = _wait_for_state(base_url, "rolled_back")
        ready = httpx.get(f"{base_url}/health/ready", timeout=10)
        wait_until(
            lambda: CANARY_ROLLBACK_TAG in store.client.get_model_version(unique_name, "2").tags,
            timeout=30,
            what="the rollback tag never reached the registry",
        )
        after = httpx.post(f"{base_url}/predict", json=NICE, timeout=10)
    assert [a.status_code for a in answers] == [200] * 200, "clients see no challenger error"
    assert {a.headers["X-Model-Version"] for a in answers} == {"1"}
    assert "error rate 100.0%" in challenger["rollback"]["reason"]
    assert ready.status_code == 200
    assert "was rolled back" in ready.json()["warnings"][0]
    tag = store.client.get_model_version(unique_name, "2").tags[CANARY_ROLLBACK_TAG]
    assert "error rate 100.0%" in tag and "SERVING_CANARY_MAX_ERROR_RATE" in tag
    assert after.status_code == 200 and after.headers["X-Model-Version"] == "1"
    output = log_path.read_text()
    assert f"Rolled back challenger '{unique_name}' version 2" in output


def test_a_slow_shadow_challenger_never_answers_nor_slows_the_champions_answers(
    store: TinyStore, unique_name: str, slow_iris: TinyModel, tmp_path: Path
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    store.stage_challenger(unique_name, store.register(unique_name, slow_iris))
    settings = {
        "SERVING_MODEL_NAME": unique_name,
        "SERVING_POLL_SECONDS": "0.5",
        "SERVING_PREDICTION_LOG_ROTATE_SECONDS": "0.2",
    }  # the default mode: shadow
    with running_server(store, tmp_path, **settings) as (base_url, _):
        _wait_for_state(base_url, "active")
        answers: list[httpx.Response] = []
        seconds: list[float] = []
        with httpx.Client(base_url=base_url, timeout=20) as client:
            for _ in range(60):
                start = time.perf_counter()
                answers.append(client.post("/predict", json=SETOSA))
                seconds.append(time.perf_counter() - start)
                time.sleep(0.03)  # room for the shadow to run: not a backlog test
        ids = {a.headers["X-Request-ID"] for a in answers}

        def logged() -> bool:
            frame = read_predictions(tmp_path / "prediction_log", unique_name)
            return not frame.empty and len(frame[frame["request_id"].isin(ids)]) == 120

        wait_until(logged, timeout=30, what="the log never held both answers of every request")
    assert {a.status_code for a in answers} == {200}
    assert {a.headers["X-Model-Version"] for a in answers} == {"1"}
    frame = read_predictions(tmp_path / "prediction_log", unique_name)
    frame = frame[frame["request_id"].isin(ids)]
    champion = frame[frame["role"] == "champion"]
    challenger = frame[frame["role"] == "challenger"]
    assert champion["served"].all() and not challenger["served"].any()
    assert set(challenger["model_version"]) == {"2"} and challenger["error"].isna().all()
    assert set(champion["request_id"]) == set(challenger["request_id"]) == ids
    # Had an answer waited for the shadow, each client would have waited longer than the
    # challenger's model time on its request; most wait far less (noise aside).
    client_ms = dict(zip(ids_in_order(answers), (1000 * s for s in seconds), strict=True))
    shadow_ms = dict(zip(challenger["request_id"], challenger["latency_ms"], strict=True))
    quicker = sum(client_ms[rid] < shadow_ms[rid] for rid in client_ms)
    assert quicker >= 0.6 * len(client_ms), (
        statistics.median(client_ms.values()),
        statistics.median(shadow_ms.values()),
    )


def ids_in_order(answers: list[httpx.Response]) -> list[str]:
    return [a.headers["X-Request-ID"] for a in answers]


def test_canary_routing_is_sticky_per_key_and_its_share_follows_the_percent(
    store: TinyStore, unique_name: str, forest_model: TinyModel, tmp_path: Path
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    store.stage_challenger(unique_name, store.register(unique_name, forest_model))
    settings = {
        "SERVING_MODEL_NAME": unique_name,
        "SERVING_CHALLENGER_MODE": "canary",
        "SERVING_CANARY_PERCENT": "30",
        "SERVING_PREDICTION_LOG_ENABLED": "false",
    }
    with running_server(store, tmp_path, **settings) as (base_url, _):
        _wait_for_state(base_url, "active")
        with httpx.Client(base_url=base_url, timeout=20) as client:

            def version(key: str) -> str:
                answer = client.post("/predict", json=SETOSA, headers={"X-Routing-Key": key})
                assert answer.status_code == 200, answer.text
                assert answer.json()["model_version"] == answer.headers["X-Model-Version"]
                return answer.headers["X-Model-Version"]

            sticky = {key: {version(key) for _ in range(5)} for key in ("alice", "bob", "carol")}
            with ThreadPoolExecutor(max_workers=4) as pool:
                versions = list(pool.map(version, [f"user-{i}" for i in range(1000)]))
    assert all(len(seen) == 1 for seen in sticky.values()), sticky
    share = 100 * versions.count("2") / len(versions)
    assert abs(share - 30) < 4, share  # 1,000 keys: the binomial spread is ~1.5 points
