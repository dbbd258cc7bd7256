"""Settings: defaults, SERVING_* environment, validation of the model URI and friends."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from serving.model.ref import ModelRef
from serving.settings import Settings, describe_errors


def test_settings_have_documented_defaults() -> None:
    settings = Settings()
    assert settings.model_name == "iris"
    assert settings.model_stage == "Production"
    assert settings.model_uri is None
    assert settings.tracking_uri == "sqlite:///mlflow.db"
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.max_body_bytes == 1_000_000
    assert settings.poll_seconds == 10.0
    assert settings.log_level == "INFO"
    assert settings.model_ref == ModelRef(name="iris", kind="stage", value="Production")
    assert settings.workers == 1
    assert settings.request_timeout_seconds == 30.0
    assert settings.api_key is None
    assert settings.graceful_timeout_seconds == 20
    assert settings.prediction_log_enabled is True
    assert settings.prediction_log_dir == Path("prediction_log")
    assert settings.prediction_log_queue_size == 50_000
    assert settings.prediction_log_rotate_rows == 50_000
    assert settings.prediction_log_rotate_seconds == 2.0


def test_prediction_log_settings_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVING_PREDICTION_LOG_ENABLED", "false")
    monkeypatch.setenv("SERVING_PREDICTION_LOG_DIR", "/var/log/predictions")
    monkeypatch.setenv("SERVING_PREDICTION_LOG_QUEUE_SIZE", "10")
    monkeypatch.setenv("SERVING_PREDICTION_LOG_ROTATE_ROWS", "500")
    monkeypatch.setenv("SERVING_PREDICTION_LOG_ROTATE_SECONDS", "2.5")
    settings = Settings()
    assert settings.prediction_log_enabled is False
    assert settings.prediction_log_dir == Path("/var/log/predictions")
    assert settings.prediction_log_queue_size == 10
    assert (settings.prediction_log_rotate_rows, settings.prediction_log_rotate_seconds) == (
        500,
        2.5,
    )


def test_an_empty_prediction_log_dir_is_refused_saying_how_to_turn_the_log_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVING_PREDICTION_LOG_DIR", " ")
    with pytest.raises(ValidationError, match="prediction_log_dir") as info:
        Settings()
    assert "SERVING_PREDICTION_LOG_ENABLED=false" in str(info.value)


def test_tracking_uri_defaults_to_mlflow_tracking_uri_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert Settings().tracking_uri == "http://mlflow.internal:5000"


def test_serving_tracking_uri_wins_over_mlflow_tracking_uri(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    monkeypatch.setenv("SERVING_TRACKING_URI", "sqlite:///other.db")
    assert Settings().tracking_uri == "sqlite:///other.db"


def test_settings_are_read_from_serving_prefixed_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVING_MODEL_NAME", "wine")
    monkeypatch.setenv("SERVING_MODEL_STAGE", "staging")
    monkeypatch.setenv("SERVING_PORT", "9123")
    monkeypatch.setenv("SERVING_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("SERVING_POLL_SECONDS", "0.5")
    monkeypatch.setenv("SERVING_LOG_LEVEL", "debug")
    settings = Settings()
    assert settings.model_ref == ModelRef(name="wine", kind="stage", value="Staging")
    assert (settings.port, settings.max_body_bytes, settings.poll_seconds) == (9123, 2048, 0.5)
    assert settings.log_level == "DEBUG"


def test_worker_timeout_and_key_settings_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVING_WORKERS", "3")
    monkeypatch.setenv("SERVING_REQUEST_TIMEOUT_SECONDS", "0")
    monkeypatch.setenv("SERVING_GRACEFUL_TIMEOUT_SECONDS", "5")
    monkeypatch.setenv("SERVING_API_KEY", " k3y\n")
    settings = Settings()
    assert (settings.workers, settings.request_timeout_seconds) == (3, 0.0)
    assert settings.graceful_timeout_seconds == 5
    assert settings.api_key is not None and settings.api_key.get_secret_value() == "k3y"


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("models:/iris@champion", ModelRef("iris", "alias", "champion")),
        ("models:/iris/3", ModelRef("iris", "version", "3")),
        ("models:/iris/Production", ModelRef("iris", "stage", "Production")),
        ("models:/my model/production", ModelRef("my model", "stage", "Production")),
    ],
)
def test_model_uri_overrides_name_and_stage(uri: str, expected: ModelRef) -> None:
    settings = Settings(model_name="other", model_uri=uri)
    assert settings.model_ref == expected
    assert settings.model_uri == expected.uri


@pytest.mark.parametrize(
    "uri",
    ["runs:/abc123/model", "models:/iris", "models:/iris/0", "models:/iris/Prod", "s3://b/m"],
)
def test_settings_reject_unsupported_model_uri_naming_the_accepted_forms(uri: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(model_uri=uri)
    message = str(info.value)
    assert "model_uri" in message
    assert "models:/<name>" in message


def test_settings_reject_unknown_stage_listing_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="Production, Staging, Archived"):
        Settings(model_stage="Live")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("port", 0),
        ("port", 70000),
        ("max_body_bytes", 0),
        ("poll_seconds", 0),
        ("log_level", "x"),
        ("workers", 0),
        ("request_timeout_seconds", -1),
        ("graceful_timeout_seconds", 0),
        ("prediction_log_queue_size", 0),
        ("prediction_log_rotate_rows", 0),
        ("prediction_log_rotate_seconds", 0),
    ],
)
def test_settings_reject_out_of_range_values_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: value})


def test_settings_reject_unknown_keyword_naming_it() -> None:
    with pytest.raises(ValidationError, match="model_nmae"):
        Settings(model_nmae="iris")  # type: ignore[call-arg]


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValidationError, match="frozen"):
        settings.port = 1  # type: ignore[misc]


def test_live_traffic_settings_default_to_shadow_with_documented_bounds() -> None:
    settings = Settings()
    assert settings.challenger_mode == "shadow"
    assert settings.canary_percent == 10.0
    assert settings.challenger_timeout_seconds == 1.0
    assert settings.shadow_max_in_flight == 2048
    assert (settings.canary_max_error_rate, settings.canary_max_p99_ratio) == (0.05, 3.0)
    assert (settings.canary_window, settings.canary_min_requests) == (500, 50)


def test_live_traffic_settings_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVING_CHALLENGER_MODE", "canary")
    monkeypatch.setenv("SERVING_CANARY_PERCENT", "2.5")
    monkeypatch.setenv("SERVING_CANARY_WINDOW", "200")
    settings = Settings()
    assert (settings.challenger_mode, settings.canary_percent) == ("canary", 2.5)
    assert settings.canary_window == 200


@pytest.mark.parametrize(
    ("variable", "value", "fragments"),
    [
        ("SERVING_CHALLENGER_MODE", "mirror", ("SERVING_CHALLENGER_MODE", "'off', 'shadow'")),
        ("SERVING_CANARY_PERCENT", "150", ("SERVING_CANARY_PERCENT", "less than or equal to 100")),
        ("SERVING_CANARY_PERCENT", "-1", ("SERVING_CANARY_PERCENT", "greater than or equal to 0")),
        ("SERVING_CANARY_MAX_P99_RATIO", "0.5", ("SERVING_CANARY_MAX_P99_RATIO", "at least 1")),
        ("SERVING_CHALLENGER_TIMEOUT_SECONDS", "0", ("SERVING_CHALLENGER_TIMEOUT_SECONDS",)),
    ],
)
def test_bad_live_traffic_settings_are_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, fragments: tuple[str, ...]
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    message = describe_errors(caught.value)
    for fragment in fragments:
        assert fragment in message


def test_a_minimum_larger_than_the_window_is_refused_saying_which_to_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVING_API_KEY", "secret-key")
    with pytest.raises(ValidationError) as caught:
        Settings(canary_window=20, canary_min_requests=50)
    message = describe_errors(caught.value)
    assert message == (
        "SERVING_CANARY_MIN_REQUESTS (50) is larger than SERVING_CANARY_WINDOW (20): the "
        "challenger would never be judged. Lower the minimum or widen the window."
    )
    assert "secret-key" not in message
