"""Open Inference Protocol (KServe v2) REST: health, model metadata, readiness and infer.

Tabular requests come either as one input tensor per model column (shape ``[N]`` or
``[N, 1]``, as MLServer and Triton clients send them) or, when every column is numeric, as a
single ``[N, n_columns]`` tensor in signature order. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from collections.abc import Sequence
from functools import partial
from typing import Any

import numpy as np
import orjson
import pandas as pd
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from pipeline.contracts import COLUMN_TYPES, FLOAT_TYPES, NUMERIC_TYPES
from serving.deps import count_flags, is_json_media_type, predict_logged, shown_header
from serving.errors import InvalidRequestError
from serving.limits import LimitExceededError, RequestLimits, check_columns, check_rows
from serving.middleware.request_id import adopt_request_id
from serving.model.domain import RowWarnings, frame_warnings, record_warnings
from serving.model.inference import (
    FramePredictions,
    PredictionRow,
    all_values_fit,
    loads_json,
    numeric_frame,
    numeric_matrix,
)
from serving.model.store import InputColumn, LoadedModel, to_native
from serving.protocols._common import (
    ProtocolError,
    ValueCoercionError,
    coerce_value,
    expected_columns,
    json_kind,
    numeric_values_fit,
    protocol_route_class,
    read_body,
    rendered,
    shown,
)
from serving.protocols.deps import (
    OptionalPredictorDep,
    Predictor,
    PredictorDep,
    Record,
    current_predictor,
    get_predictor,
)

logger = logging.getLogger(__name__)

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"

DATATYPES: dict[str, str] = {name: t.kserve for name, t in COLUMN_TYPES.items()}
"""The datatype of each signature column type's tensor."""
_FLOATS = frozenset({"FP64", "FP32", "FP16"})
_INTS = frozenset({"INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"})
_ACCEPTED_BY_KIND: dict[str, frozenset[str]] = {
    "float": _FLOATS | _INTS,
    "integer": _INTS | _FLOATS,  # whole numbers only: 2007.0, not 2007.5
    "string": frozenset({"BYTES"}),
    "boolean": frozenset({"BOOL"}),
}
ACCEPTED: dict[str, frozenset[str]] = {
    name: _ACCEPTED_BY_KIND[t.kind] for name, t in COLUMN_TYPES.items()
}
"""The tensor datatypes a column of each signature type takes."""
ALL_DATATYPES = _FLOATS | _INTS | {"BYTES", "BOOL"}


DEFAULT_LIMITS = RequestLimits()


class InferError(ProtocolError):
    """A KServe v2 error: HTTP status and message (the code is unused in the body)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status, "v2", message)


def error_body(message: str) -> dict[str, str]:
    """The protocol's error body."""
    return {"error": message}


def _render(status: int, code: str, message: str) -> Response:
    return JSONResponse(status_code=status, content=error_body(message))


router = APIRouter(
    prefix="/v2", route_class=protocol_route_class(_render, "KServe v2"), tags=["kserve-v2"]
)


# --- pure functions (no HTTP) ----------------------------------------------------------


def check_model(loaded: LoadedModel, name: str, version: str | None = None) -> None:
    """Only the loaded model, at its loaded version, is served: anything else is a 404."""
    if name != loaded.name:
        raise InferError(
            404,
            f"Model '{name}' is not served here: this server serves '{loaded.name}' "
            f"(version {loaded.version}); call /v2/models/{loaded.name}.",
        )
    if version is not None and version != loaded.version:
        raise InferError(
            404,
            f"Version {version} of model '{name}' is not loaded: only version "
            f"{loaded.version} is served; call /v2/models/{name}/versions/{loaded.version} "
            f"or /v2/models/{name}.",
        )


def predict_datatype(loaded: LoadedModel) -> str:
    """The datatype of the ``predict`` output: labels' type for classifiers, FP64 for values."""
    if loaded.task == "regression":
        return "FP64"
    labels = loaded.classes or ()
    if labels and all(isinstance(c, bool) for c in labels):
        return "BOOL"
    if labels and all(isinstance(c, int) and not isinstance(c, bool) for c in labels):
        return "INT64"
    if labels and all(isinstance(c, int | float) and not isinstance(c, bool) for c in labels):
        return "FP64"
    return "BYTES"


