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

import asyncio
import csv
import io
import logging
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from mlflow.version import VERSION as MLFLOW_VERSION
from pydantic import BaseModel, Field

from pipeline.contracts import NUMERIC_TYPES
from serving.deps import count_flags, get_prediction_log, predict_logged
from serving.errors import InvalidRequestError
from serving.limits import (
    LimitExceededError,
    RequestLimits,
    capped,
    check_columns,
    check_decoded_bytes,
    check_rows,
    more_problems,
)
from serving.model.domain import RowWarnings, frame_warnings, record_warnings
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
    shown,
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


DEFAULT_LIMITS = RequestLimits()
_NAMES_SHOWN = RequestLimits(max_error_details=5)
"""At most this many unknown names are quoted in one message."""


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
    limits: RequestLimits = DEFAULT_LIMITS,
) -> list[Record] | pd.DataFrame:
    """Parse and validate an ``/invocations`` body into one record per row.

    With ``bulk_rows``, a JSON, CSV or Parquet request of at least that many rows for a model
    whose inputs are all numeric comes back as one DataFrame instead (what the records would
    become), checked column-wise by the same rules. Whatever those vectorised checks do not
    accept goes the record way, so every error reads exactly as it does there.

    ``limits`` are checked before any value is parsed: rows, columns (an unknown column is
    refused as soon as it is seen), and a Parquet file's uncompressed size (from its metadata).
    """
    mime = parse_content_type(content_type)
    try:
        if mime == CONTENT_TYPE_CSV:
            return parse_csv(body, columns, bulk_rows=bulk_rows, limits=limits)
        if mime == CONTENT_TYPE_PARQUET:
            return parse_parquet(body, columns, bulk_rows=bulk_rows, limits=limits)
        key, data = _json_input(body)
        _check_json_table(key, data, columns, limits)
    except LimitExceededError as exc:
        raise ScoringError(413, REQUEST_LIMIT_EXCEEDED, exc.message) from exc
    if bulk_rows is not None and _all_numeric(columns):
        frame = _bulk_json_frame(key, data, columns, bulk_rows)
        if frame is not None:
            return frame
    return _json_records(key, data, columns)


def parse_json(body: bytes, columns: Sequence[InputColumn]) -> list[Record]:
    """Parse a JSON body in any of MLflow's four formats into validated records."""
    key, data = _json_input(body)
    _check_json_table(key, data, columns, DEFAULT_LIMITS)
    return _json_records(key, data, columns)


def _check_json_table(
    key: str, data: Any, columns: Sequence[InputColumn], limits: RequestLimits
) -> None:
    """Rows and column names of a JSON table, checked before any value is: every name must
    be a model input (the first unknown key of a record is refused as it is met, so 8,000
    distinct keys cost one dict lookup each, not 8,000 columns)."""
    if key == DF_SPLIT and isinstance(data, dict):
        names, rows = data.get("columns"), data.get("data")
        if isinstance(names, list):
            check_columns(len(names), limits)
            check_names([str(name) for name in names], columns, "'dataframe_split.columns'")
        if isinstance(rows, list):
            check_rows(len(rows), limits)
    elif isinstance(data, list):
        check_rows(len(data), limits)
        known = {column.name for column in columns}
        for index, row in enumerate(data):
            if isinstance(row, dict) and not row.keys() <= known:
                unknown = [name for name in row if name not in known]
                check_names(unknown, columns, f"record {index} of '{key}'")
    elif isinstance(data, dict) and key in (INSTANCES, INPUTS):
        check_columns(len(data), limits)
        check_names(list(data), columns, f"'{key}'")
        for value in data.values():
            if isinstance(value, list):
                check_rows(len(value), limits)


