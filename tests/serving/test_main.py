"""``python -m serving``: flags override the SERVING_* environment and reach uvicorn."""

from __future__ import annotations

import os
from typing import Any

import pytest
from fastapi import FastAPI

import serving.__main__ as entry


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_run(app: Any, **kwargs: Any) -> None:
        calls.append({"app": app, **kwargs})

    monkeypatch.setattr(entry.uvicorn, "run", fake_run)
    monkeypatch.setattr(entry.logging, "basicConfig", lambda **_kwargs: None)
    # main exports flags to the environment for the workers: keep that inside the test.
    monkeypatch.setattr(os, "environ", os.environ.copy())
    return calls


def test_main_runs_uvicorn_with_settings_from_environment(
    monkeypatch: pytest.MonkeyPatch, uvicorn_calls: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("SERVING_HOST", "0.0.0.0")
    monkeypatch.setenv("SERVING_PORT", "9001")
    assert entry.main([]) == 0
    (call,) = uvicorn_calls
    assert isinstance(call["app"], FastAPI)
    assert (call["host"], call["port"]) == ("0.0.0.0", 9001)
    assert call["app"].state.settings.port == 9001


def test_main_flags_override_the_environment(
    monkeypatch: pytest.MonkeyPatch, uvicorn_calls: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("SERVING_PORT", "9001")
    argv = ["--port", "9002", "--host", "127.0.0.2", "--model-uri", "models:/iris@champion"]
    assert entry.main([*argv, "--log-level", "debug"]) == 0
    (call,) = uvicorn_calls
    assert (call["host"], call["port"], call["log_level"]) == ("127.0.0.2", 9002, "debug")
    assert call["app"].state.settings.model_uri == "models:/iris@champion"


def test_main_refuses_invalid_settings_naming_the_field(
    capsys: pytest.CaptureFixture[str], uvicorn_calls: list[dict[str, Any]]
) -> None:
    assert entry.main(["--port", "70000"]) == 2
    assert uvicorn_calls == []
    err = capsys.readouterr().err
    assert "Invalid serving settings" in err and "port" in err


def test_main_with_one_worker_passes_the_app_and_the_graceful_timeout(
    monkeypatch: pytest.MonkeyPatch, uvicorn_calls: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("SERVING_GRACEFUL_TIMEOUT_SECONDS", "7")
    assert entry.main([]) == 0
    (call,) = uvicorn_calls
    assert isinstance(call["app"], FastAPI)
    assert call["timeout_graceful_shutdown"] == 7
    assert "workers" not in call


def test_main_with_several_workers_runs_the_factory_with_flags_exported_to_the_workers(
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    argv = ["--workers", "2", "--port", "9003", "--model-uri", "models:/iris/1"]
    assert entry.main(argv) == 0
    (call,) = uvicorn_calls
    assert call["app"] == "serving.app:app_from_env"
    assert (call["factory"], call["workers"], call["port"]) == (True, 2, 9003)
    assert call["timeout_graceful_shutdown"] == 20
    # Each worker builds its settings from the environment it inherits.
    assert os.environ["SERVING_WORKERS"] == "2"
    assert os.environ["SERVING_PORT"] == "9003"
    assert os.environ["SERVING_MODEL_URI"] == "models:/iris/1"


def test_main_logging_config_gives_our_loggers_a_handler_in_every_worker(
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    assert entry.main(["--workers", "2", "--log-level", "warning"]) == 0
    config = uvicorn_calls[0]["log_config"]
    assert config["root"] == {"handlers": ["serving"], "level": "WARNING"}
    assert config["handlers"]["serving"]["formatter"] == "serving"
    assert config["formatters"]["serving"]["format"] == entry.LOG_FORMAT
    assert "uvicorn.access" in config["loggers"]  # uvicorn's own logging is kept


def test_main_refuses_zero_workers_naming_the_field(
    capsys: pytest.CaptureFixture[str], uvicorn_calls: list[dict[str, Any]]
) -> None:
    assert entry.main(["--workers", "0"]) == 2
    assert uvicorn_calls == []
    assert "workers" in capsys.readouterr().err
