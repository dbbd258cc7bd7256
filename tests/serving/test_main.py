"""``python -m serving``: flags override the SERVING_* environment and reach uvicorn."""

from __future__ import annotations

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
