"""Champion and challenger in one app (FastAPI's TestClient, lifespan included): the challenger
loaded beside the champion, shadow and canary answers, the log's live columns, what /model,
/health/ready and /metrics say, and the canary rollback."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from pipeline.contracts import CANARY_ROLLBACK_TAG
from serving.app import create_app
from serving.errors import RegistryUnavailableError
from serving.model import challenger as challenger_module
from tests.serving.factories import SETOSA, TinyModel, TinyStore, read_predictions, wait_until


@pytest.fixture
def staged(store: TinyStore, unique_name: str, forest_model: TinyModel) -> str:
    """A model whose version 1 (logistic) is the champion and version 2 (forest) the
    challenger, in Staging with its alias."""
    store.register(unique_name, store.models["iris"], production=True)
    version = store.register(unique_name, forest_model)
    store.stage_challenger(unique_name, version)
    return unique_name


def _client(store: TinyStore, name: str, log_dir: Path, **overrides: Any) -> TestClient:
    settings = store.settings(
        model_name=name,
        prediction_log_dir=log_dir,
        prediction_log_rotate_seconds=0.1,
        **overrides,
    )
    return TestClient(create_app(settings))


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "log"


def _challenger(client: TestClient) -> dict[str, Any]:
    info: dict[str, Any] = client.get("/model").json()["challenger"]
    return info


def _wait_for_state(client: TestClient, state: str) -> dict[str, Any]:
    wait_until(
        lambda: _challenger(client)["state"] == state,
        what=f"the challenger never became {state}: {_challenger(client)}",
    )
    return _challenger(client)


@pytest.fixture
def shadow(store: TinyStore, staged: str, log_dir: Path) -> Iterator[TestClient]:
    with _client(store, staged, log_dir) as client:
        _wait_for_state(client, "active")
        yield client


def test_a_version_in_staging_is_loaded_beside_the_champion_and_shown_on_model(
    shadow: TestClient,
) -> None:
    model = shadow.get("/model").json()
    assert model["version"] == "1"
    challenger = model["challenger"]
    assert challenger["version"] == "2"
    assert challenger["mode"] == "shadow"
    assert challenger["state"] == "active"
    assert challenger["reason"] is None and challenger["rollback"] is None


def test_in_shadow_mode_only_the_champion_answers_and_the_log_holds_both_for_the_same_key(
    store: TinyStore, staged: str, log_dir: Path
) -> None:
    rows = store.models["iris"].features.iloc[[0, 60, 120]].to_dict(orient="records")
    with _client(store, staged, log_dir) as client:
        _wait_for_state(client, "active")
        answers = [client.post("/predict", json=row) for row in rows]
        batch = client.post("/predict", json={"records": rows})
        wait_until(lambda: _metric(client, "serving_live_compared_rows_total") >= 6)
        assert _challenger(client)["agreement_rate"] is not None
    assert {a.headers["X-Model-Version"] for a in [*answers, batch]} == {"1"}
    assert {a.json()["model_version"] for a in [*answers, batch]} == {"1"}

    frame = read_predictions(log_dir, staged)
    ids = [a.headers["X-Request-ID"] for a in [*answers, batch]]
    logged = frame[frame["request_id"].isin(ids)]
    assert len(logged) == 12  # 6 rows, each answered by both versions
    by_role = logged.groupby("role")
    champion, challenger = by_role.get_group("champion"), by_role.get_group("challenger")
    assert champion["served"].all() and not challenger["served"].any()
    assert set(champion["model_version"]) == {"1"} and set(challenger["model_version"]) == {"2"}
    keys = {(r.request_id, r.row) for r in champion.itertuples()}
    assert keys == {(r.request_id, r.row) for r in challenger.itertuples()}
    assert logged["error"].isna().all() and (logged["latency_ms"] > 0).all()


def test_canary_at_100_percent_is_answered_by_the_challenger_on_every_protocol(
    store: TinyStore, staged: str, log_dir: Path
) -> None:
    with _client(store, staged, log_dir, challenger_mode="canary", canary_percent=100) as client:
        _wait_for_state(client, "active")
        predict = client.post("/predict", json=SETOSA)
        invocations = client.post("/invocations", json={"dataframe_records": [SETOSA]})
        tensors = [
            {"name": name, "shape": [1], "datatype": "FP64", "data": [value]}
            for name, value in SETOSA.items()
        ]
        infer = client.post(f"/v2/models/{staged}/infer", json={"inputs": tensors})
        pinned = client.post(f"/v2/models/{staged}/versions/1/infer", json={"inputs": tensors})
    for answer in (predict, invocations, infer):
        assert answer.status_code == 200, answer.text
        assert answer.headers["X-Model-Version"] == "2"
    assert predict.json()["model_version"] == "2" and infer.json()["model_version"] == "2"
    assert pinned.headers["X-Model-Version"] == "1", "a request naming version 1 gets it"

    frame = read_predictions(log_dir, staged)
    served = frame[frame["request_id"] == predict.headers["X-Request-ID"]]
    assert dict(zip(served["role"], served["served"], strict=True)) == {
        "challenger": True,
        "champion": False,
    }


def test_with_the_mode_off_no_challenger_is_loaded(
    store: TinyStore, staged: str, log_dir: Path
) -> None:
    with _client(store, staged, log_dir, challenger_mode="off") as client:
        assert client.get("/model").json()["challenger"] is None
        assert client.post("/predict", json=SETOSA).headers["X-Model-Version"] == "1"


def test_a_challenger_with_other_inputs_is_not_loaded_and_model_and_ready_say_why(
    store: TinyStore, unique_name: str, log_dir: Path, gappy: TinyModel
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    store.stage_challenger(unique_name, store.register(unique_name, gappy))  # + 'petals'
    with _client(store, unique_name, log_dir) as client:
        challenger = _wait_for_state(client, "refused")
        ready = client.get("/health/ready")
        answer = client.post("/predict", json=SETOSA)
    assert challenger["version"] == "2"
    assert "input columns of challenger version 2" in challenger["reason"]
    assert "differ from champion version 1" in challenger["reason"]
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert "input columns" in ready.json()["warnings"][0]
    assert answer.status_code == 200 and answer.headers["X-Model-Version"] == "1"


def test_a_challenger_that_leaves_staging_is_dropped_and_one_promoted_becomes_the_champion(
    store: TinyStore, shadow: TestClient, staged: str
) -> None:
    store.promote(staged, "2")  # Staging -> Production: the challenger is the champion now
    wait_until(lambda: shadow.get("/model").json()["version"] == "2")
    challenger = _wait_for_state(shadow, "none")
    assert challenger["version"] is None
    assert shadow.post("/predict", json=SETOSA).headers["X-Model-Version"] == "2"


def test_a_failing_canary_challenger_never_reaches_a_client_and_is_rolled_back_on_the_registry(
    store: TinyStore, unique_name: str, strict_mixed: TinyModel, log_dir: Path
) -> None:
    store.register(unique_name, store.models["mixed"], production=True)
    store.stage_challenger(unique_name, store.register(unique_name, strict_mixed))
    nice = {"age": 30.0, "rooms": 3, "city": "nice", "owner": "yes"}
    settings = {"challenger_mode": "canary", "canary_percent": 50, "canary_min_requests": 10}
    with _client(store, unique_name, log_dir, **settings) as client:
        _wait_for_state(client, "active")
        answers = [client.post("/predict", json=nice) for _ in range(60)]
        challenger = _wait_for_state(client, "rolled_back")
        ready = client.get("/health/ready").json()
        wait_until(lambda: _challenger(client)["rollback"]["recorded"])
        metrics = client.get("/metrics").text
    assert [a.status_code for a in answers] == [200] * 60
    assert {a.headers["X-Model-Version"] for a in answers} == {"1"}
    assert "error rate 100.0%" in challenger["rollback"]["reason"]
    assert ready["status"] == "ready" and "rolled back" in ready["warnings"][0]
    tag = store.client.get_model_version(unique_name, "2").tags[CANARY_ROLLBACK_TAG]
    assert tag.startswith("rolled back at ") and "error rate 100.0%" in tag
    assert "serving_challenger_rolled_back 1.0" in metrics

    frame = read_predictions(log_dir, unique_name)
    failed = frame[frame["role"] == "challenger"]
    assert len(failed) >= 10 and failed["prediction"].isna().all()
    assert failed["error"].str.contains("PredictionFailedError").all()
    assert not failed["served"].any()
    assert frame[frame["role"] == "champion"]["served"].all()


def test_a_challenger_carrying_the_rollback_tag_is_not_loaded_until_a_new_version_comes(
    store: TinyStore, staged: str, forest_model: TinyModel, log_dir: Path
) -> None:
    store.client.set_model_version_tag(staged, "2", CANARY_ROLLBACK_TAG, "rolled back: errors")
    with _client(store, staged, log_dir) as client:
        challenger = _wait_for_state(client, "rolled_back")
        assert challenger["rollback"]["reason"] == "rolled back: errors"
        store.stage_challenger(staged, store.register(staged, forest_model))
        challenger = _wait_for_state(client, "active")
    assert challenger["version"] == "3"


def test_metrics_show_each_version_and_the_challenger(shadow: TestClient) -> None:
    for _ in range(3):
        shadow.post("/predict", json=SETOSA)
    wait_until(lambda: _metric(shadow, "serving_live_compared_rows_total") >= 3)
    text = shadow.get("/metrics").text
    assert 'serving_live_predictions_total{outcome="ok",role="champion"}' in text
    assert 'serving_live_predictions_total{outcome="ok",role="challenger"}' in text
    assert 'serving_live_model_seconds_bucket{le="0.001",role="challenger"}' in text
    assert 'serving_challenger_info{mode="shadow",name="' in text
    assert _metric(shadow, "serving_live_agreement_ratio") > 0


def _metric(client: TestClient, name: str) -> float:
    text = client.get("/metrics").text
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        families = list(text_string_to_metric_families(text))
    return sum(
        sample.value for family in families for sample in family.samples if sample.name == name
    )


def test_a_challenger_that_cannot_be_loaded_is_its_own_fault_and_the_champion_stays_ready(
    store: TinyStore, unique_name: str, broken_model: TinyModel, log_dir: Path
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    store.stage_challenger(unique_name, store.register(unique_name, broken_model))
    with _client(store, unique_name, log_dir) as client:
        challenger = _wait_for_state(client, "failed")
        ready = client.get("/health/ready")
        answer = client.post("/predict", json=SETOSA)
    assert challenger["reason"].startswith("The challenger is not loaded: The skops file")
    assert "missing" in challenger["reason"]
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert "skops file" in ready.json()["warnings"][0]
    assert answer.status_code == 200 and answer.headers["X-Model-Version"] == "1"


def test_a_canary_challenger_that_times_out_is_answered_by_the_champion_and_logged_as_such(
    store: TinyStore, unique_name: str, slow_iris: TinyModel, log_dir: Path
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    store.stage_challenger(unique_name, store.register(unique_name, slow_iris))
    settings = {
        "challenger_mode": "canary",
        "canary_percent": 100,
        "challenger_timeout_seconds": 0.001,  # the 500 bagged trees take far longer
    }
    with _client(store, unique_name, log_dir, **settings) as client:
        _wait_for_state(client, "active")
        answers = [client.post("/predict", json=SETOSA) for _ in range(3)]
        metrics = client.get("/metrics").text
    assert [a.status_code for a in answers] == [200] * 3
    assert {a.headers["X-Model-Version"] for a in answers} == {"1"}
    assert 'serving_live_predictions_total{outcome="timeout",role="challenger"} 3.0' in metrics
    frame = read_predictions(log_dir, unique_name)
    timed_out = frame[frame["role"] == "challenger"]
    assert timed_out["error"].tolist() == ["timeout: no answer within 0.001s"] * 3
    assert frame[frame["role"] == "champion"]["served"].tolist() == [True] * 3


def test_requests_beyond_the_shadow_bound_are_answered_but_not_shadowed_and_counted(
    store: TinyStore, unique_name: str, slow_iris: TinyModel, log_dir: Path
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    store.stage_challenger(unique_name, store.register(unique_name, slow_iris))
    with _client(store, unique_name, log_dir, shadow_max_in_flight=1) as client:
        _wait_for_state(client, "active")
        answers = [client.post("/predict", json=SETOSA) for _ in range(20)]
        dropped = _challenger(client)["shadow_dropped"]
        counted = _metric(client, "serving_live_shadow_dropped_total")
    assert [a.status_code for a in answers] == [200] * 20
    assert 0 < dropped < 20 and counted == dropped


def test_a_rollback_tag_the_registry_refused_is_written_at_a_later_poll(
    store: TinyStore,
    unique_name: str,
    strict_mixed: TinyModel,
    log_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = challenger_module.set_rollback_tag
    attempts: list[str] = []

    def down_twice(*args: Any) -> None:
        attempts.append(args[2])
        if len(attempts) <= 2:
            raise RegistryUnavailableError("The MLflow registry is unreachable (test).")
        real(*args)

    monkeypatch.setattr(challenger_module, "set_rollback_tag", down_twice)
    store.register(unique_name, store.models["mixed"], production=True)
    store.stage_challenger(unique_name, store.register(unique_name, strict_mixed))
    nice = {"age": 30.0, "rooms": 3, "city": "nice", "owner": "yes"}
    settings = {"challenger_mode": "canary", "canary_percent": 100, "canary_min_requests": 10}
    with _client(store, unique_name, log_dir, poll_seconds=0.2, **settings) as client:
        _wait_for_state(client, "active")
        for _ in range(12):
            assert client.post("/predict", json=nice).status_code == 200
        _wait_for_state(client, "rolled_back")
        wait_until(lambda: _challenger(client)["rollback"]["recorded"])
    assert attempts == ["2", "2", "2"], "the first write, then the polls until one succeeds"
    assert CANARY_ROLLBACK_TAG in store.client.get_model_version(unique_name, "2").tags
