"""The REST routes. Thin: validation and inference live in :mod:`serving.model.inference`, batching
in :mod:`serving.model.batcher`, labels in :mod:`serving.feedback`; every prediction goes through
:meth:`ActiveModel.predict` (or ``predict_frame``) and into the prediction log."""

from __future__ import annotations

import asyncio
import json
import math
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson
import pandas as pd
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from serving.deps import (
    ActiveModelDep,
    HolderDep,
    count_flags,
    decode_json,
    get_prediction_log,
    predict_logged,
    read_json_body,
    require_active,
)
from serving.errors import ErrorDetail, InvalidRequestError, PredictionLogUnavailableError
from serving.feedback import parse_feedback
from serving.limits import RequestLimits
from serving.live.traffic import LiveTraffic
from serving.middleware.metrics import CONTENT_TYPE, ServingMetrics
from serving.model.domain import frame_warnings, record_warnings, with_warnings
from serving.model.inference import (
    PredictionRow,
    Record,
    parse_numeric_batch,
    parse_request,
    prediction_rows,
)
from serving.model.state import ActiveModel, ModelHolder
from serving.model.store import LoadedModel
from serving.schemas import (
    FEEDBACK_REQUEST_BODY,
    ChallengerPublic,
    DegradedPublic,
    ErrorPublic,
    FeedbackPublic,
    InputColumnPublic,
    LivePublic,
    ModelPublic,
    NotReadyPublic,
    PredictManyPublic,
    PredictOnePublic,
    ReadyPublic,
    ReloadErrorPublic,
    RollbackPublic,
)
from serving.settings import Settings

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorPublic, "description": description}
    for status, description in {
        400: "The body is not valid JSON.",
        413: "The body is larger than SERVING_MAX_BODY_BYTES, or holds more rows than "
        "SERVING_MAX_ROWS.",
        415: "The Content-Type is not application/json.",
        422: "The body does not match the model's input schema; details name each field.",
        500: "The model failed on this request; the error is logged on the server.",
        503: "No model is loaded yet; the message says why and how to fix it.",
        504: "The request took longer than SERVING_REQUEST_TIMEOUT_SECONDS.",
    }.items()
}
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

router = APIRouter()


@router.post(
    "/predict",
    response_model=PredictOnePublic | PredictManyPublic,
    responses=_ERRORS,
    summary="Predict one record, or a batch sent as {'records': [...]}",
)
async def predict_records(request: Request) -> Response:
    """Answer with the label (and probabilities) or the value, plus the model version."""
    # No FastAPI dependencies and no response_model validation here: this is the hot path.
    settings: Settings = request.app.state.settings
    active = require_active(request.app.state.models)
    body = await read_json_body(request, settings.max_body_bytes)
    limits = settings.request_limits
    parse = partial(_parse_predict, active, body, limits)
    # A large body could hold the event loop (and /health/live) while it is parsed.
    parsed = await asyncio.to_thread(parse) if len(body) > limits.offload_bytes else parse()
    if isinstance(parsed, pd.DataFrame):  # a bulk batch: checked column-wise, one frame
        answer = await predict_logged(request, active, parsed)
        flags = count_flags(request, frame_warnings(active.loaded.domain, parsed))
        rows = with_warnings(prediction_rows(answer.loaded, answer.outputs), flags)
        return prediction_response(answer.loaded, rows, True)
    records, is_batch = parsed
    answer = await predict_logged(request, active, records)
    flags = count_flags(request, record_warnings(active.loaded.domain, records))
    return prediction_response(answer.loaded, with_warnings(answer.outputs, flags), is_batch)


def _parse_predict(
    active: ActiveModel, body: bytes, limits: RequestLimits
) -> pd.DataFrame | tuple[list[Record], bool]:
    """A /predict body as a checked frame (bulk numeric batches) or as records."""
    payload = decode_json(body)
    frame = parse_numeric_batch(active.requests, payload, active.bulk_rows, limits)
    if frame is not None:
        return frame
    return parse_request(active.requests, payload, limits)


def prediction_response(loaded: LoadedModel, rows: list[PredictionRow], is_batch: bool) -> Response:
    """The /predict JSON (PredictOnePublic or PredictManyPublic), encoded once."""
    body: dict[str, Any] = {"model_name": loaded.name, "model_version": loaded.version}
    if is_batch:
        body["predictions"] = rows
    else:
        body["prediction"] = rows[0]
    try:
        content = orjson.dumps(body)  # NaN or infinity from the model: null, as pydantic writes it
    except orjson.JSONEncodeError:  # e.g. an integer label beyond 64 bits
        content = _JSON.encode(_finite(body)).encode()
    return Response(
        content=content,
        media_type="application/json",
        headers={"X-Model-Version": loaded.version},
    )


