"""MLflow's scoring protocol: ``POST /invocations``, ``GET /ping``, ``/health``, ``/version``.

Matches ``mlflow models serve`` (MLflow 3.17, ``mlflow/pyfunc/scoring_server``) for an sklearn
model: JSON bodies with exactly one of ``dataframe_split``, ``dataframe_records``,
``instances`` or ``inputs`` (``params`` accepted and ignored, other keys ignored), CSV and
Parquet bodies; answers ``{"predictions": [...]}`` holding what ``model.predict`` returns;
errors are ``{"error_code": ..., "message": ...}``. Deliberate differences: a missing or
unsupported Content-Type is a 415 with that JSON body (MLflow: 500, or 415 in plain text);
a failure inside the model is a 500 without a stack trace (MLflow: 400 with one); an omitted
optional column is imputed (MLflow: 400 from the model); no error message echoes the data.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from mlflow.version import VERSION as MLFLOW_VERSION

from serving.inference import ClassPrediction, Prediction
from serving.model_store import InputColumn
from serving.protocols._common import (
    ProtocolError,
    ValueCoercionError,
    coerce_value,
    expected_columns,
    is_missing,
    json_kind,
    protocol_route_class,
    read_body,
)
from serving.protocols.deps import OptionalPredictorDep, PredictorDep, Record

logger = logging.getLogger(__name__)

BAD_REQUEST = "BAD_REQUEST"
INVALID_PARAMETER_VALUE = "INVALID_PARAMETER_VALUE"
INTERNAL_ERROR = "INTERNAL_ERROR"
TEMPORARILY_UNAVAILABLE = "TEMPORARILY_UNAVAILABLE"
REQUEST_LIMIT_EXCEEDED = "REQUEST_LIMIT_EXCEEDED"

CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPE_CSV = "text/csv"
CONTENT_TYPE_PARQUET = "application/vnd.apache.parquet"
CONTENT_TYPES = (CONTENT_TYPE_JSON, CONTENT_TYPE_CSV, CONTENT_TYPE_PARQUET)

DF_SPLIT = "dataframe_split"
DF_RECORDS = "dataframe_records"
INSTANCES = "instances"
INPUTS = "inputs"
FORMATS = (DF_SPLIT, DF_RECORDS, INSTANCES, INPUTS)
PARAMS = "params"

_FORMAT_HELP = (
    'Send a JSON object with exactly one of "dataframe_split" ({"columns": [...], '
    '"data": [[...], ...]}), "dataframe_records" ([{column: value}, ...]), "instances" '
    '([{column: value}, ...]) or "inputs" ({column: [values]}), or a CSV body with a header row.'
)
_GENERIC_CODES = {
    "unavailable": TEMPORARILY_UNAVAILABLE,
    "internal": INTERNAL_ERROR,
    "too_large": REQUEST_LIMIT_EXCEEDED,
    "invalid": BAD_REQUEST,
}


class ScoringError(ProtocolError):
    """An MLflow scoring error: HTTP status, MLflow error code and message."""


def error_body(code: str, message: str) -> dict[str, str]:
    """MLflow's error body (``MlflowException.serialize_as_json`` without the stack trace)."""
    return {"error_code": code, "message": message}


def _render(status: int, code: str, message: str) -> Response:
    return JSONResponse(
        status_code=status, content=error_body(_GENERIC_CODES.get(code, code), message)
    )


router = APIRouter(route_class=protocol_route_class(_render, "MLflow scoring"), tags=["mlflow"])


# --- parsing (no HTTP) -----------------------------------------------------------------


def parse_content_type(header: str | None) -> str:
    """The media type of a request, checked the way MLflow checks it (charset utf-8 only,
    no other parameters). Raises a 415 for missing or unsupported types."""
    supported = ", ".join(CONTENT_TYPES)
    if header is None or not header.strip():
        raise ScoringError(
            415,
            BAD_REQUEST,
            f"The request has no Content-Type header: send one of {supported} "
            "(e.g. -H 'Content-Type: application/json').",
        )
    mime, *parameters = (part.strip() for part in header.split(";"))
    values = {
        key.strip().lower(): value.strip()
        for key, _, value in (p.partition("=") for p in parameters)
    }
    charset = values.pop("charset", "utf-8").strip('"').lower()
    if charset != "utf-8":
        raise ScoringError(
            415, BAD_REQUEST, f"Unsupported charset '{charset}': the server only accepts UTF-8."
        )
    if values:
        raise ScoringError(
            415,
            BAD_REQUEST,
            f"Unrecognized content type parameters: {', '.join(sorted(values))}. Only "
            "'charset=utf-8' is accepted; the pre-MLflow-2 'format=pandas-split' is replaced "
            'by the "dataframe_split" key in the JSON body.',
        )
    mime = mime.lower()
    if mime not in CONTENT_TYPES:
        raise ScoringError(
            415,
            BAD_REQUEST,
            f"Unsupported Content-Type '{header}': send one of {supported}.",
        )
    return mime