def output_names(loaded: LoadedModel) -> list[str]:
    return [PREDICT, PREDICT_PROBA] if loaded.has_proba else [PREDICT]


def model_metadata(loaded: LoadedModel) -> dict[str, Any]:
    """``GET /v2/models/{name}``: name, versions, platform, inputs and outputs."""
    outputs: list[dict[str, Any]] = [
        {"name": PREDICT, "datatype": predict_datatype(loaded), "shape": [-1]}
    ]
    if loaded.has_proba:
        outputs.append(
            {"name": PREDICT_PROBA, "datatype": "FP64", "shape": [-1, len(loaded.classes or ())]}
        )
    return {
        "name": loaded.name,
        "versions": [loaded.version],
        "platform": "sklearn",
        "inputs": [
            {
                "name": c.name,
                "datatype": DATATYPES[c.type],
                "shape": [-1],
                "parameters": {"required": c.required},
            }
            for c in loaded.columns
        ],
        "outputs": outputs,
        "parameters": {"classes": list(loaded.classes) if loaded.classes is not None else None},
    }


def parse_infer_request(
    payload: Any,
    loaded: LoadedModel,
    limits: RequestLimits = DEFAULT_LIMITS,
    bulk_rows: int | None = None,
) -> tuple[list[Record] | pd.DataFrame, list[str]]:
    """Validate an inference request; return the records and the output names to send.

    With ``bulk_rows``, one tensor per column holding at least that many rows, for a model
    whose inputs are all numeric, comes back as the model's frame instead, checked
    column-wise by the same rules (anything those checks do not accept goes the record way,
    which names the problem).

    Raises:
        InferError: a 400 naming the tensor and what is wrong with it; a 413 for more
            tensors than ``limits.max_columns`` or rows than ``limits.max_rows``.
    """
    if not isinstance(payload, dict):
        raise InferError(
            400,
            f"The body must be a JSON object with 'inputs', got {json_kind(payload)}. "
            f'Send {{"inputs": [{{"name", "shape", "datatype", "data"}}, ...]}}.',
        )
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InferError(400, f"'id' must be a string, got {json_kind(request_id)}.")
    parameters = payload.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InferError(400, f"'parameters' must be an object, got {json_kind(parameters)}.")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InferError(
            400,
            "'inputs' must be a non-empty list of tensors, each "
            '{"name", "shape", "datatype", "data"}; '
            f"the model's inputs are {expected_columns(loaded.columns)}.",
        )
    record_rows = limits.max_rows if bulk_rows is None else min(limits.max_rows, bulk_rows - 1)
    fast = _float_records(inputs, loaded.columns, record_rows)
    if fast is not None:
        return fast, _requested_outputs(payload.get("outputs"), loaded)
    try:
        check_columns(len(inputs), limits)
        tensors = [_tensor(t, index, limits) for index, t in enumerate(inputs)]
    except LimitExceededError as exc:
        raise InferError(413, exc.message) from exc
    outputs = _requested_outputs(payload.get("outputs"), loaded)
    names = {c.name for c in loaded.columns}
    if len(tensors) == 1 and tensors[0][0] not in names and len(tensors[0][1]) == 2:
        return _records_from_matrix(tensors[0], loaded.columns), outputs
    seen = _column_tensors(tensors, loaded.columns)
    n_rows = _row_count(seen)
    if bulk_rows is not None and n_rows >= bulk_rows:
        frame = _numeric_frame(seen, loaded.columns, n_rows)
        if frame is not None:
            return frame, outputs
    return _records_from_columns(seen, n_rows, loaded.columns), outputs


_FLOAT_TENSORS = _FLOATS | _INTS


