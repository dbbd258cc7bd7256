"""``python -m serving``: flags override the SERVING_* environment and reach uvicorn."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from fastapi import FastAPI

import serving.__main__ as entry
from serving.server import HeaderDeadlineProtocol, ServingConfig


@pytest.fixture
def uvicorn_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What main hands to uvicorn: the config's options, the app and the bound socket."""
    calls: list[dict[str, Any]] = []

    def fake_serve(config: ServingConfig, sock: socket.socket) -> None:
        calls.append(
            {
                "app": config.app,
                "host": config.host,
                "port": config.port,
                "log_level": config.log_level,
                "log_config": config.log_config,
                "timeout_graceful_shutdown": config.timeout_graceful_shutdown,
                "factory": config.factory,
                "workers": config.workers,
                "header_timeout_seconds": config.header_timeout_seconds,
                "timeout_keep_alive": config.timeout_keep_alive,
                "limit_concurrency": config.limit_concurrency,
                "http": config.http,
                "bound": sock.getsockname(),
            }
        )
        sock.close()

    monkeypatch.setattr(entry, "serve", fake_serve)
    monkeypatch.setattr(entry, "bind_socket", lambda _host, _port: _loopback_socket())
    monkeypatch.setattr(entry.logging, "basicConfig", lambda **_kwargs: None)
    # main exports flags to the environment for the workers: keep that inside the test.
    monkeypatch.setattr(os, "environ", os.environ.copy())
    return calls


def _loopback_socket() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


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
    assert "Invalid serving settings" in err and "SERVING_PORT" in err


def test_main_with_one_worker_passes_the_app_and_the_graceful_timeout(
    monkeypatch: pytest.MonkeyPatch, uvicorn_calls: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("SERVING_GRACEFUL_TIMEOUT_SECONDS", "7")
    assert entry.main([]) == 0
    (call,) = uvicorn_calls
    assert isinstance(call["app"], FastAPI)
    assert call["timeout_graceful_shutdown"] == 7
    assert call["workers"] == 1


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
    assert "SERVING_WORKERS: Input should be greater than or equal to 1" in capsys.readouterr().err


def test_main_sets_the_header_deadline_keep_alive_and_concurrency_limits(
    monkeypatch: pytest.MonkeyPatch, uvicorn_calls: list[dict[str, Any]]
) -> None:
    monkeypatch.setenv("SERVING_HEADER_TIMEOUT_SECONDS", "3")
    monkeypatch.setenv("SERVING_KEEP_ALIVE_SECONDS", "4")
    monkeypatch.setenv("SERVING_MAX_CONCURRENCY", "50")
    assert entry.main([]) == 0
    (call,) = uvicorn_calls
    assert call["header_timeout_seconds"] == 3
    assert (call["timeout_keep_alive"], call["limit_concurrency"]) == (4, 50)
    assert call["http"] is HeaderDeadlineProtocol


def test_main_names_the_environment_variable_of_an_invalid_setting_and_what_to_give(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    monkeypatch.setenv("SERVING_PORT", "abc")
    assert entry.main([]) == 2
    assert uvicorn_calls == []
    err = capsys.readouterr().err
    assert "SERVING_PORT: Input should be a valid integer" in err
    assert "(got 'abc')" in err
    assert "Give a whole number. (TCP port, 1 to 65535.)" in err


def test_main_never_shows_the_api_key_in_a_settings_error(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    uvicorn_calls: list[dict[str, Any]],
) -> None:
    monkeypatch.setenv("SERVING_API_KEY", "s3cret-value")
    monkeypatch.setenv("SERVING_WORKERS", "none")
    assert entry.main([]) == 2
    err = capsys.readouterr().err
    assert "SERVING_WORKERS" in err and "s3cret-value" not in err
