"""What the routes take from the app: the active model, the prediction log and the
size-limited JSON body."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

import pandas as pd
from fastapi import Depends, Request

from serving.errors import (
    MalformedRequestError,
    ModelNotReadyError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from serving.live.routing import ROUTING_HEADER
from serving.live.traffic import Answer, LiveTraffic
from serving.middleware.metrics import ServingMetrics
from serving.middleware.request_id import request_id
from serving.model.domain import RowWarnings, flagged_columns
from serving.model.inference import FramePredictions, PredictionRow, Record, loads_json
from serving.model.state import ActiveModel, ModelHolder
from serving.model.store import LoadedModel
from serving.prediction_log import PredictionLog


def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.models
    return holder


HolderDep = Annotated[ModelHolder, Depends(get_holder)]


def get_prediction_log(request: Request) -> PredictionLog | None:
    """The app's prediction log; None when it is off."""
    log: PredictionLog | None = getattr(request.app.state, "prediction_log", None)
    return log


def log_predictions(
    request: Request,
    loaded: LoadedModel,
    inputs: Sequence[Mapping[str, Any]] | pd.DataFrame,
    outputs: Sequence[PredictionRow] | FramePredictions,
) -> None:
    """Hand this request's predictions to the prediction log (if on), under its request id.
    Costs one queue append; never waits and never raises because of the log."""
    log = get_prediction_log(request)
    if log is not None:
        log.log_predictions(request_id(request), loaded, inputs, outputs)


async def predict_logged(
    request: Request,
    active: ActiveModel,
    inputs: list[Record] | pd.DataFrame,
    *,
    proba: bool = True,
    canary: bool = True,
) -> Answer:
    """Predict a request's validated records (or bulk frame) with the champion, or the
    challenger beside it (shadow or canary, :mod:`serving.live.traffic`), and log every
    version's answer under the request id. The answer says which version gave it;
    ``canary`` false keeps it the champion's (a request that names the champion's version).

    Raises:
        PredictionFailedError: the champion failed on these inputs.
    """
    traffic: LiveTraffic = request.app.state.traffic
    key = request.headers.get(ROUTING_HEADER) if traffic.mode == "canary" else None
    return await traffic.predict(
        request_id(request), active, inputs, proba=proba, routing_key=key, canary=canary
    )


def count_flags(request: Request, flags: RowWarnings) -> RowWarnings:
    """Count a request's values outside the training domain in ``/metrics``; the flags."""
    if flags:
        metrics: ServingMetrics = request.app.state.metrics
        metrics.count_outside_domain(flagged_columns(flags))
    return flags


def require_active(holder: ModelHolder) -> ActiveModel:
    """The model answering now; 503 with the reason (and how to fix it) when there is none."""
    active = holder.active
    if active is None:
        raise ModelNotReadyError(holder.reason)
    return active


def get_active_model(holder: HolderDep) -> ActiveModel:
    """Dependency form of :func:`require_active`."""
    return require_active(holder)


ActiveModelDep = Annotated[ActiveModel, Depends(get_active_model)]


async def read_json_body(request: Request, limit: int) -> bytes:
    """The body of a JSON route, at most ``limit`` bytes, still to be decoded (:func:`decode_json`,
    off the event loop when it is large).

    Raises:
        UnsupportedMediaTypeError: the Content-Type is not JSON.
        PayloadTooLargeError: the body (declared or streamed) is larger than ``limit``.
    """
    content_type = request.headers.get("content-type")
    if not is_json_media_type(content_type):
        raise UnsupportedMediaTypeError(
            f"Unsupported Content-Type {shown_header(content_type)}: send the body as JSON with "
            "'Content-Type: application/json'."
        )
    return await read_body(request, limit)


def shown_header(value: str | None) -> str:
    """A header value as an error message quotes it: cut short, never echoed whole."""
    if value is None:
        return "(none)"
    return repr(value if len(value) <= 60 else value[:60] + "...")


def is_json_media_type(header: str | None) -> bool:
    """Whether a Content-Type header says JSON: ``application/json`` (any case, parameters
    such as ``charset=utf-8`` allowed). Anything else, ``text/plain`` included, is refused:
    a browser sends those cross-site without asking (a CORS "simple request")."""
    if header is None:
        return False
    return header.split(";", 1)[0].strip().lower() == "application/json"


async def read_body(request: Request, limit: int) -> bytes:
    """Read at most ``limit`` bytes of the body.

    Raises:
        PayloadTooLargeError: the body (declared or streamed) is larger than ``limit``.
        MalformedRequestError: the Content-Length header is not a number.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedRequestError("The Content-Length header is not a number.")
        if int(declared) > limit:
            raise _too_large(limit)
        body = await request.body()
        if len(body) > limit:
            raise _too_large(limit)
        return body
    chunks = bytearray()
    async for chunk in request.stream():
        chunks.extend(chunk)
        if len(chunks) > limit:
            raise _too_large(limit)
    return bytes(chunks)


def decode_json(body: bytes) -> Any:
    """Decode a /predict body.

    Raises:
        MalformedRequestError: the body is empty or not JSON.
    """
    if not body.strip():
        raise MalformedRequestError(
            'The body is empty: send a JSON object of feature values or {"records": [...]}.'
        )
    try:
        return loads_json(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedRequestError(
            f"The body is not valid JSON ({exc}): send a JSON object of feature values "
            'or {"records": [...]} with Content-Type: application/json.'
        ) from exc


def _too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"The body is larger than {limit} bytes: send fewer records per request "
        "(or raise SERVING_MAX_BODY_BYTES)."
    )