def _float_records(
    inputs: list[Any], columns: Sequence[InputColumn], max_rows: int
) -> list[Record] | None:
    """The records of well-formed flat numeric column tensors for a model whose inputs are
    all double or float, checked at once (numbers, finite, no null in a required input),
    as the record way would accept them; None for anything else, which the record way then
    checks value by value and names, and for more than ``max_rows`` rows (bulk requests,
    predicted as one frame). The common single-row request costs a few dict lookups
    and one array, not a coercion per value."""
    by_name = {column.name: column for column in columns}
    if len(inputs) > len(by_name) or not all(c.type in FLOAT_TYPES for c in columns):
        return None
    sent: dict[str, list[Any]] = {}
    try:
        for tensor in inputs:
            name, data, shape = tensor["name"], tensor["data"], tensor["shape"]
            if name not in by_name or name in sent or tensor["datatype"] not in _FLOAT_TENSORS:
                return None
            if type(data) is not list or (shape != [len(data)] and shape != [len(data), 1]):
                return None
            sent[name] = data
    except (TypeError, KeyError):  # not an object, a key missing, a name that is not text
        return None
    rows = {len(data) for data in sent.values()}
    if len(rows) != 1 or not 0 < rows.pop() <= max_rows:
        return None
    present = [column for column in columns if column.name in sent]
    if any(c.required for c in columns if c.name not in sent):
        return None
    found = numeric_matrix([sent[column.name] for column in present])
    if found is None or not all_values_fit(present, found[0].T, _transposed(found[1])):
        return None
    matrix = found[0].T.astype(np.float64)
    names = [column.name for column in present]
    absent = {column.name: None for column in columns if column.name not in sent}
    return [
        {**dict(zip(names, (None if v != v else v for v in row), strict=True)), **absent}
        for row in matrix.tolist()
    ]


def _transposed(nulls: np.ndarray | None) -> np.ndarray | None:
    return None if nulls is None else nulls.T


def _numeric_frame(
    seen: dict[str, Tensor], columns: Sequence[InputColumn], n_rows: int
) -> pd.DataFrame | None:
    """The model's frame from numeric column tensors, or None for the record way."""
    if not all(column.type in NUMERIC_TYPES for column in columns):
        return None
    arrays: list[np.ndarray | None] = []
    for column in columns:
        sent = seen.get(column.name)
        if sent is None:
            arrays.append(None)
            continue
        found = numeric_matrix([sent[3]])
        if found is None or not numeric_values_fit(column, found[0][0]):
            return None  # a string, a boolean, a null where one is not allowed ...
        arrays.append(found[0][0])
    return numeric_frame(columns, arrays, n_rows)


Answers = tuple[list[Any], list[float]]
"""One request's answers as the tensors hold them: the labels (or values), and the class
probabilities flattened row by row (empty without them)."""


def row_answers(loaded: LoadedModel, rows: Sequence[PredictionRow]) -> Answers:
    """The answers of the plain rows the batcher returns."""
    if loaded.task == "regression":
        return [row["value"] for row in rows], []
    classes = [str(c) for c in loaded.classes or ()]
    flat = [
        row["probabilities"][c] for row in rows if row["probabilities"] is not None for c in classes
    ]
    return [row["label"] for row in rows], flat


def frame_answers(predictions: FramePredictions) -> Answers:
    """The answers of one frame's model call, straight from its arrays: no object per row."""
    labels = predictions.outputs.tolist()
    if predictions.outputs.dtype == object:
        labels = [to_native(label) for label in labels]
    probabilities = predictions.probabilities
    return labels, [] if probabilities is None else probabilities.ravel().tolist()


