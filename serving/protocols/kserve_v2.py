"""Open Inference Protocol (KServe v2) REST: health, model metadata, readiness and infer.

Tabular requests come either as one input tensor per model column (shape ``[N]`` or
``[N, 1]``, as MLServer and Triton clients send them) or, when every column is numeric, as a
single ``[N, n_columns]`` tensor in signature order. Errors are ``{"error": "..."}``.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from pipeline.contracts import COLUMN_TYPES, NUMERIC_TYPES
from serving.deps import log_predictions
from serving.errors import InvalidRequestError
from serving.middleware.request_id import adopt_request_id
from serving.model.inference import ClassPrediction, Prediction
from serving.model.store import InputColumn, LoadedModel
from serving.protocols._common import (
    ProtocolError,
    ValueCoercionError,
    coerce_value,
    expected_columns,
    json_kind,
    protocol_route_class,
    read_body,
)
from serving.protocols.deps import OptionalPredictorDep, PredictorDep, Record

logger = logging.getLogger(__name__)

PREDICT = "predict"
PREDICT_PROBA = "predict_proba"

DATATYPES: dict[str, str] = {name: t.kserve for name, t in COLUMN_TYPES.items()}
"""The datatype of each signature column type's tensor."""
_FLOATS = frozenset({"FP64", "FP32", "FP16"})
_INTS = frozenset({"INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8"})
_ACCEPTED_BY_KIND: dict[str, frozenset[str]] = {
    "float": _FLOATS | _INTS,
    "integer": _INTS,
    "string": frozenset({"BYTES"}),
    "boolean": frozenset({"BOOL"}),
}
ACCEPTED: dict[str, frozenset[str]] = {
    name: _ACCEPTED_BY_KIND[t.kind] for name, t in COLUMN_TYPES.items()
}
"""The tensor datatypes a column of each signature type takes."""
ALL_DATATYPES = _FLOATS | _INTS | {"BYTES", "BOOL"}


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


def parse_infer_request(payload: Any, loaded: LoadedModel) -> tuple[list[Record], list[str]]:
    """Validate an inference request; return the records and the output names to send."""
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
    tensors = [_tensor(t, index) for index, t in enumerate(inputs)]
    outputs = _requested_outputs(payload.get("outputs"), loaded)
    names = {c.name for c in loaded.columns}
    if len(tensors) == 1 and tensors[0][0] not in names and len(tensors[0][1]) == 2:
        return _records_from_matrix(tensors[0], loaded.columns), outputs
    return _records_from_columns(tensors, loaded.columns), outputs


def infer_response(
    loaded: LoadedModel,
    predictions: Sequence[Prediction],
    outputs: Sequence[str],
    request_id: str | None,
) -> dict[str, Any]:
    """The response: ``predict`` (and ``predict_proba`` for classifiers that have it)."""
    tensors: list[dict[str, Any]] = []
    n = len(predictions)
    for name in outputs:
        if name == PREDICT:
            data = [p.label if isinstance(p, ClassPrediction) else p.value for p in predictions]
            tensors.append(
                {"name": PREDICT, "shape": [n], "datatype": predict_datatype(loaded), "data": data}
            )
        else:
            classes = [str(c) for c in loaded.classes or ()]
            flat = [
                p.probabilities[c]
                for p in predictions
                if isinstance(p, ClassPrediction) and p.probabilities is not None
                for c in classes
            ]
            tensors.append(
                {
                    "name": PREDICT_PROBA,
                    "shape": [n, len(classes)],
                    "datatype": "FP64",
                    "data": flat,
                    "parameters": {"classes": list(loaded.classes or ())},
                }
            )
    return {
        "model_name": loaded.name,
        "model_version": loaded.version,
        "id": request_id if request_id is not None else str(uuid.uuid4()),
        "outputs": tensors,
    }


Tensor = tuple[str, list[int], str, list[Any]]


def _tensor(raw: Any, index: int) -> Tensor:
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
    if datatype not in ALL_DATATYPES:
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
            400, f"input '{name}' is {datatype} but holds {json_kind(value)} ({value!r})."
        )


def _records_from_columns(
    tensors: Sequence[Tensor], columns: Sequence[InputColumn]
) -> list[Record]:
    seen = _column_tensors(tensors, columns)
    n_rows = _row_count(seen)
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


# --- routes ----------------------------------------------------------------------------


@router.get("/health/live", summary="KServe v2 liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready", summary="KServe v2 readiness: 200 once a model is loaded")
async def ready(predictor: OptionalPredictorDep) -> Response:
    status = 200 if predictor is not None else 503
    return JSONResponse({"ready": predictor is not None}, status_code=status)


@router.get("/models/{name}", summary="KServe v2 model metadata")
@router.get("/models/{name}/versions/{version}", summary="KServe v2 model metadata")
async def metadata(predictor: PredictorDep, name: str, version: str | None = None) -> Response:
    check_model(predictor.loaded, name, version)
    return JSONResponse(model_metadata(predictor.loaded))


@router.get("/models/{name}/ready", summary="KServe v2 model readiness")
@router.get("/models/{name}/versions/{version}/ready", summary="KServe v2 model readiness")
async def model_ready(predictor: PredictorDep, name: str, version: str | None = None) -> Response:
    check_model(predictor.loaded, name, version)
    return JSONResponse({"name": predictor.loaded.name, "ready": True})


@router.post("/models/{name}/infer", summary="KServe v2 inference")
@router.post("/models/{name}/versions/{version}/infer", summary="KServe v2 inference")
async def infer(
    request: Request, predictor: PredictorDep, name: str, version: str | None = None
) -> Response:
    loaded = predictor.loaded
    check_model(loaded, name, version)
    if "inference-header-content-length" in request.headers:
        raise InferError(
            400,
            "The binary tensor extension is not supported: send the request as JSON only.",
        )
    body = await read_body(request)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InferError(400, f"The body is not valid JSON ({exc}).") from exc
    records, outputs = parse_infer_request(payload, loaded)
    # The body's id names the request in the log too, unless an X-Request-ID header did.
    request_id = adopt_request_id(request, payload.get("id"))
    try:
        rows = await predictor.predict_rows(records)
    except InvalidRequestError as exc:
        raise InferError(400, exc.message) from exc
    except Exception as exc:
        logger.exception("Model %s v%s failed on v2 infer", loaded.name, loaded.version)
        raise InferError(
            500, "The model failed on this input; the error is logged on the server."
        ) from exc
    log_predictions(request, loaded, records, rows)
    given = payload.get("id")
    body_out = infer_response(
        loaded, predictor.typed(rows), outputs, given if given is not None else request_id
    )
    return JSONResponse(body_out, headers={"X-Model-Version": loaded.version})
