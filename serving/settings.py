"""Serving settings: one frozen object read from ``SERVING_*`` environment variables."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipeline.contracts import FEEDBACK_DIR, PREDICTION_LOG_DIR, PREDICTIONS_DIR
from serving.limits import RequestLimits
from serving.model.ref import ModelRef, canonical_stage

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
ChallengerMode = Literal["off", "shadow", "canary"]


def _default_tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class Settings(BaseSettings):
    """Everything the server needs, validated once at start.

    Each field is read from ``SERVING_<FIELD>`` (for example ``SERVING_MODEL_URI``);
    keyword arguments given to the constructor win over the environment.
    """

    model_config = SettingsConfigDict(
        env_prefix="SERVING_",
        frozen=True,
        extra="forbid",
        validate_default=True,
        protected_namespaces=(),
    )

    model_name: str = Field(default="iris", min_length=1, description="Registered model name.")
    model_stage: str = Field(default="Production", description="Registry stage to serve.")
    model_uri: str | None = Field(
        default=None,
        description=(
            "Explicit model: models:/<name>@<alias>, models:/<name>/<version> or "
            "models:/<name>/<stage>. Overrides model_name and model_stage."
        ),
    )
    tracking_uri: str = Field(
        default_factory=_default_tracking_uri,
        min_length=1,
        description="MLflow tracking and registry URI (default: $MLFLOW_TRACKING_URI "
        "or sqlite:///mlflow.db).",
    )
    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=8000, ge=1, le=65535, description="TCP port, 1 to 65535.")
    max_body_bytes: int = Field(default=1_000_000, gt=0, description="Largest accepted body.")
    poll_seconds: float = Field(
        default=10.0,
        gt=0,
        description="Hot-reload interval: seconds between registry checks. A version newly "
        "promoted (or rolled back) to the stage or alias is loaded, warmed and swapped in "
        "within this interval plus its load time; while no model is loaded, the retry interval.",
    )
    max_batch_size: int = Field(
        default=256,
        ge=1,
        description="Micro-batching: most rows merged into one predict call. A single request "
        "with more records than this is predicted alone, never split.",
    )
    max_batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        description="Micro-batching: while the model is busy, how long queued requests may wait "
        "for more to fill a batch. An idle server predicts a request at once; 0 never waits.",
    )
    workers: int = Field(
        default=1,
        ge=1,
        description="uvicorn worker processes. Each loads its own copy of the model and runs "
        "its own batcher, so memory grows with every worker.",
    )
    request_timeout_seconds: float = Field(
        default=30.0,
        ge=0,
        description="Longest a prediction request may take before it is answered 504; "
        "0 disables the limit. The model call already running is not interrupted.",
    )
    api_key: SecretStr | None = Field(
        default=None,
        description="When set, prediction routes require 'Authorization: Bearer <key>'. "
        "Health, /metrics, /model and /docs stay open.",
    )
    graceful_timeout_seconds: int = Field(
        default=20,
        ge=1,
        description="On SIGTERM, how long to wait for requests in flight before cancelling them.",
    )
    prediction_log_enabled: bool = Field(
        default=True,
        description="Record every prediction (and the labels sent to POST /feedback) in the "
        "prediction log that monitoring reads. Off: nothing is written and /feedback is a 503.",
    )
    prediction_log_dir: Path = Field(
        default=Path(PREDICTION_LOG_DIR),
        description="Root of the prediction log, relative to the working directory unless "
        f"absolute; parts go to <dir>/<model name>/{PREDICTIONS_DIR}/ and .../{FEEDBACK_DIR}/. "
        "The same default as the pipeline's monitoring.log_dir (pipeline.contracts).",
    )
    prediction_log_queue_size: int = Field(
        default=50_000,
        ge=1,
        description="Most records (predicted rows and labels) waiting for the log writer; "
        "a request whose records do not fit is not logged (counted as dropped), never delayed.",
    )
    prediction_log_rotate_rows: int = Field(
        default=50_000,
        ge=1,
        description="Most rows per Parquet part of the prediction log: a full part is closed "
        "and the next rows start a new one. The open part is written again (all its rows) "
        "every prediction_log_rotate_seconds while rows arrive, so this bounds that cost.",
    )
    prediction_log_rotate_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Longest a logged record waits in memory before it is on disk, in a "
        "readable part: what a crash (SIGKILL, power loss) can lose. The open part is written "
        "again with the new rows and renamed over its previous version, so lowering this "
        "costs CPU (the part is encoded again), not files.",
    )
    header_timeout_seconds: float = Field(
        default=10.0,
        ge=0,
        description="Longest a client may take to send a request's line and headers, from "
        "connecting (or from the first byte of its next request); the connection is then "
        "answered 408 and closed. 0 disables the deadline.",
    )
    keep_alive_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long an idle keep-alive connection stays open between requests.",
    )
    max_concurrency: int = Field(
        default=1000,
        ge=1,
        description="Most connections and requests in progress at once (per worker); beyond "
        "it new requests are answered 503 at once instead of queueing without bound.",
    )
    max_rows: int = Field(
        default=20_000,
        ge=1,
        description="Most rows (records, tensor rows) one prediction request may hold, "
        "whatever its encoding; checked before the values are parsed.",
    )
    max_columns: int = Field(
        default=1_000,
        ge=1,
        description="Most columns (distinct record keys, CSV or Parquet columns, tensors) one "
        "prediction request may name; a JSON record with more keys is refused as it is read.",
    )
    max_decoded_bytes: int = Field(
        default=64_000_000,
        gt=0,
        description="Largest uncompressed size of a Parquet body's data, read from its "
        "metadata before anything is decompressed.",
    )
    max_error_details: int = Field(
        default=20,
        ge=1,
        description="Most problems an error body lists; the rest are counted, not listed, so "
        "a bad request of 100,000 rows gets a small answer.",
    )
    challenger_mode: ChallengerMode = Field(
        default="shadow",
        description="What the version in Staging (alias 'challenger') does beside the champion: "
        "'shadow' predicts every request off the request path and only logs its answers "
        "(clients always get the champion's), 'canary' answers SERVING_CANARY_PERCENT of "
        "requests, 'off' does not load it. Shadow is the default: it never changes what a "
        "client gets.",
    )
    canary_percent: float = Field(
        default=10.0,
        ge=0,
        le=100,
        description="Canary mode: share of requests (0 to 100) the challenger answers, chosen "
        "by a stable hash of X-Routing-Key (else X-Request-ID), so a key always goes one way.",
    )
    challenger_timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        description="Longest a challenger prediction may take; beyond it the answer counts as "
        "an error (a canary request is then answered by the champion).",
    )
    shadow_max_in_flight: int = Field(
        default=2048,
        ge=1,
        description="Shadow mode: most requests waiting for the challenger at once; a request "
        "beyond it is not shadowed (counted in serving_live_shadow_dropped_total).",
    )
    canary_max_error_rate: float = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Canary rollback: the challenger is rolled back when its error rate over "
        "the window exceeds the champion's by more than this (0 to 1).",
    )
    canary_max_p99_ratio: float = Field(
        default=3.0,
        ge=1,
        description="Canary rollback: the challenger is rolled back when its p99 latency over "
        "the window exceeds the champion's times this (at least 1).",
    )
    canary_window: int = Field(
        default=500,
        ge=10,
        description="Canary rollback: the latest requests of each version the bounds are "
        "judged on (at least 10).",
    )
    canary_min_requests: int = Field(
        default=50,
        ge=1,
        description="Canary rollback: requests each version must have answered in the window "
        "before the challenger is judged (at most SERVING_CANARY_WINDOW).",
    )
    log_level: LogLevel = "INFO"

    @model_validator(mode="after")
    def _window_holds_the_minimum(self) -> Settings:
        if self.canary_min_requests > self.canary_window:
            raise ValueError(
                f"SERVING_CANARY_MIN_REQUESTS ({self.canary_min_requests}) is larger than "
                f"SERVING_CANARY_WINDOW ({self.canary_window}): the challenger would never be "
                "judged. Lower the minimum or widen the window"
            )
        return self

    @field_validator("model_stage")
    @classmethod
    def _known_stage(cls, value: str) -> str:
        return canonical_stage(value)

    @field_validator("model_uri")
    @classmethod
    def _supported_uri(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return ModelRef.from_uri(value).uri

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_no_key(cls, value: object) -> object:
        # Never validated beyond this: a failing check would print the key in the error.
        if isinstance(value, str):
            return value.strip() or None  # a trailing newline from a secrets file is no key
        return value

    @field_validator("prediction_log_dir", mode="before")
    @classmethod
    def _dir_is_not_empty(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                "is empty: give a directory, or set SERVING_PREDICTION_LOG_ENABLED=false "
                "to turn the prediction log off"
            )
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @functools.cached_property
    def request_limits(self) -> RequestLimits:
        """What one prediction request may cost (rows, columns, decoded size, error size);
        built once, read on every request."""
        return RequestLimits(
            max_rows=self.max_rows,
            max_columns=self.max_columns,
            max_decoded_bytes=self.max_decoded_bytes,
            max_error_details=self.max_error_details,
        )

    @property
    def model_ref(self) -> ModelRef:
        """The model to serve: ``model_uri`` if given, else ``model_name`` in ``model_stage``."""
        if self.model_uri is not None:
            return ModelRef.from_uri(self.model_uri)
        return ModelRef(name=self.model_name, kind="stage", value=self.model_stage)


_KIND_TEXT = {int: "a whole number", float: "a number", bool: "true or false"}


def describe_errors(error: ValidationError) -> str:
    """A settings error as lines naming the environment variable (``SERVING_PORT``), what
    was given and what to give; the value of the API key is never shown."""
    return "\n".join(_describe(problem) for problem in error.errors())


def _describe(problem: Any) -> str:
    if not problem["loc"]:
        # A rule across fields: its message names them; the input (every setting, the API
        # key among them) is never shown.
        return str(problem["msg"]).removeprefix("Value error, ") + "."
    field = str(problem["loc"][0])
    info = Settings.model_fields.get(field)
    given = "" if field == "api_key" else f" (got {str(problem.get('input'))[:60]!r})"
    text = f"SERVING_{field.upper() or '*'}: {problem['msg']}{given}."
    if info is not None and info.annotation in _KIND_TEXT:
        text += f" Give {_KIND_TEXT[info.annotation]}."
    if info is not None and info.description:
        text += f" ({info.description})"
    return text