def parse_request(
    content_type: str | None, body: bytes, columns: Sequence[InputColumn]
) -> list[Record]:
    """Parse and validate an ``/invocations`` body into one record per row."""
    mime = parse_content_type(content_type)
    if mime == CONTENT_TYPE_CSV:
        return parse_csv(body, columns)
    if mime == CONTENT_TYPE_PARQUET:
        return parse_parquet(body, columns)
    return parse_json(body, columns)


def parse_json(body: bytes, columns: Sequence[InputColumn]) -> list[Record]:
    """Parse a JSON body in any of MLflow's four formats into validated records."""
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ScoringError(
            400,
            BAD_REQUEST,
            f"Invalid input. The body is not valid JSON ({exc}). {_FORMAT_HELP}",
        ) from exc
    if not isinstance(payload, dict):
        raise ScoringError(
            400,
            BAD_REQUEST,
            f"Invalid input. The body must be a JSON object, got {json_kind(payload)}. "
            + _FORMAT_HELP,
        )
    found = [key for key in FORMATS if key in payload]
    if len(found) != 1:
        keys = ", ".join(f"'{k}'" for k in payload) or "none"
        problem = "has more than one" if found else "has none"
        raise ScoringError(
            400,
            BAD_REQUEST,
            f"The JSON body {problem} of the input fields {', '.join(FORMATS)} "
            f"(keys received: {keys}). {_FORMAT_HELP}",
        )
    ignored = [key for key in payload if key not in (*FORMATS, PARAMS)]
    if ignored or payload.get(PARAMS):
        logger.debug("Ignoring keys %s and params of an /invocations request", ignored)
    key = found[0]
    data = payload[key]
    if key == DF_SPLIT:
        table = _table_from_split(data)
    elif key == DF_RECORDS:
        table = _table_from_records(data, key)
    elif isinstance(data, dict):  # instances / inputs in column form
        table = _table_from_columns(data, key)
    elif isinstance(data, list) and data and all(isinstance(row, dict) for row in data):
        table = _table_from_records(data, key)
    else:
        raise ScoringError(
            400,
            BAD_REQUEST,
            f"Invalid input. '{key}' must be an object of columns ({{column: [values]}}) or a "
            f"list of records ([{{column: value}}, ...]), got {json_kind(data)}"
            + (" of non-objects" if isinstance(data, list) and data else "")
            + ". Name every value by its column; positional rows need "
            '"dataframe_split" with "columns".',
        )
    return to_records(table, columns)


def parse_csv(body: bytes, columns: Sequence[InputColumn]) -> list[Record]:
    """Parse a CSV body whose header row names the columns."""
    try:
        text = body.decode("utf-8")
        frame = pd.read_csv(io.StringIO(text), dtype=str)
    except Exception as exc:
        raise ScoringError(
            400,
            BAD_REQUEST,
            "Failed to parse input as a CSV table: send a header row of column names, then one "
            f"row per record, as written by pandas.DataFrame.to_csv(index=False). Error: {exc}",
        ) from exc
    return _from_frame(frame, columns)


def parse_parquet(body: bytes, columns: Sequence[InputColumn]) -> list[Record]:
    """Parse a Parquet body as written by ``pandas.DataFrame.to_parquet()``."""
    try:
        frame = pd.read_parquet(io.BytesIO(body))
    except Exception as exc:
        raise ScoringError(
            400,
            BAD_REQUEST,
            "Failed to parse input as Parquet: send a table written by "
            f"pandas.DataFrame.to_parquet(). Error: {exc}",
        ) from exc
    return _from_frame(frame, columns)


def to_records(table: Mapping[str, Sequence[Any]], columns: Sequence[InputColumn]) -> list[Record]:
    """Validate a column table against the model's inputs and turn it into records.

    Like MLflow: a missing required column is an error, extra columns are ignored. Unlike
    MLflow, an omitted optional column is filled with missing values for the model to impute.
    """
    n_rows = len(next(iter(table.values()))) if table else 0
    missing = [c.name for c in columns if c.required and c.name not in table]
    if missing:
        names = ", ".join(f"'{name}'" for name in missing)
        raise ScoringError(
            400,
            INVALID_PARAMETER_VALUE,
            f"Missing required input column(s) {names}: add them to every row. The model "
            f"expects {expected_columns(columns)}.",
        )
    if n_rows == 0:
        raise ScoringError(
            400, BAD_REQUEST, f"The input has no rows: send at least one. {_FORMAT_HELP}"
        )
    values: dict[str, list[Any]] = {}
    problems: list[str] = []
    for column in columns:
        raw = table.get(column.name)
        if raw is None:
            values[column.name] = [None] * n_rows
            continue
        converted: list[Any] = []
        for row, value in enumerate(raw):
            try:
                converted.append(coerce_value(column, value))
            except ValueCoercionError as exc:
                problems.append(f"column '{column.name}' row {row}: {exc}")
                break
        values[column.name] = converted
    if problems:
        raise ScoringError(
            400,
            BAD_REQUEST,
            "Invalid input. Data is not compatible with the model signature: "
            + "; ".join(problems)
            + f". Fix these values; the model expects {expected_columns(columns)}.",
        )
    return [{name: values[name][row] for name in values} for row in range(n_rows)]


