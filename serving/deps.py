"""FastAPI dependencies: settings, the active model and the size-limited JSON body."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Depends, Request

from serving.errors import MalformedRequestError, ModelNotReadyError, PayloadTooLargeError
from serving.settings import Settings
from serving.state import ActiveModel, ModelHolder


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_holder(request: Request) -> ModelHolder:
    holder: ModelHolder = request.app.state.models
    return holder


SettingsDep = Annotated[Settings, Depends(get_settings)]
HolderDep = Annotated[ModelHolder, Depends(get_holder)]


def get_active_model(holder: HolderDep) -> ActiveModel:
    """The model answering now; 503 with the reason (and how to fix it) when there is none."""
    if holder.active is None:
        raise ModelNotReadyError(holder.reason)
    return holder.active


ActiveModelDep = Annotated[ActiveModel, Depends(get_active_model)]


async def read_json_body(request: Request, settings: SettingsDep) -> Any:
    """Read at most ``max_body_bytes`` of the body and decode it as JSON."""
    limit = settings.max_body_bytes
    too_large = PayloadTooLargeError(
        f"The body is larger than {limit} bytes: send fewer records per request "
        "(or raise SERVING_MAX_BODY_BYTES)."
    )
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise MalformedRequestError("The Content-Length header is not a number.")
        if int(declared) > limit:
            raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise too_large
    if not body.strip():
        raise MalformedRequestError(
            'The body is empty: send a JSON object of feature values or {"records": [...]}.'
        )
    try:
        return json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise MalformedRequestError(
            f"The body is not valid JSON ({exc}): send a JSON object of feature values "
            'or {"records": [...]} with Content-Type: application/json.'
        ) from exc


JsonBody = Annotated[Any, Depends(read_json_body)]