@router.post(
    "/feedback",
    status_code=202,
    response_model=FeedbackPublic,
    responses={
        **{status: _ERRORS[status] for status in (400, 413, 415, 422, 500)},
        503: {
            "model": ErrorPublic,
            "description": "No model is loaded yet, the prediction log is off, or its queue "
            "is full (retry later).",
        },
    },
    openapi_extra={"requestBody": FEEDBACK_REQUEST_BODY},
    summary="True labels of logged predictions, by request id and row",
)
async def feedback(request: Request) -> FeedbackPublic:
    """Queue labels for the prediction log: ``{"request_id", "row", "label"}``, or
    ``{"labels": [...]}``; ``request_id`` is the ``X-Request-ID`` of the prediction's answer."""
    settings: Settings = request.app.state.settings
    log = get_prediction_log(request)
    if log is None:
        raise PredictionLogUnavailableError(
            "The prediction log is off on this server, so labels cannot be recorded: start it "
            "with SERVING_PREDICTION_LOG_ENABLED=true, or send the labels as a file with "
            "`python -m pipeline feedback --file`."
        )
    active = require_active(request.app.state.models)
    payload = decode_json(await read_json_body(request, settings.max_body_bytes))
    labels = parse_feedback(payload, active.loaded, settings.request_limits)
    if len(labels) > log.queue_size:
        raise InvalidRequestError(
            f"{len(labels)} labels in one request are more than the prediction log queue holds "
            f"({log.queue_size}): send them in smaller requests.",
            [ErrorDetail(field="labels", message=f"at most {log.queue_size} labels per request")],
        )
    if not log.log_feedback(active.loaded.name, active.loaded.task, labels):
        raise PredictionLogUnavailableError(
            f"The prediction log queue is full ({log.queue_size} records): the labels were "
            "not recorded. Retry in a few seconds."
        )
    return FeedbackPublic(accepted=len(labels), model_name=active.loaded.name)


@router.get("/health/live", response_model=LivePublic, summary="The process is up")
async def live() -> LivePublic:
    return LivePublic()


@router.get(
    "/health/ready",
    response_model=ReadyPublic | DegradedPublic,
    responses={
        200: {
            "description": "A model answers: 'ready', or 'degraded' while the registry cannot "
            "be asked or the version it designates fails to load (the reason and since when)."
        },
        503: {"model": NotReadyPublic, "description": "No model is loaded yet."},
    },
    summary="A model is loaded and answering (degraded: the registry or a new version fails)",
)
async def ready(request: Request, holder: HolderDep) -> ReadyPublic | DegradedPublic | JSONResponse:
    if holder.active is None:
        return JSONResponse(
            status_code=503, content=NotReadyPublic(reason=holder.reason).model_dump()
        )
    loaded = holder.active.loaded
    error = _reload_error(holder)
    warnings = _challenger_warnings(request.app.state.traffic)
    if error is None:
        return ReadyPublic(model_name=loaded.name, model_version=loaded.version, warnings=warnings)
    return DegradedPublic(
        model_name=loaded.name,
        model_version=loaded.version,
        reason=error.message,
        since=error.since,
        last_reload_error=error,
        warnings=warnings,
    )


def _challenger_warnings(traffic: LiveTraffic) -> list[str]:
    """A rolled back, refused or failing challenger: said on /health/ready, still 200."""
    holder = traffic.holder
    if holder is None or holder.state not in ("rolled_back", "refused", "failed"):
        return []
    return [holder.reason]


@router.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics (text exposition format)",
    responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus metrics."}},
)
async def metrics(request: Request) -> Response:
    registry: ServingMetrics = request.app.state.metrics
    traffic: LiveTraffic = request.app.state.traffic
    traffic.report_challenger()
    return Response(content=registry.render(), media_type=CONTENT_TYPE)


@router.get(
    "/model",
    response_model=ModelPublic,
    responses={503: _ERRORS[503]},
    summary="Which model answers: version, stage, run, inputs, classes, metrics",
)
async def model_info(request: Request, active: ActiveModelDep, response: Response) -> ModelPublic:
    loaded = active.loaded
    response.headers["X-Model-Version"] = loaded.version
    return ModelPublic(
        name=loaded.name,
        version=loaded.version,
        stage=loaded.stage,
        aliases=list(loaded.aliases),
        reference=loaded.reference,
        run_id=loaded.run_id,
        task=loaded.task,
        inputs=[
            InputColumnPublic(name=c.name, type=c.type, required=c.required) for c in loaded.columns
        ],
        classes=None if loaded.classes is None else list(loaded.classes),
        has_probabilities=loaded.has_proba,
        metrics=dict(loaded.metrics),
        challenger=_challenger(request.app.state.traffic, request.app.state.metrics),
    )


def _challenger(traffic: LiveTraffic, metrics: ServingMetrics) -> ChallengerPublic | None:
    holder = traffic.holder
    if holder is None:
        return None
    state = holder.state
    active = holder.active
    rollback = holder.rollback
    return ChallengerPublic(
        mode=traffic.mode,
        canary_percent=traffic.options.canary_percent,
        state=state,
        version=holder.version,
        run_id=active.loaded.run_id if active is not None else None,
        reason=None if state == "active" else holder.reason,
        rollback=None
        if rollback is None
        else RollbackPublic(
            version=rollback.version,
            at=datetime.fromtimestamp(rollback.at, tz=UTC),
            reason=rollback.reason,
            recorded=rollback.recorded,
        ),
        agreement_rate=metrics.agreement_rate,
        shadow_dropped=traffic.shadow_dropped,
    )


def _reload_error(holder: ModelHolder) -> ReloadErrorPublic | None:
    error = holder.last_reload_error
    if error is None:
        return None
    return ReloadErrorPublic(
        version=error.version,
        type=error.error_type,
        message=error.message,
        since=datetime.fromtimestamp(error.since, tz=UTC),
        at=datetime.fromtimestamp(error.at, tz=UTC),
    )


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
