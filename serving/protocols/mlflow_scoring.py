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
import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import orjson
import pandas as pd
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from mlflow.version import VERSION as MLFLOW_VERSION

from pipeline.contracts import NUMERIC_TYPES
from serving.deps import get_prediction_log, log_predictions
from serving.errors import InvalidRequestError
from serving.model.inference import (
    ClassPrediction,
    Prediction,
    loads_json,
    numeric_frame,
    numeric_matrix,
    record_values,
)
from serving.model.store import InputColumn, to_native
from serving.protocols._common import (
    ProtocolError,
    ValueCoercionError,
    coerce_value,
    expected_columns,
    is_missing,
    json_kind,
    numeric_values_fit,
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
    content_type: str | None,
    body: bytes,
    columns: Sequence[InputColumn],
    *,
    bulk_rows: int | None = None,
) -> list[Record] | pd.DataFrame:
    """Parse and validate an ``/invocations`` body into one record per row.

    With ``bulk_rows``, a JSON or CSV request of at least that many rows for a model whose
    inputs are all numeric comes back as one DataFrame instead (what the records would
    become), checked column-wise by the same rules. Whatever those vectorised checks do not
    accept goes the record way, so every error reads exactly as it does there.
    """
    mime = parse_content_type(content_type)
    if mime == CONTENT_TYPE_CSV:
        return parse_csv(body, columns, bulk_rows=bulk_rows)
    if mime == CONTENT_TYPE_PARQUET:
        return parse_parquet(body, columns)
    key, data = _json_input(body)
    if bulk_rows is not None and _all_numeric(columns):
        frame = _bulk_json_frame(key, data, columns, bulk_rows)
        if frame is not None:
            return frame
    return _json_records(key, data, columns)


def parse_json(body: bytes, columns: Sequence[InputColumn]) -> list[Record]:
    """Parse a JSON body in any of MLflow's four formats into validated records."""
    key, data = _json_input(body)
    return _json_records(key, data, columns)


def _json_input(body: bytes) -> tuple[str, Any]:
    """The format key of a JSON body and its data, checked as MLflow checks them."""
    try:
        payload = loads_json(body)
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
    return found[0], payload[found[0]]


def _json_records(key: str, data: Any, columns: Sequence[InputColumn]) -> list[Record]:
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


def parse_csv(
    body: bytes, columns: Sequence[InputColumn], *, bulk_rows: int | None = None
) -> list[Record] | pd.DataFrame:
    """Parse a CSV body whose header row names the columns (``bulk_rows``: as in
    :func:`parse_request`)."""
    if bulk_rows is not None and _all_numeric(columns):
        frame = _bulk_csv_frame(body, columns, bulk_rows)
        if frame is not None:
            return frame
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
    _check_required(table, columns)
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


def _check_required(names: Iterable[str], columns: Sequence[InputColumn]) -> None:
    """Raise the 400 naming every required input column that is not among ``names``."""
    present = set(names)
    missing = [c.name for c in columns if c.required and c.name not in present]
    if missing:
        listed = ", ".join(f"'{name}'" for name in missing)
        raise ScoringError(
            400,
            INVALID_PARAMETER_VALUE,
            f"Missing required input column(s) {listed}: add them to every row. The model "
            f"expects {expected_columns(columns)}.",
        )


def format_predictions(predictions: Sequence[Prediction]) -> dict[str, list[Any]]:
    """``{"predictions": [...]}``: the labels of a classifier or the values of a regressor,
    as ``mlflow models serve`` answers for an sklearn model."""
    return {
        "predictions": [p.label if isinstance(p, ClassPrediction) else p.value for p in predictions]
    }


def _table_from_split(data: Any) -> dict[str, list[Any]]:
    names, rows = _split_parts(data)
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _split_parts(data: Any) -> tuple[list[str], list[list[Any]]]:
    """The column names and rows of a ``dataframe_split`` value, its shape checked."""
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
    return names, rows


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


# --- bulk requests: column-wise, no per-row objects (no HTTP) -------------------------


def predictions_json(outputs: np.ndarray) -> bytes:
    """``{"predictions": [...]}`` from the model's output array, as ``format_predictions``
    writes it for the same predictions."""
    values = outputs.tolist()
    if outputs.dtype == object:
        values = [to_native(value) for value in values]
    return orjson.dumps({"predictions": values})


def _all_numeric(columns: Sequence[InputColumn]) -> bool:
    return all(column.type in NUMERIC_TYPES for column in columns)


_Matrix = tuple[list[str], np.ndarray]
"""The names of the columns sent and their values, one matrix column per name."""


def _bulk_json_frame(
    key: str, data: Any, columns: Sequence[InputColumn], min_rows: int
) -> pd.DataFrame | None:
    """The frame of a JSON request of at least ``min_rows`` rows, or None for the record way.

    ``dataframe_split``, records (``dataframe_records``, or ``instances``/``inputs`` as a list
    of records) and columns (``instances``/``inputs`` as ``{column: [values]}``).
    """
    if key == DF_SPLIT:
        found = _split_matrix(data, columns, min_rows)
    elif isinstance(data, list):
        found = _records_matrix(data, columns, min_rows)
    elif isinstance(data, dict) and key in (INSTANCES, INPUTS):
        found = _columns_matrix(data, columns, min_rows)
    else:
        return None
    if found is None:
        return None
    names, matrix = found
    position = {name: index for index, name in enumerate(names)}  # the last of duplicates
    arrays = [
        None if column.name not in position else matrix[:, position[column.name]]
        for column in columns
    ]
    return _checked_frame(columns, arrays, matrix.shape[0])


