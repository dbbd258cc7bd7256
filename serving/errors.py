"""Domain errors, each carrying its HTTP status, and the handlers that render them as JSON.

Every error response has one shape::

    {"error": {"type": "...", "message": "...", "details": [{"field": "...", "message": "..."}]}}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ErrorDetail:
    """One problem with one field of a request."""

    field: str
    message: str


class ServingError(Exception):
    """Base of the serving errors: knows its HTTP status and a machine-readable type."""

    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal_error"

    def __init__(self, message: str, details: Sequence[ErrorDetail] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details: tuple[ErrorDetail, ...] = tuple(details)


class InvalidRequestError(ServingError):
    """The request body does not match the model's input schema."""

    status_code = 422
    error_type = "invalid_request"


class MalformedRequestError(ServingError):
    """The request body is not valid JSON (or not JSON at all)."""

    status_code = 400
    error_type = "malformed_request"


class PayloadTooLargeError(ServingError):
    """The request body is larger than ``SERVING_MAX_BODY_BYTES``."""

    status_code = 413
    error_type = "payload_too_large"


class UnsupportedMediaTypeError(ServingError):
    """A JSON route got a body that does not say it is JSON (``Content-Type``)."""

    status_code = 415
    error_type = "unsupported_media_type"


class ModelNotReadyError(ServingError):
    """No model is loaded yet, so the server cannot answer predictions."""

    status_code = 503
    error_type = "model_not_ready"


class PredictionFailedError(ServingError):
    """The model raised while predicting this request; the cause is logged, never sent."""

    status_code = 500
    error_type = "prediction_failed"

    @classmethod
    def for_request(cls) -> PredictionFailedError:
        return cls(
            "The model failed to predict this request; the error is logged on the server. "
            "Check the input values (GET /model lists the expected ones) or contact the operator."
        )


class PredictionLogUnavailableError(ServingError):
    """The prediction log cannot take these records: it is off, or its queue is full."""

    status_code = 503
    error_type = "prediction_log_unavailable"


class ModelLoadError(ServingError):
    """The configured model could not be resolved, downloaded or safely loaded."""

    status_code = 503
    error_type = "model_load_error"


class ModelNotFoundError(ModelLoadError):
    """The registered model, alias or version does not exist in the registry."""

    error_type = "model_not_found"


class NoVersionInStageError(ModelLoadError):
    """The registered model exists but no version is in the requested stage yet."""

    error_type = "no_version_in_stage"


class RegistryUnavailableError(ModelLoadError):
    """The MLflow registry (tracking store) could not be asked: down, moved or not answering."""

    error_type = "registry_unavailable"


class ModelArtifactError(ModelLoadError):
    """A version's artifacts are missing or unreadable (deleted directory, corrupt file)."""

    error_type = "model_artifact_error"


class UnsafeModelError(ModelLoadError):
    """The model file holds a type outside the allowed modules; it was not loaded."""

    error_type = "unsafe_model"


class UnsupportedModelError(ModelLoadError):
    """The model lacks what serving needs (an sklearn flavor, a named input signature)."""

    error_type = "unsupported_model"


def error_body(
    error_type: str, message: str, details: Sequence[ErrorDetail] = ()
) -> dict[str, Any]:
    """Build the JSON body shared by every error response."""
    return {
        "error": {
            "type": error_type,
            "message": message,
            "details": [{"field": d.field, "message": d.message} for d in details],
        }
    }


def _json_error(
    status_code: int, error_type: str, message: str, details: Sequence[ErrorDetail] = ()
) -> JSONResponse:
    return JSONResponse(status_code=status_code, content=error_body(error_type, message, details))


async def _handle_serving_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServingError)
    if exc.status_code >= 500:
        logger.warning("%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc)
    return _json_error(exc.status_code, exc.error_type, exc.message, exc.details)


async def _handle_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = [
        ErrorDetail(
            field=".".join(str(part) for part in err.get("loc", ()) if part != "body") or "body",
            message=str(err.get("msg", "invalid value")),
        )
        for err in exc.errors()
    ]
    return _json_error(
        422,
        InvalidRequestError.error_type,
        "The request is invalid: fix the fields listed.",
        details,
    )


async def _handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        message = f"No route {request.url.path}: see /docs for the available routes."
    elif exc.status_code == 405:
        message = f"{request.method} is not allowed on {request.url.path}: see /docs."
    else:
        message = str(exc.detail)
    response = _json_error(exc.status_code, "http_error", message)
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _handle_unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("Unhandled error on %s %s", request.method, request.url.path)
    return _json_error(
        500,
        "internal_error",
        "The server failed to handle this request; the error is logged on the server. "
        "Retry later or contact the operator.",
    )


def add_error_handlers(app: FastAPI) -> None:
    """Map every error to the shared JSON body: domain errors, validation, HTTP and the rest."""
    app.add_exception_handler(ServingError, _handle_serving_error)
    app.add_exception_handler(RequestValidationError, _handle_validation_error)
    app.add_exception_handler(StarletteHTTPException, _handle_http_error)
    app.add_exception_handler(Exception, _handle_unexpected_error)