def infer_response(
    loaded: LoadedModel,
    answers: Answers,
    outputs: Sequence[str],
    request_id: str | None,
    flags: RowWarnings | None = None,
) -> dict[str, Any]:
    """The response: ``predict`` (and ``predict_proba`` for classifiers that have it), and
    ``parameters.warnings`` (one entry per flagged row) for values outside the training
    domain."""
    tensors: list[dict[str, Any]] = []
    labels, flat = answers
    n = len(labels)
    for name in outputs:
        if name == PREDICT:
            tensors.append(
                {
                    "name": PREDICT,
                    "shape": [n],
                    "datatype": predict_datatype(loaded),
                    "data": labels,
                }
            )
        else:
            classes = [str(c) for c in loaded.classes or ()]
            tensors.append(
                {
                    "name": PREDICT_PROBA,
                    "shape": [n, len(classes)],
                    "datatype": "FP64",
                    "data": flat,
                    "parameters": {"classes": list(loaded.classes or ())},
                }
            )
    response: dict[str, Any] = {
        "model_name": loaded.name,
        "model_version": loaded.version,
        "id": request_id if request_id is not None else str(uuid.uuid4()),
        "outputs": tensors,
    }
    if flags:
        response["parameters"] = {
            "warnings": [{"row": row, "messages": flags[row]} for row in sorted(flags)]
        }
    return response


Tensor = tuple[str, list[int], str, list[Any]]


