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


class ReadyPublic(BaseModel):
    status: Literal["ready"] = "ready"
    model_name: str
    model_version: str
    last_reload_error: None = Field(
        default=None, description="Always null when ready; see the degraded answer."
    )


class DegradedPublic(BaseModel):
    """A model answers, but the registry cannot be asked or the version it designates
    cannot be loaded: the version below keeps answering (still HTTP 200)."""

    status: Literal["degraded"] = "degraded"
    model_name: str
    model_version: str
    reason: str = Field(description="What failed, and what to do about it.")
    since: datetime = Field(description="Since when (UTC).")
    last_reload_error: ReloadErrorPublic


class NotReadyPublic(BaseModel):
    status: Literal["not_ready"] = "not_ready"
    reason: str = Field(description="Why no model is loaded, and what to do about it.")


class InputColumnPublic(BaseModel):
    name: str
    type: str = Field(description="MLflow type: double, long, string, boolean ...")
    required: bool


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