def check_names(names: Sequence[str], columns: Sequence[InputColumn], where: str) -> None:
    """Refuse (400) names that are not inputs of the model, or that come twice: the one rule
    for unknown fields, on every protocol. At most a few names are quoted."""
    known = {column.name for column in columns}
    unknown = [name for name in dict.fromkeys(names) if name not in known]
    if unknown:
        quoted, hidden = capped([shown(name) for name in unknown], _NAMES_SHOWN)
        raise ScoringError(
            400,
            INVALID_PARAMETER_VALUE,
            f"Invalid input. {where[0].upper()}{where[1:]} names unknown column(s) "
            f"{', '.join(quoted)}{more_problems(hidden)}: remove them; the model expects "
            f"{expected_columns(columns)}.",
        )
    duplicated = [name for name, count in Counter(names).items() if count > 1]
    if duplicated:
        raise ScoringError(
            400,
            INVALID_PARAMETER_VALUE,
            f"Invalid input. {where[0].upper()}{where[1:]} names "
            f"{', '.join(shown(name) for name in duplicated)} more than once: send each "
            "column once (which of the values was meant cannot be told).",
        )


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
    body: bytes,
    columns: Sequence[InputColumn],
    *,
    bulk_rows: int | None = None,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> list[Record] | pd.DataFrame:
    """Parse a CSV body whose header row names the columns (``bulk_rows`` and ``limits``: as
    in :func:`parse_request`); the header and the number of lines are checked first."""
    _check_csv_shape(body, columns, limits)
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


def _check_csv_shape(body: bytes, columns: Sequence[InputColumn], limits: RequestLimits) -> None:
    """The header row's names and the number of lines, before pandas parses anything."""
    check_rows(max(0, body.count(b"\n") - 1), limits)
    header = body.split(b"\n", 1)[0]
    try:
        names = next(csv.reader([header.decode("utf-8").rstrip("\r")]), [])
    except (UnicodeDecodeError, csv.Error):
        return  # pandas says what is wrong with it
    check_columns(len(names), limits)
    check_names(names, columns, "the CSV header")


def parse_parquet(
    body: bytes,
    columns: Sequence[InputColumn],
    *,
    bulk_rows: int | None = None,
    limits: RequestLimits = DEFAULT_LIMITS,
) -> list[Record] | pd.DataFrame:
    """Parse a Parquet body as written by ``pandas.DataFrame.to_parquet()``.

    The file's metadata is read first: its rows, columns and uncompressed size are checked
    against ``limits`` before one page is decompressed (18 KiB of zstd can hold a million
    rows). A model whose inputs are all numeric gets a column-wise checked frame.
    """
    try:
        source = pq.ParquetFile(pa.BufferReader(body))
        metadata = source.metadata
    except Exception as exc:
        raise _parquet_error(exc) from exc
    check_rows(metadata.num_rows, limits)
    check_columns(metadata.num_columns, limits)
    names = [name for name in source.schema_arrow.names if not name.startswith("__index_level_")]
    check_names(names, columns, "the Parquet file")
    check_decoded_bytes(
        sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)),
        limits,
    )
    try:
        # Dictionary-encoded as stored: a 1 MB dictionary value repeated on every row is
        # counted below, not decoded (to_pandas would copy it into each row).
        table = pq.ParquetFile(pa.BufferReader(body), read_dictionary=names).read(columns=names)
        check_decoded_bytes(_decoded_bytes(table), limits)
        frame = table.to_pandas()
    except LimitExceededError:
        raise
    except Exception as exc:
        raise _parquet_error(exc) from exc
    if bulk_rows is not None and _all_numeric(columns) and len(frame) >= bulk_rows:
        checked = _numeric_columns_frame(frame, columns)
        if checked is not None:
            return checked
    return _from_frame(frame, columns)


def _decoded_bytes(table: pa.Table) -> int:
    """What ``table`` takes once its dictionary-encoded columns are decoded, computed from
    the value lengths and the indices, without decoding."""
    total = 0
    for column in table.columns:
        for chunk in column.chunks:
            if not pa.types.is_dictionary(chunk.type):
                total += chunk.nbytes
            elif pa.types.is_binary(chunk.type.value_type) or pa.types.is_string(
                chunk.type.value_type
            ):
                lengths = pc.binary_length(chunk.dictionary)
                total += int(pc.sum(pc.take(lengths, chunk.indices)).as_py() or 0)
                total += chunk.indices.nbytes
            else:  # a dictionary of numbers: at most 8 bytes a row once decoded
                total += 8 * len(chunk)
    return total


def _parquet_error(exc: Exception) -> ScoringError:
    return ScoringError(
        400,
        BAD_REQUEST,
        "Failed to parse input as Parquet: send a table written by "
        f"pandas.DataFrame.to_parquet(). Error: {str(exc)[:200]}",
    )


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