def _tensor(raw: Any, index: int, limits: RequestLimits) -> Tensor:
    where = f"inputs[{index}]"
    if not isinstance(raw, dict):
        raise InferError(400, f"{where} must be an object, got {json_kind(raw)}.")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InferError(400, f"{where} has no 'name': name it after the model input it holds.")
    where = f"input '{name}'"
    missing = [key for key in ("shape", "datatype", "data") if key not in raw]
    if missing:
        raise InferError(400, f"{where} has no {', '.join(map(repr, missing))}: add it.")
    shape, datatype, data = raw["shape"], raw["datatype"], raw["data"]
    if (
        not isinstance(shape, list)
        or not shape
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise InferError(
            400, f"{where} has shape {shape!r}: send a list of non-negative integers like [3]."
        )
    check_rows(shape[0], limits)  # before its data is flattened
    if not isinstance(datatype, str) or datatype not in ALL_DATATYPES:
        raise InferError(
            400,
            f"{where} has unknown datatype {datatype!r}: use one of "
            f"{', '.join(sorted(ALL_DATATYPES))}.",
        )
    flat = _flatten(data) if isinstance(data, list) else [data]
    if len(flat) != math.prod(shape):
        raise InferError(
            400,
            f"{where} has {len(flat)} values but shape {shape} holds {math.prod(shape)}: make "
            "'data' match 'shape'.",
        )
    return name, shape, datatype, flat


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    for item in data:
        if isinstance(item, list):
            flat.extend(_flatten(item))
        else:
            flat.append(item)
    return flat


def _check_value(name: str, datatype: str, value: Any) -> None:
    if datatype == "BYTES":
        ok = isinstance(value, str)
    elif datatype == "BOOL":
        ok = isinstance(value, bool)
    elif datatype in _INTS:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok and value is not None:
        raise InferError(
            400, f"input '{name}' is {datatype} but holds {json_kind(value)} ({shown(value)})."
        )


def _records_from_columns(
    seen: dict[str, Tensor], n_rows: int, columns: Sequence[InputColumn]
) -> list[Record]:
    values: dict[str, list[Any]] = {}
    for column in columns:
        sent = seen.get(column.name)
        if sent is None:
            values[column.name] = [None] * n_rows
            continue
        values[column.name] = [_value(column, sent[2], v) for v in sent[3]]
    return [{name: values[name][row] for name in values} for row in range(n_rows)]


def _column_tensors(tensors: Sequence[Tensor], columns: Sequence[InputColumn]) -> dict[str, Tensor]:
    """Each tensor by the column it holds, checked against it; every required one present."""
    by_name = {c.name: c for c in columns}
    seen: dict[str, Tensor] = {}
    for tensor in tensors:
        name = tensor[0]
        column = by_name.get(name)
        if column is None:
            raise InferError(
                400,
                f"input '{name}' is not an input of this model: send one tensor per column, "
                f"named {expected_columns(columns)}"
                + (
                    ", or one [N, n_columns] tensor when all are numeric."
                    if all(c.type in NUMERIC_TYPES for c in columns)
                    else "."
                ),
            )
        if name in seen:
            raise InferError(400, f"input '{name}' is sent twice: send each column once.")
        _check_column_tensor(tensor, column)
        seen[name] = tensor
    missing = [c.name for c in columns if c.required and c.name not in seen]
    if missing:
        raise InferError(
            400,
            f"Missing required input(s) {', '.join(map(repr, missing))}: send one tensor per "
            f"column; the model expects {expected_columns(columns)}.",
        )
    return seen


def _check_column_tensor(tensor: Tensor, column: InputColumn) -> None:
    name, shape, datatype, _ = tensor
    if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
        raise InferError(
            400, f"input '{name}' has shape {shape}: a column tensor has shape [N] or [N, 1]."
        )
    if datatype not in ACCEPTED[column.type]:
        raise InferError(
            400,
            f"input '{name}' has datatype {datatype}, but the column is {column.type}: "
            f"send it as {DATATYPES[column.type]}.",
        )


def _row_count(seen: dict[str, Tensor]) -> int:
    """The one number of rows every column tensor holds (at least one)."""
    rows = {shape[0] for _, shape, _, _ in seen.values()}
    if len(rows) != 1:
        raise InferError(
            400,
            "The input tensors have different numbers of rows "
            f"({', '.join(f'{n}: {s[0]}' for n, s, _, _ in seen.values())}): send the same N "
            "for every column.",
        )
    n_rows = rows.pop()
    if n_rows == 0:
        raise InferError(400, "The inputs have no rows: send at least one.")
    return n_rows


def _records_from_matrix(tensor: Tensor, columns: Sequence[InputColumn]) -> list[Record]:
    name, shape, datatype, flat = tensor
    if not all(c.type in NUMERIC_TYPES for c in columns):
        raise InferError(
            400,
            f"input '{name}' is a matrix, but this model has non-numeric columns: send one "
            f"tensor per column, named {expected_columns(columns)}.",
        )
    if shape[1] != len(columns):
        raise InferError(
            400,
            f"input '{name}' has shape {shape}, but the model has {len(columns)} columns: send "
            f"shape [N, {len(columns)}] in the order {', '.join(c.name for c in columns)}.",
        )
    if datatype not in _FLOATS | _INTS:
        raise InferError(400, f"input '{name}' has datatype {datatype}: send FP64.")
    if shape[0] == 0:
        raise InferError(400, f"input '{name}' has no rows: send at least one.")
    width = len(columns)
    return [
        {c.name: _value(c, datatype, flat[row * width + i], name) for i, c in enumerate(columns)}
        for row in range(shape[0])
    ]


def _value(column: InputColumn, datatype: str, value: Any, tensor: str | None = None) -> Any:
    label = f"input '{tensor or column.name}'"
    _check_value(tensor or column.name, datatype, value)
    if isinstance(value, float) and math.isnan(value):
        value = None
    if value is None and not column.required:
        return None
    if value is None:
        raise InferError(
            400, f"{label} holds null for required column '{column.name}': send a value."
        )
    try:
        return coerce_value(column, value)
    except ValueCoercionError as exc:
        raise InferError(400, f"{label}, column '{column.name}': {exc}.") from exc


def _requested_outputs(raw: Any, loaded: LoadedModel) -> list[str]:
    available = output_names(loaded)
    if raw is None:
        return available
    if not isinstance(raw, list) or not all(
        isinstance(o, dict) and isinstance(o.get("name"), str) for o in raw
    ):
        raise InferError(
            400,
            "'outputs' must be a list of objects with a 'name', e.g. [{\"name\": \"predict\"}].",
        )
    names = [o["name"] for o in raw]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise InferError(
            400,
            f"Unknown output(s) {', '.join(map(repr, unknown))}: this model has "
            f"{', '.join(map(repr, available))}.",
        )
    return list(dict.fromkeys(names)) or available


def _parse_body(
    body: bytes, loaded: LoadedModel, limits: RequestLimits, bulk_rows: int
) -> tuple[dict[str, Any], tuple[list[Record] | pd.DataFrame, list[str]]]:
    try:
        payload = loads_json(body)
    except (ValueError, RecursionError) as exc:
        raise InferError(400, f"The body is not valid JSON ({exc}).") from exc
    return payload, parse_infer_request(payload, loaded, limits, bulk_rows)


# --- routes ----------------------------------------------------------------------------


Responses = dict[int | str, dict[str, Any]]


def _errors(*statuses: int) -> Responses:
    return {status: {"model": ErrorPublic, "description": _STATUS[status]} for status in statuses}


class ErrorPublic(BaseModel):
    error: str = Field(description="What is wrong and how to fix it.")


_STATUS = {
    400: "The request does not fit the protocol or the model's inputs; the message says how.",
    404: "No such model, or not at this version: only the loaded version is served.",
    413: "The body, its rows or its tensors are over the server's limits.",
    415: "The Content-Type is not application/json.",
    500: "The model failed on this input; the error is logged on the server.",
    503: "No model is loaded yet.",
    504: "The request took longer than SERVING_REQUEST_TIMEOUT_SECONDS.",
}
_TENSOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1},
        "datatype": {"type": "string", "enum": sorted(ALL_DATATYPES)},
        "data": {"type": "array"},
        "parameters": {"type": "object"},
    },
    "required": ["name", "shape", "datatype", "data"],
}
INFER_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "title": "InferenceRequest",
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "parameters": {"type": "object"},
                    "inputs": {"type": "array", "minItems": 1, "items": _TENSOR_SCHEMA},
                    "outputs": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {"name": {"type": "string"}},
                            "required": ["name"],
                        },
                    },
                },
                "required": ["inputs"],
            }
        }
    },
}
"""The body of v2 infer, for OpenAPI (the route checks it in :func:`parse_infer_request`)."""
_LIVE: Responses = {200: {"description": "The process is up.", "content": {"application/json": {}}}}
_READY: Responses = {
    200: {"description": "A model is loaded.", "content": {"application/json": {}}},
    503: {"description": "No model is loaded yet.", "content": {"application/json": {}}},
}
_MODEL: Responses = {
    200: {"description": "The model answers.", "content": {"application/json": {}}}
}


