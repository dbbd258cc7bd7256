from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
from mlflow.tracking import MlflowClient

from pipeline.config import load_config
from pipeline.errors import RegistryError
from pipeline.registry import production
from pipeline.steps import flow


def test_there_is_no_production_version_of_an_unknown_model(mlflow_store: str) -> None:
    assert production.production_version(MlflowClient(), "nothing-here") is None


def test_history_of_an_unknown_model_is_refused_naming_it(mlflow_store: str) -> None:
    with pytest.raises(RegistryError, match="registered model 'nothing-here' does not exist"):
        production.history(MlflowClient(), "nothing-here")


def test_set_production_moves_stage_and_alias_together_and_appends_history(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    flow.run_all(load_config(write_config(iris_config())))
    client = MlflowClient()
    client.create_model_version("iris-test", "models:/iris-test/1")
    event = production.set_production(client, "iris-test", "2", action="promote", reason="test")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        stages = {v.version: v.current_stage for v in client.search_model_versions()}
    assert {str(k): v for k, v in stages.items()} == {"1": "Archived", "2": "Production"}
    assert str(client.get_model_version_by_alias("iris-test", "champion").version) == "2"
    assert (event.from_version, event.to_version) == ("1", "2")
    newest_first = production.history(client, "iris-test")
    assert [e.to_version for e in newest_first] == ["2", "1"]
    assert client.get_model_version("iris-test", "2").tags["promoted.by"] == event.actor


def _lock_models(client: MlflowClient) -> list[str]:
    return [
        m.name for m in client.search_registered_models() if production.is_internal_model(m.name)
    ]


def test_the_production_lock_is_reentrant_and_gone_once_released(mlflow_store: str) -> None:
    client = MlflowClient()
    with production.production_lock(client, "m") as outer:
        assert _lock_models(client) == ["m.lock"]
        with production.production_lock(client, "m") as inner:
            assert inner == outer
        assert _lock_models(client) == ["m.lock"]
    assert _lock_models(client) == []


def test_the_production_lock_is_released_when_the_work_inside_fails(mlflow_store: str) -> None:
    client = MlflowClient()
    with pytest.raises(RegistryError, match="boom"), production.production_lock(client, "m"):
        raise RegistryError("boom")
    assert _lock_models(client) == []


def test_a_waiter_times_out_naming_the_holder_and_the_lock_model(mlflow_store: str) -> None:
    client = MlflowClient()
    errors: list[RegistryError] = []

    def wait() -> None:
        try:
            with production.production_lock(MlflowClient(), "m", timeout_seconds=0.5):
                pass
        except RegistryError as exc:
            errors.append(exc)

    with production.production_lock(client, "m") as held:
        waiter = threading.Thread(target=wait)
        waiter.start()
        waiter.join(timeout=60)
    (error,) = errors
    assert error.exit_code == 4
    message = str(error)
    assert "timed out after 0.5s waiting for the Production lock of 'm'" in message
    assert held.owner in message
    assert "delete the registered model 'm.lock'" in message


def test_a_lock_left_by_a_killed_process_is_broken_with_a_warning(
    mlflow_store: str, caplog: pytest.LogCaptureFixture
) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from mlflow.tracking import MlflowClient\n"
            "from pipeline.registry import production\n"
            "with production.production_lock(MlflowClient(), 'm'):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(600)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()
        holder.wait(timeout=30)
    client = MlflowClient()
    assert _lock_models(client) == ["m.lock"]
    with (
        caplog.at_level(logging.WARNING, logger="pipeline.registry.production"),
        production.production_lock(client, "m", timeout_seconds=60, stale_after_seconds=1),
    ):
        owner = client.get_registered_model("m.lock").tags["mlops.lock.owner"]
        assert f"pid={holder.pid}" not in owner
    assert f"pid={holder.pid}" in caplog.text
    assert "presumed dead" in caplog.text
    assert _lock_models(client) == []


def test_a_model_squatting_the_lock_name_is_refused_naming_it(mlflow_store: str) -> None:
    client = MlflowClient()
    client.create_registered_model("m.lock")
    with (
        pytest.raises(RegistryError, match=r"'m\.lock' exists but is not a Production lock"),
        production.production_lock(client, "m", timeout_seconds=5),
    ):
        pass


def test_history_is_refused_for_a_lock_naming_the_model_to_ask_for(mlflow_store: str) -> None:
    expected = r"'iris\.lock' is the Production lock of another model, not a model; pass 'iris'"
    with pytest.raises(RegistryError, match=expected):
        production.history(MlflowClient(), "iris.lock")


def test_a_new_event_goes_after_every_recorded_one_even_with_a_clock_behind(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    flow.run_all(load_config(write_config(iris_config())))
    client = MlflowClient()
    client.create_model_version("iris-test", "models:/iris-test/1")
    # An event recorded by a machine whose clock runs a day ahead of ours.
    ahead = time.time_ns() + 86_400 * 10**9
    (first,) = production.history(client, "iris-test")
    client.set_registered_model_tag(
        "iris-test", f"history.{ahead}", json.dumps({**asdict(first), "reason": "ahead"})
    )
    production.set_production(client, "iris-test", "2", action="promote", reason="after it")
    newest_first = production.history(client, "iris-test")
    assert [e.reason for e in newest_first][:2] == ["after it", "ahead"]
    assert len(newest_first) == 3


def test_a_lock_held_on_another_host_is_left_to_the_heartbeat_rule(mlflow_store: str) -> None:
    client = MlflowClient()
    owner = "someone@another-host:pid=1:thread=1:abcd1234"
    client.create_registered_model(
        "m.lock", tags={"mlops.lock.owner": owner}, description="Pipeline lock: test"
    )
    assert not production.holder_is_dead({"mlops.lock.owner": owner})
    with (
        pytest.raises(RegistryError, match=r"timed out after 0\.5s"),
        production.production_lock(client, "m", timeout_seconds=0.5, stale_after_seconds=600),
    ):
        pass
    assert _lock_models(client) == ["m.lock"]