def format_predictions(
    predictions: Sequence[Prediction], flags: RowWarnings | None = None
) -> dict[str, list[Any]]:
    """``{"predictions": [...]}``: the labels of a classifier or the values of a regressor,
    as ``mlflow models serve`` answers for an sklearn model; plus ``"warnings"`` (one entry
    per flagged row) when values lie outside the training domain."""
    body = {
        "predictions": [p.label if isinstance(p, ClassPrediction) else p.value for p in predictions]
    }
    return _flagged(body, flags)


def _flagged(body: dict[str, list[Any]], flags: RowWarnings | None) -> dict[str, list[Any]]:
    if flags:
        body["warnings"] = [{"row": row, "messages": flags[row]} for row in sorted(flags)]
    return body


def _table_from_split(data: Any) -> dict[str, list[Any]]:
    names, rows = _split_parts(data)
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def _rows_not_lists() -> ScoringError:
    return ScoringError(
        400,
        BAD_REQUEST,
        "Invalid input. 'dataframe_split.data' must be a list of rows, each a list of "
        "values in the order of 'columns'.",
    )


def _split_header(data: Any) -> tuple[list[str], list[Any]]:
    """The column names and the list of rows of a ``dataframe_split`` value; the rows
    themselves unchecked (see :func:`_split_parts`)."""
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
    if not isinstance(rows, list):
        raise _rows_not_lists()
    return names, rows


def _split_parts(data: Any) -> tuple[list[str], list[list[Any]]]:
    """The column names and rows of a ``dataframe_split`` value, its shape checked."""
    names, rows = _split_header(data)
    if not all(isinstance(r, list) for r in rows):
        raise _rows_not_lists()
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


def predictions_json(outputs: np.ndarray, flags: RowWarnings | None = None) -> bytes:
    """``{"predictions": [...]}`` from the model's output array, as ``format_predictions``
    writes it for the same predictions."""
    values = outputs.tolist()
    if outputs.dtype == object:
        values = [to_native(value) for value in values]
    return orjson.dumps(_flagged({"predictions": values}, flags))


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
    # Rows are not checked one by one here: NumPy builds a 2-D matrix only from rows of equal
    # length, and whatever it refuses goes the record way, which names the first bad row.
    # That Python loop cost a quarter of a 10,000-row request's parsing.
    names, rows = _split_header(data)
    if len(rows) < min_rows:
        return None
    _check_required(names, columns)
    found = numeric_matrix(rows)
    if found is None or found[0].shape[1] != len(names):
        return None
    return names, found[0]


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
    _check_required([str(name) for name in frame.columns], columns)
    return _numeric_columns_frame(frame, columns)


def _numeric_columns_frame(
    frame: pd.DataFrame, columns: Sequence[InputColumn]
) -> pd.DataFrame | None:
    """The model's frame from a parsed table whose numeric columns pass the checks, or None
    for the record way (text, booleans or anything else are checked value by value)."""
    position = {str(name): index for index, name in enumerate(frame.columns)}
    arrays: list[np.ndarray | None] = []
    for column in columns:
        if column.name not in position:
            arrays.append(None)
            continue
        series = frame.iloc[:, position[column.name]]
        if series.dtype.kind not in "if":
            return None
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


class ErrorPublic(BaseModel):
    error_code: str = Field(description="MLflow's error code, e.g. BAD_REQUEST.")
    message: str = Field(description="What is wrong and how to fix it.")