@router.get("/health/live", summary="KServe v2 liveness", responses=_LIVE)
async def live() -> Response:
    return JSONResponse({"live": True})


@router.get(
    "/health/ready", summary="KServe v2 readiness: 200 once a model is loaded", responses=_READY
)
async def ready(predictor: OptionalPredictorDep) -> Response:
    status = 200 if predictor is not None else 503
    return JSONResponse({"ready": predictor is not None}, status_code=status)


@router.get(
    "/models/{name}", summary="KServe v2 model metadata", responses={**_MODEL, **_errors(404, 503)}
)
async def metadata(predictor: PredictorDep, name: str) -> Response:
    check_model(predictor.loaded, name)
    return JSONResponse(model_metadata(predictor.loaded))


@router.get(
    "/models/{name}/versions/{version}",
    summary="KServe v2 model metadata, at a version",
    responses={**_MODEL, **_errors(404, 503)},
)
async def version_metadata(predictor: PredictorDep, name: str, version: str) -> Response:
    check_model(predictor.loaded, name, version)
    return JSONResponse(model_metadata(predictor.loaded))


@router.get(
    "/models/{name}/ready",
    summary="KServe v2 model readiness",
    responses={**_MODEL, **_errors(404, 503)},
)
async def model_ready(predictor: PredictorDep, name: str) -> Response:
    check_model(predictor.loaded, name)
    return JSONResponse({"name": predictor.loaded.name, "ready": True})


@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="KServe v2 model readiness, at a version",
    responses={**_MODEL, **_errors(404, 503)},
)
async def version_ready(predictor: PredictorDep, name: str, version: str) -> Response:
    check_model(predictor.loaded, name, version)
    return JSONResponse({"name": predictor.loaded.name, "ready": True})


