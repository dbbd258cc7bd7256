"""The REST routes. Thin: validation and inference live in :mod:`serving.inference`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from serving.deps import ActiveModelDep, HolderDep, JsonBody
from serving.inference import parse_request, predict
from serving.schemas import (
    ErrorPublic,
    InputColumnPublic,
    LivePublic,
    ModelPublic,
    NotReadyPublic,
    PredictManyPublic,
    PredictOnePublic,
    ReadyPublic,
)

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorPublic, "description": description}
    for status, description in {
        400: "The body is not valid JSON.",
        413: "The body is larger than SERVING_MAX_BODY_BYTES.",
        422: "The body does not match the model's input schema; details name each field.",
        503: "No model is loaded yet; the message says why and how to fix it.",
    }.items()
}

router = APIRouter()


@router.post(
    "/predict",
    response_model=PredictOnePublic | PredictManyPublic,
    responses=_ERRORS,
    summary="Predict one record, or a batch sent as {'records': [...]}",
)
async def predict_records(
    active: ActiveModelDep, payload: JsonBody, response: Response
) -> PredictOnePublic | PredictManyPublic:
    """Answer with the label (and probabilities) or the value, plus the model version."""
    records, is_batch = parse_request(active.requests, payload)
    predictions = await run_in_threadpool(predict, active.loaded, records)
    loaded = active.loaded
    response.headers["X-Model-Version"] = loaded.version
    if is_batch:
        return PredictManyPublic(
            model_name=loaded.name, model_version=loaded.version, predictions=predictions
        )
    return PredictOnePublic(
        model_name=loaded.name, model_version=loaded.version, prediction=predictions[0]
    )


@router.get("/health/live", response_model=LivePublic, summary="The process is up")
async def live() -> LivePublic:
    return LivePublic()


@router.get(
    "/health/ready",
    response_model=ReadyPublic,
    responses={503: {"model": NotReadyPublic, "description": "No model is loaded yet."}},
    summary="A model is loaded and answering",
)
async def ready(holder: HolderDep) -> ReadyPublic | JSONResponse:
    if holder.active is None:
        return JSONResponse(
            status_code=503, content=NotReadyPublic(reason=holder.reason).model_dump()
        )
    loaded = holder.active.loaded
    return ReadyPublic(model_name=loaded.name, model_version=loaded.version)


@router.get(
    "/model",
    response_model=ModelPublic,
    responses={503: _ERRORS[503]},
    summary="Which model answers: version, stage, run, inputs, classes, metrics",
)
async def model_info(active: ActiveModelDep, response: Response) -> ModelPublic:
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
    )