_STATUS = {
    400: "The body is not in one of MLflow's formats, or does not fit the model's inputs.",
    413: "The body, its rows, columns or decoded size are over the server's limits.",
    415: "The Content-Type is not application/json, text/csv or application/vnd.apache.parquet.",
    500: "The model failed on this input; the error is logged on the server.",
    503: "No model is loaded yet.",
    504: "The request took longer than SERVING_REQUEST_TIMEOUT_SECONDS.",
}
_TABLE_VALUES: dict[str, Any] = {"type": "array", "items": {}}
_RECORDS: dict[str, Any] = {"type": "array", "items": {"type": "object"}, "minItems": 1}
INVOCATIONS_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        CONTENT_TYPE_JSON: {
            "schema": {
                "title": "ScoringRequest",
                "description": "Exactly one of the four keys; 'params' is accepted and ignored.",
                "oneOf": [
                    {
                        "type": "object",
                        "properties": {
                            DF_SPLIT: {
                                "type": "object",
                                "properties": {
                                    "columns": {"type": "array", "items": {"type": "string"}},
                                    "data": {"type": "array", "items": _TABLE_VALUES},
                                    "index": {"type": "array"},
                                },
                                "required": ["columns", "data"],
                            },
                            PARAMS: {"type": "object"},
                        },
                        "required": [DF_SPLIT],
                    },
                    {
                        "type": "object",
                        "properties": {DF_RECORDS: _RECORDS, PARAMS: {"type": "object"}},
                        "required": [DF_RECORDS],
                    },
                    *(
                        {
                            "type": "object",
                            "properties": {
                                key: {"oneOf": [_RECORDS, {"type": "object"}]},
                                PARAMS: {"type": "object"},
                            },
                            "required": [key],
                        }
                        for key in (INSTANCES, INPUTS)
                    ),
                ],
            }
        },
        CONTENT_TYPE_CSV: {"schema": {"type": "string", "description": "A header row first."}},
        CONTENT_TYPE_PARQUET: {"schema": {"type": "string", "format": "binary"}},
    },
}
"""The body of /invocations, for OpenAPI (the route checks it in :func:`parse_request`)."""
_INVOCATIONS_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": '{"predictions": [...]}, and "warnings" for values outside the '
        "training domain.",
        "content": {CONTENT_TYPE_JSON: {}},
    },
    **{status: {"model": ErrorPublic, "description": text} for status, text in _STATUS.items()},
}
_TEXT = "text/plain"
"""/ping and /version answer MLflow's bodies ("\n", the version), which are not JSON; MLflow
labels them application/json, which every JSON client then fails to parse."""
_PING: dict[int | str, dict[str, Any]] = {
    200: {"description": "A model is loaded.", "content": {_TEXT: {}}},
    503: {"description": "No model is loaded yet.", "content": {_TEXT: {}}},
}


@router.post(
    "/invocations",
    summary="MLflow scoring protocol (mlflow models serve)",
    responses=_INVOCATIONS_RESPONSES,
    openapi_extra={"requestBody": INVOCATIONS_REQUEST_BODY},
)
async def invocations(request: Request, predictor: PredictorDep) -> Response:
    """Predict rows sent in any of MLflow's formats; answers ``{"predictions": [...]}``."""
    body = await read_body(request)
    active = predictor.active
    limits: RequestLimits = request.app.state.settings.request_limits
    parse = partial(
        parse_request,
        request.headers.get("content-type"),
        body,
        predictor.loaded.columns,
        bulk_rows=active.bulk_rows,
        limits=limits,
    )
    # A large body could hold the event loop (and /health/live) while it is parsed.
    parsed = await asyncio.to_thread(parse) if len(body) > limits.offload_bytes else parse()
    # Probabilities are not part of the answer, but the prediction log records them.
    proba = get_prediction_log(request) is not None and predictor.loaded.has_proba
    try:
        answer = await predict_logged(request, active, parsed, proba=proba)
        if isinstance(parsed, pd.DataFrame):
            flags = count_flags(request, frame_warnings(predictor.loaded.domain, parsed))
            content = predictions_json(answer.outputs.outputs, flags)
        else:
            flags = count_flags(request, record_warnings(predictor.loaded.domain, parsed))
            content = orjson.dumps(format_predictions(predictor.typed(answer.outputs), flags))
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
        headers={"X-Model-Version": answer.loaded.version},
    )


@router.get("/ping", summary="MLflow health check: 200 once a model is loaded", responses=_PING)
@router.get("/health", summary="MLflow health check (same as /ping)", responses=_PING)
async def ping(predictor: OptionalPredictorDep) -> Response:
    status = 200 if predictor is not None else 503
    return Response(content="\n", status_code=status, media_type=_TEXT)


@router.get(
    "/version",
    summary="The MLflow version this server is compatible with",
    responses={200: {"description": "The version.", "content": {_TEXT: {}}}},
)
async def version() -> Response:
    return Response(content=MLFLOW_VERSION, media_type=_TEXT)