def _split_matrix(data: Any, columns: Sequence[InputColumn], min_rows: int) -> _Matrix | None:
    names, rows = _split_parts(data)
    if len(rows) < min_rows:
        return None
    _check_required(names, columns)
    found = numeric_matrix(rows)
    if found is None:  # perhaps only because of extra (ignored) columns of text
        names, rows = _model_columns_only(names, rows, columns)
        found = numeric_matrix(rows)
    return None if found is None else (names, found[0])


def _records_matrix(
    data: list[Any], columns: Sequence[InputColumn], min_rows: int
) -> _Matrix | None:
    if len(data) < min_rows or not all(type(row) is dict for row in data):
        return None
    names = [column.name for column in columns if column.name in data[0]]
    if len(names) < len(columns):  # an input left out of the first record, or of all
        sent = set().union(*data)
        names = [column.name for column in columns if column.name in sent]
    _check_required(names, columns)
    # Each record must hold each of those (extra keys are ignored, as on the record way).
    values = record_values(data, names)
    found = None if values is None else numeric_matrix(values)
    return None if found is None else (names, found[0])


def _columns_matrix(
    data: dict[str, Any], columns: Sequence[InputColumn], min_rows: int
) -> _Matrix | None:
    if not all(isinstance(value, list) for value in data.values()):
        return None  # scalars are broadcast on the record way
    lengths = {len(value) for value in data.values()}
    if len(lengths) != 1 or lengths.pop() < min_rows:
        return None
    _check_required(data, columns)
    names = [column.name for column in columns if column.name in data]
    found = numeric_matrix([data[name] for name in names])
    return None if found is None else (names, found[0].T)


def _model_columns_only(
    names: list[str], rows: list[list[Any]], columns: Sequence[InputColumn]
) -> tuple[list[str], list[list[Any]]]:
    """The names and values of the model's inputs only, from ``dataframe_split`` rows."""
    position = {name: index for index, name in enumerate(names)}  # the last of duplicates
    keep = sorted(position[c.name] for c in columns if c.name in position)
    if len(keep) == len(names):
        return names, rows
    try:
        values = np.array(rows, dtype=object)[:, keep].tolist()
    except (ValueError, IndexError):
        return names, rows
    return [names[index] for index in keep], values


def _bulk_csv_frame(
    body: bytes, columns: Sequence[InputColumn], min_rows: int
) -> pd.DataFrame | None:
    """The frame of a CSV body of at least ``min_rows`` rows, or None for the record way."""
    if body.count(b"\n") < min_rows:
        return None
    try:
        # round_trip: Python's own float parser, so values equal float(text) exactly.
        frame = pd.read_csv(io.BytesIO(body), float_precision="round_trip")
    except Exception:
        return None
    if len(frame) < min_rows:
        return None
    names = [str(name) for name in frame.columns]
    _check_required(names, columns)
    position = {name: index for index, name in enumerate(names)}
    arrays: list[np.ndarray | None] = []
    for column in columns:
        if column.name not in position:
            arrays.append(None)
            continue
        series = frame.iloc[:, position[column.name]]
        if series.dtype.kind not in "if":
            return None  # text, booleans or anything else: checked value by value
        arrays.append(series.to_numpy())
    return _checked_frame(columns, arrays, len(frame))


def _checked_frame(
    columns: Sequence[InputColumn], arrays: Sequence[np.ndarray | None], n_rows: int
) -> pd.DataFrame | None:
    """The model's frame if every present column passes :func:`coerce_value`'s rules."""
    if all(array is None for array in arrays):
        return None  # no input sent at all: the record way says what is wrong
    for column, array in zip(columns, arrays, strict=True):
        if array is not None and not numeric_values_fit(column, array):
            return None
    return numeric_frame(columns, arrays, n_rows)


# --- routes ----------------------------------------------------------------------------


@router.post("/invocations", summary="MLflow scoring protocol (mlflow models serve)")
async def invocations(request: Request, predictor: PredictorDep) -> Response:
    """Predict rows sent in any of MLflow's formats; answers ``{"predictions": [...]}``."""
    body = await read_body(request)
    active = predictor.active
    parsed = parse_request(
        request.headers.get("content-type"),
        body,
        predictor.loaded.columns,
        bulk_rows=active.bulk_rows,
    )
    # Probabilities are not part of the answer, but the prediction log records them.
    proba = get_prediction_log(request) is not None and predictor.loaded.has_proba
    try:
        if isinstance(parsed, pd.DataFrame):
            predictions = await active.predict_frame(parsed, proba=proba)
            log_predictions(request, predictor.loaded, parsed, predictions)
            content = predictions_json(predictions.outputs)
        else:
            rows = await predictor.predict_rows(parsed)
            log_predictions(request, predictor.loaded, parsed, rows)
            content = orjson.dumps(format_predictions(predictor.typed(rows)))
    except InvalidRequestError as exc:
        raise ScoringError(400, BAD_REQUEST, exc.message) from exc
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
    return Response(
        content,
        media_type=CONTENT_TYPE_JSON,
        headers={"X-Model-Version": predictor.loaded.version},
    )


@router.get("/ping", summary="MLflow health check: 200 once a model is loaded")
@router.get("/health", summary="MLflow health check (same as /ping)")
async def ping(predictor: OptionalPredictorDep) -> Response:
    status = 200 if predictor is not None else 503
    return Response(content="\n", status_code=status, media_type="application/json")


@router.get("/version", summary="The MLflow version this server is compatible with")
async def version() -> Response:
    return Response(content=MLFLOW_VERSION, media_type="application/json")