def format_predictions(predictions: Sequence[Prediction]) -> dict[str, list[Any]]:
    """``{"predictions": [...]}``: the labels of a classifier or the values of a regressor,
    as ``mlflow models serve`` answers for an sklearn model."""
    return {
        "predictions": [p.label if isinstance(p, ClassPrediction) else p.value for p in predictions]
    }


def _table_from_split(data: Any) -> dict[str, list[Any]]:
    if not isinstance(data, dict):
        raise ScoringError(
            400,
            BAD_REQUEST,
            f"Invalid input. 'dataframe_split' must be an object, got {json_kind(data)}: "
            'send {"columns": [names...], "data": [[row values...], ...]}.',
        )
    extra = sorted(set(data) - {"columns", "data", "index"})
    if "data" not in data or extra:
        problem = f"unknown key(s) {', '.join(map(repr, extra))}" if extra else "no 'data'"
        raise ScoringError(
            400,
            BAD_REQUEST,
            f"Invalid input. 'dataframe_split' has {problem}: it takes 'data' and optionally "
            "'columns' and 'index', as written by pandas.DataFrame.to_dict(orient='split').",
        )
    names, rows = data.get("columns"), data["data"]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ScoringError(
            400,
            INVALID_PARAMETER_VALUE,
            "Invalid input. 'dataframe_split' needs 'columns', a list of the column names in "
            "the order of each row's values, so the values can be matched to the model's "
            "inputs.",
        )
    if not isinstance(rows, list) or not all(isinstance(r, list) for r in rows):
        raise ScoringError(
            400,
            BAD_REQUEST,
            "Invalid input. 'dataframe_split.data' must be a list of rows, each a list of "
            "values in the order of 'columns'.",
        )
    for index, row in enumerate(rows):
        if len(row) != len(names):
            raise ScoringError(
                400,
                BAD_REQUEST,
                f"Invalid input. Row {index} of 'dataframe_split.data' has {len(row)} values "
                f"but 'columns' names {len(names)}: send one value per column.",
            )
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _table_from_records(rows: Any, key: str) -> dict[str, list[Any]]:
    if not isinstance(rows, list):
        raise ScoringError(
            400,
            BAD_REQUEST,
            f"Invalid input. '{key}' must be a list of records ([{{column: value}}, ...]), "
            f"got {json_kind(rows)}.",
        )
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ScoringError(
                400,
                BAD_REQUEST,
                f"Invalid input. Record {index} of '{key}' is {json_kind(row)}: each record "
                "must be an object of column names to values.",
            )
    names = list(dict.fromkeys(name for row in rows for name in row))
    return {name: [row.get(name) for row in rows] for name in names}


def _table_from_columns(data: dict[str, Any], key: str) -> dict[str, list[Any]]:
    lengths = {len(v) for v in data.values() if isinstance(v, list)}
    if len(lengths) > 1:
        raise ScoringError(
            400,
            BAD_REQUEST,
            f"Invalid input. The columns of '{key}' have different lengths "
            f"({', '.join(map(str, sorted(lengths)))}): send the same number of values for "
            "every column.",
        )
    n_rows = lengths.pop() if lengths else 1
    return {
        name: value if isinstance(value, list) else [value] * n_rows for name, value in data.items()
    }


def _from_frame(frame: pd.DataFrame, columns: Sequence[InputColumn]) -> list[Record]:
    table = {
        str(name): [None if is_missing(v) else v for v in frame[name].tolist()]
        for name in frame.columns
    }
    return to_records(table, columns)


# --- routes ----------------------------------------------------------------------------


@router.post("/invocations", summary="MLflow scoring protocol (mlflow models serve)")
async def invocations(request: Request, predictor: PredictorDep) -> Response:
    """Predict rows sent in any of MLflow's formats; answers ``{"predictions": [...]}``."""
    body = await read_body(request)
    records = parse_request(request.headers.get("content-type"), body, predictor.loaded.columns)
    try:
        predictions = await predictor.predict(records)
    except Exception as exc:
        logger.exception(
            "Model %s v%s failed on /invocations", predictor.loaded.name, predictor.loaded.version
        )
        raise ScoringError(
            500,
            INTERNAL_ERROR,
            "The model failed on this input; the error is logged on the server. Check that "
            f"the values fit the model's inputs ({expected_columns(predictor.loaded.columns)}) "
            "or contact the operator.",
        ) from exc
    return JSONResponse(
        format_predictions(predictions), headers={"X-Model-Version": predictor.loaded.version}
    )


@router.get("/ping", summary="MLflow health check: 200 once a model is loaded")
@router.get("/health", summary="MLflow health check (same as /ping)")
async def ping(predictor: OptionalPredictorDep) -> Response:
    status = 200 if predictor is not None else 503
    return Response(content="\n", status_code=status, media_type="application/json")


@router.get("/version", summary="The MLflow version this server is compatible with")
async def version() -> Response:
    return Response(content=MLFLOW_VERSION, media_type="application/json")