_INFER_RESPONSES = {
    200: {
        "description": "The outputs: predict (and predict_proba).",
        "content": {"application/json": {}},
    },
    **_errors(400, 404, 413, 415, 500, 503, 504),
}


@router.post(
    "/models/{name}/infer",
    summary="KServe v2 inference",
    responses=_INFER_RESPONSES,
    openapi_extra={"requestBody": INFER_REQUEST_BODY},
)
async def infer(request: Request, name: str) -> Response:
    # No FastAPI dependency on the hot path: the predictor is looked up directly.
    return await _infer(request, get_predictor(request, current_predictor(request)), name, None)


@router.post(
    "/models/{name}/versions/{version}/infer",
    summary="KServe v2 inference, at a version",
    responses=_INFER_RESPONSES,
    openapi_extra={"requestBody": INFER_REQUEST_BODY},
)
async def version_infer(request: Request, name: str, version: str) -> Response:
    predictor = get_predictor(request, current_predictor(request))
    return await _infer(request, predictor, name, version)


async def _plain_infer(request: Request) -> Response:
    return await infer(request, request.path_params["name"])


plain_infer = rendered(_plain_infer, _render, "KServe v2")
"""``infer`` for a plain Starlette route (``serving.app`` puts one ahead of the documented
route): the same answers and errors, without FastAPI's per-request parameter handling."""
PLAIN_INFER_PATH = "/v2/models/{name}/infer"


async def _predict(
    request: Request, predictor: Predictor, inputs: list[Record] | pd.DataFrame, *, pinned: bool
) -> tuple[LoadedModel, Answers, RowWarnings]:
    """Predict records through the batcher, or a bulk frame in one model call, with the
    champion or the challenger beside it (never when the request is ``pinned`` to the
    champion's version); logged. Returns the version that answered."""
    loaded = predictor.loaded
    answer = await predict_logged(
        request, predictor.active, inputs, proba=loaded.has_proba, canary=not pinned
    )
    if isinstance(inputs, pd.DataFrame):
        flags = count_flags(request, frame_warnings(loaded.domain, inputs))
        return answer.loaded, frame_answers(answer.outputs), flags
    flags = count_flags(request, record_warnings(loaded.domain, inputs))
    return answer.loaded, row_answers(answer.loaded, answer.outputs), flags


async def _infer(
    request: Request, predictor: Predictor, name: str, version: str | None
) -> Response:
    loaded = predictor.loaded
    check_model(loaded, name, version)
    if "inference-header-content-length" in request.headers:
        raise InferError(
            400,
            "The binary tensor extension is not supported: send the request as JSON only.",
        )
    if not is_json_media_type(request.headers.get("content-type")):
        raise InferError(
            415,
            f"Unsupported Content-Type {shown_header(request.headers.get('content-type'))}: "
            "send the request as JSON with 'Content-Type: application/json'.",
        )
    body = await read_body(request)
    limits: RequestLimits = request.app.state.settings.request_limits
    parse = partial(_parse_body, body, loaded, limits, predictor.active.bulk_rows)
    # A large body could hold the event loop (and /health/live) while it is parsed.
    parsed = await asyncio.to_thread(parse) if len(body) > limits.offload_bytes else parse()
    payload, (records, outputs) = parsed
    # The body's id names the request in the log too, unless an X-Request-ID header did.
    request_id = adopt_request_id(request, payload.get("id"))
    try:
        answered_by, answers, flags = await _predict(
            request, predictor, records, pinned=version is not None
        )
    except InvalidRequestError as exc:
        raise InferError(400, exc.message) from exc
    except Exception as exc:
        logger.exception("Model %s v%s failed on v2 infer", loaded.name, loaded.version)
        raise InferError(
            500, "The model failed on this input; the error is logged on the server."
        ) from exc
    given = payload.get("id")
    body_out = infer_response(
        answered_by, answers, outputs, given if given is not None else request_id, flags
    )
    return Response(
        orjson.dumps(body_out),
        media_type="application/json",
        headers={"X-Model-Version": answered_by.version},
    )
