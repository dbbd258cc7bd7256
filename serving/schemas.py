"""Response bodies of the REST API (request bodies are generated from the model signature)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from serving.middleware.request_id import MAX_LENGTH, PATTERN
from serving.model.inference import ClassPrediction, RegressionPrediction


class PredictResponseBase(BaseModel):
    model_name: str = Field(description="Registered model that answered.")
    model_version: str = Field(description="Version of the registered model that answered.")


class PredictOnePublic(PredictResponseBase):
    prediction: ClassPrediction | RegressionPrediction


class PredictManyPublic(PredictResponseBase):
    predictions: list[ClassPrediction | RegressionPrediction]


class LivePublic(BaseModel):
    status: Literal["alive"] = "alive"


class ReloadErrorPublic(BaseModel):
    version: str | None = Field(
        description="The version that failed to load; null if the registry could not be asked."
    )
    type: str = Field(
        description="What failed: registry_unavailable, model_artifact_error, unsafe_model, "
        "unsupported_model, model_not_found, no_version_in_stage or model_load_error."
    )
    message: str = Field(description="Why it failed, and what to do about it.")
    since: datetime = Field(description="When this fault was first seen (UTC).")
    at: datetime = Field(description="When the latest attempt failed (UTC).")


_WARNINGS: Any = Field(
    default_factory=list,
    description="What is wrong beside the champion, which keeps answering: the challenger's "
    "canary rolled back (when and why), or a challenger that fails to load or is refused.",
)


class ReadyPublic(BaseModel):
    status: Literal["ready"] = "ready"
    model_name: str
    model_version: str
    last_reload_error: None = Field(
        default=None, description="Always null when ready; see the degraded answer."
    )
    warnings: list[str] = _WARNINGS


class DegradedPublic(BaseModel):
    """A model answers, but the registry cannot be asked or the version it designates
    cannot be loaded: the version below keeps answering (still HTTP 200)."""

    status: Literal["degraded"] = "degraded"
    model_name: str
    model_version: str
    reason: str = Field(description="What failed, and what to do about it.")
    since: datetime = Field(description="Since when (UTC).")
    last_reload_error: ReloadErrorPublic
    warnings: list[str] = _WARNINGS


class NotReadyPublic(BaseModel):
    status: Literal["not_ready"] = "not_ready"
    reason: str = Field(description="Why no model is loaded, and what to do about it.")


class InputColumnPublic(BaseModel):
    name: str
    type: str = Field(description="MLflow type: double, long, string, boolean ...")
    required: bool


class RollbackPublic(BaseModel):
    version: str = Field(description="The challenger version no request goes to any more.")
    at: datetime = Field(description="When it was rolled back (UTC).")
    reason: str = Field(description="Why: its error rate or p99 latency against the champion's.")
    recorded: bool = Field(
        description="Whether the registry has the live.rollback tag on the version yet "
        "(retried at every poll until it does)."
    )


class ChallengerPublic(BaseModel):
    """The version in Staging (alias 'challenger') beside the champion."""

    mode: Literal["off", "shadow", "canary"] = Field(
        description="SERVING_CHALLENGER_MODE: shadow (answers logged, never returned), canary "
        "(answers canary_percent of requests) or off."
    )
    canary_percent: float = Field(description="SERVING_CANARY_PERCENT (canary mode).")
    state: Literal["none", "waiting", "loading", "active", "refused", "failed", "rolled_back"] = (
        Field(
            description="none: no version in Staging; waiting: for the champion; loading; "
            "active: requests go to it; refused: its inputs differ from the champion's; "
            "failed: it cannot be loaded; rolled_back: its canary was stopped."
        )
    )
    version: str | None = Field(description="The version in Staging, loaded or not.")
    run_id: str | None = None
    reason: str | None = Field(
        default=None, description="Why no request goes to it, when none does."
    )
    rollback: RollbackPublic | None = None
    agreement_rate: float | None = Field(
        default=None,
        description="Share of rows both versions answered alike (same label; values within 1% "
        "for regressors), in this worker since it started.",
    )
    shadow_dropped: int = Field(
        default=0, description="Requests not shadowed (too many in flight), in this worker."
    )


class ModelPublic(BaseModel):
    name: str
    version: str
    stage: str | None
    aliases: list[str]
    reference: str = Field(description="The configured reference, e.g. models:/iris/Production.")
    run_id: str | None
    task: Literal["classification", "regression"]
    inputs: list[InputColumnPublic]
    classes: list[str | int | float | bool] | None
    has_probabilities: bool
    metrics: dict[str, float] = Field(description="Held-out test metrics of the training run.")
    challenger: ChallengerPublic | None = Field(
        default=None, description="The challenger beside this champion; null when mode is off."
    )


class FeedbackPublic(BaseModel):
    accepted: int = Field(description="Labels queued for the prediction log.")
    model_name: str = Field(description="Model whose log the labels were filed in.")


_LABEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "title": "FeedbackLabel",
    "properties": {
        "request_id": {
            "type": "string",
            "maxLength": MAX_LENGTH,
            "pattern": PATTERN,
            "description": "The X-Request-ID header of the prediction's answer.",
        },
        "row": {
            "type": "integer",
            "minimum": 0,
            "default": 0,
            "description": "Index of the record within its request (0 for a single record).",
        },
        "label": {
            "description": "The true label: one of the model's classes (GET /model lists "
            "them), or a finite number for a regressor.",
        },
    },
    "required": ["request_id", "label"],
    "additionalProperties": False,
}
FEEDBACK_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "oneOf": [
                    _LABEL_SCHEMA,
                    {
                        "type": "object",
                        "title": "FeedbackBatch",
                        "properties": {
                            "labels": {"type": "array", "minItems": 1, "items": _LABEL_SCHEMA}
                        },
                        "required": ["labels"],
                        "additionalProperties": False,
                    },
                ]
            }
        }
    },
}
"""The body of POST /feedback, for OpenAPI (the route checks it in serving.feedback)."""


class ErrorDetailPublic(BaseModel):
    field: str
    message: str


class ErrorInfoPublic(BaseModel):
    type: str
    message: str
    details: list[ErrorDetailPublic]


class ErrorPublic(BaseModel):
    error: ErrorInfoPublic
