"""Validate prediction requests against the model signature and predict. No HTTP in here."""

from __future__ import annotations

import json
import logging
import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import orjson
import pandas as pd
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
)
from pydantic_core import ErrorDetails
from sklearn.pipeline import Pipeline

from pipeline.contracts import COLUMN_TYPES, FLOAT_TYPES, INTEGER_TYPES, ColumnType
from serving.errors import ErrorDetail, InvalidRequestError
from serving.limits import RequestLimits, check_rows, more_problems
from serving.model.fastpath import Answers
from serving.model.forest import forest_proba, labels_follow_proba
from serving.model.store import InputColumn, LoadedModel, to_native

logger = logging.getLogger(__name__)

Label = str | int | float | bool
Record = dict[str, Any]


def _python_type(column_type: ColumnType) -> Any:
    """The strict pydantic type of a request field of ``column_type``."""
    if column_type.kind == "float":
        return Annotated[float, Field(strict=True, allow_inf_nan=False)]
    if column_type.kind == "integer":
        limit = 2 ** (column_type.bits or 63)
        return Annotated[
            int, BeforeValidator(_whole_float_as_int), Field(strict=True, ge=-limit, le=limit - 1)
        ]
    if column_type.kind == "boolean":
        return Annotated[bool, Field(strict=True)]
    return Annotated[str, Field(strict=True)]


def _whole_float_as_int(value: Any) -> Any:
    """2007.0 is the integer 2007 (JSON writers often send whole numbers as floats); 2007.5,
    NaN and infinity stay floats, for the strict check to refuse."""
    if type(value) is float and value.is_integer():
        return int(value)
    return value


_PYTHON_TYPES: dict[str, Any] = {name: _python_type(t) for name, t in COLUMN_TYPES.items()}
_NUMBER_TYPES = frozenset({int, float, type(None)})
_SLICE = 200
"""Records validated per pydantic call in a large batch."""
DEFAULT_LIMITS = RequestLimits()
_INPUT_FORM = 'Send one record as a JSON object of feature values, or {"records": [record, ...]}.'


_WARNINGS = (
    "Present when a value of this row lies outside the training domain (an unseen category, "
    "a number outside the training range): one message per such column, naming it. The "
    "prediction is made anyway."
)


class ClassPrediction(BaseModel):
    """A classifier's answer: the label, and probabilities when the model has them."""

    model_config = ConfigDict(frozen=True)

    label: Label
    confidence: float | None = Field(description="Highest class probability, if available.")
    probabilities: dict[str, float] | None = Field(
        description="Probability per class label, if the model has predict_proba."
    )
    warnings: list[str] | None = Field(default=None, description=_WARNINGS)


class RegressionPrediction(BaseModel):
    """A regressor's answer."""

    model_config = ConfigDict(frozen=True)

    value: float
    warnings: list[str] | None = Field(default=None, description=_WARNINGS)


Prediction = ClassPrediction | RegressionPrediction
PredictionRow = dict[str, Any]
"""One prediction as JSON-ready data: the fields of ClassPrediction or RegressionPrediction."""


@dataclass(frozen=True)
class RequestModels:
    """Pydantic models of one record and of a batch, generated from the input schema."""

    record: type[BaseModel]
    batch: type[BaseModel]
    columns: tuple[InputColumn, ...]
    records: TypeAdapter[list[Any]]
    """A list of records: how large batches are validated, one slice at a time."""
    names: frozenset[str]
    """The input column names (a body holding 'records' is a batch unless one is so named)."""


def build_request_models(columns: Sequence[InputColumn]) -> RequestModels:
    """Generate the request models from the model signature's input columns.

    Field names are internal (``f0``, ``f1`` ...) and the real column names are aliases,
    so any column name (spaces, brackets) works and appears as-is in JSON and OpenAPI.
    """
    fields: dict[str, Any] = {}
    for index, column in enumerate(columns):
        python_type = _PYTHON_TYPES[column.type]
        description = f"{column.type}, " + (
            "required" if column.required else "optional (omit it or send null when missing)"
        )
        if column.required:
            fields[f"f{index}"] = (
                python_type,
                Field(alias=column.name, title=column.name, description=description),
            )
        else:
            fields[f"f{index}"] = (
                python_type | None,
                Field(default=None, alias=column.name, title=column.name, description=description),
            )
    config = ConfigDict(extra="forbid", validate_by_alias=True, validate_by_name=False)
    record: type[BaseModel] = create_model("PredictRecord", __config__=config, **fields)
    batch: type[BaseModel] = create_model(
        "PredictBatch",
        __config__=ConfigDict(extra="forbid"),
        records=(list[record], Field(min_length=1, description="One or more records.")),  # type: ignore[valid-type]
    )
    records: TypeAdapter[list[Any]] = TypeAdapter(list[record])  # type: ignore[valid-type]
    return RequestModels(
        record=record,
        batch=batch,
        columns=tuple(columns),
        records=records,
        names=frozenset(column.name for column in columns),
    )


def parse_request(
    models: RequestModels, payload: Any, limits: RequestLimits = DEFAULT_LIMITS
) -> tuple[list[Record], bool]:
    """Validate a decoded JSON body; return the records and whether it was a batch.

    Raises:
        LimitExceededError: more records than ``limits.max_rows``.
        InvalidRequestError: naming the first ``limits.max_error_details`` fields that are
            missing, null, mistyped, not finite or unknown, and counting the rest.
    """
    if not isinstance(payload, dict):
        raise InvalidRequestError(
            f"The body must be a JSON object, not {json_kind(payload)}. {_INPUT_FORM}",
            [ErrorDetail(field="body", message=f"expected an object, got {json_kind(payload)}")],
        )
    is_batch = "records" in payload and "records" not in models.names
    if not is_batch:
        try:
            return [models.record.model_validate(payload).model_dump(by_alias=True)], False
        except ValidationError as exc:
            raise _invalid([(0, exc)], models, limits) from None
    records = payload["records"]
    if not isinstance(records, list):
        records = [records]  # the batch model then says what 'records' must be
    check_rows(len(records), limits)
    # Small batches are validated whole (every problem found); large ones are screened for
    # misshapen records first, each a counter rather than pydantic errors.
    misshapen = _misshapen_records(models.columns, records) if len(records) > _SLICE else {}
    if misshapen:
        raise _misshapen(models, records, misshapen, limits)
    # The first slice with the envelope (its other keys, an empty list), then the rest
    # slice by slice: a slice's errors are all pydantic holds at once, and the GIL is let go
    # between slices, so 99,990 bad records neither fill memory nor hold the event loop.
    failures: list[tuple[int, ValidationError]] = []
    rows: list[BaseModel] = []
    try:
        first = records[:_SLICE] if isinstance(payload["records"], list) else payload["records"]
        batch = models.batch.model_validate({**payload, "records": first})
        rows.extend(batch.records)  # type: ignore[attr-defined]
    except ValidationError as exc:
        failures.append((0, exc))
    for start in range(_SLICE, len(records), _SLICE):
        try:
            rows.extend(models.records.validate_python(records[start : start + _SLICE]))
        except ValidationError as exc:
            failures.append((start, exc))
    if failures:
        raise _invalid(failures, models, limits)
    return [row.model_dump(by_alias=True) for row in rows], True


def _invalid(
    failures: Sequence[tuple[int, ValidationError]],
    models: RequestModels,
    limits: RequestLimits,
    total: int | None = None,
) -> InvalidRequestError:
    """The 422 for failed validations, listing at most ``max_error_details`` problems and
    counting the rest; pydantic's error lists are materialised only until enough are known."""
    cap = limits.max_error_details
    located: list[ErrorDetails] = []
    for start, exc in failures:
        if len(located) >= cap:
            break
        for error in exc.errors(include_url=False)[: cap - len(located)]:
            located.append(_shifted(error, start))
    details = [_describe(error, models.columns) for error in located]
    if total is None:
        total = sum(exc.error_count() for _, exc in failures)
    hidden = total - len(details)
    fields = ", ".join(dict.fromkeys(f"'{d.field}'" for d in details))
    return InvalidRequestError(
        f"Invalid input in {fields}: fix the listed fields and retry. "
        "GET /model lists the expected columns and types." + more_problems(hidden),
        details,
    )


def _misshapen_records(columns: Sequence[InputColumn], records: list[Any]) -> dict[int, int]:
    """Records that are not objects, lack a required input or hold an unknown key, found by
    set operations before pydantic sees a value; index -> how many such problems it has."""
    known = frozenset(column.name for column in columns)
    required = frozenset(column.name for column in columns if column.required)
    found: dict[int, int] = {}
    for index, record in enumerate(records):
        if type(record) is not dict:
            found[index] = 1
            continue
        keys = record.keys()
        if not (keys <= known and required <= keys):
            found[index] = len(keys - known) + len(required - keys)
    return found


def _misshapen(
    models: RequestModels, records: list[Any], misshapen: dict[int, int], limits: RequestLimits
) -> InvalidRequestError:
    """The 422 for misshapen records: the first ones described by pydantic (each validated
    alone), the rest only counted, so 99,990 of them cost a counter, not 100 MB of errors."""
    failures: list[tuple[int, ValidationError]] = []
    for index in list(misshapen)[: limits.max_error_details]:
        try:
            models.records.validate_python([records[index]])
        except ValidationError as exc:
            failures.append((index, exc))
    validated = sum(misshapen[index] for index, _ in failures)
    total = sum(misshapen.values()) - validated + sum(exc.error_count() for _, exc in failures)
    return _invalid(failures, models, limits, total)


def _shifted(error: ErrorDetails, start: int) -> ErrorDetails:
    """An error of a slice validated alone, located as in the whole batch."""
    loc = error["loc"]
    if not loc or not isinstance(loc[0], int):
        return error
    return {**error, "loc": ("records", start + loc[0], *loc[1:])}


def to_frame(columns: Sequence[InputColumn], records: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Build the DataFrame the model was trained on: one column per input, typed as in training.

    Numbers are float64 with NaN for missing values; longs are int64 when every value is
    present; strings are object columns holding ``np.nan`` (never None) for missing values.
    """
    if all(column.type == "double" for column in columns):
        # One float64 block (None becomes NaN): ~10x faster than column by column.
        names = [column.name for column in columns]
        return pd.DataFrame(double_matrix(names, records), columns=names, copy=False)
    data = {
        column.name: _column(column, [r.get(column.name) for r in records]) for column in columns
    }
    return pd.DataFrame(data, index=pd.RangeIndex(len(records)))


def double_matrix(names: Sequence[str], records: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The records' values of ``names`` as one C-ordered float64 matrix, NaN where missing:
    what :func:`to_frame` wraps for a model whose inputs are all doubles."""
    rows = record_values(records, names)  # validated records hold every name: ~3x faster
    if rows is None:
        rows = [tuple(record.get(name) for name in names) for record in records]
    return np.array(rows, dtype=np.float64).reshape(len(records), len(names))


def loads_json(body: bytes) -> Any:
    """Decode a JSON body with orjson (several times faster on large bodies), or, when orjson
    refuses it, with Python's ``json``, which also takes NaN, Infinity and integers beyond 64
    bits, and whose error message is the one clients have always been told.

    Raises:
        ValueError: the body is not JSON (``json.JSONDecodeError``, or UnicodeDecodeError).
        RecursionError: the body nests too deeply.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "surrogate" in str(exc):
            # Python's json would accept it, and the lone surrogate would then fail every
            # UTF-8 encoding downstream (an error message echoing it, the prediction log).
            raise ValueError(
                f"a lone UTF-16 surrogate escape such as \\ud800 ({exc}): send valid "
                "Unicode text, each \\ud800-\\udbff escape followed by its \\udc00-\\udfff pair"
            ) from exc
        return json.loads(body)


def parse_numeric_batch(
    models: RequestModels, payload: Any, min_rows: int, limits: RequestLimits = DEFAULT_LIMITS
) -> pd.DataFrame | None:
    """A ``{"records": [...]}`` batch of at least ``min_rows`` records for a model whose inputs
    are all double or float, checked column-wise and built straight into the DataFrame that
    :func:`to_frame` builds from what :func:`parse_request` returns for the same body.

    Returns None whenever the vectorised checks do not apply or do not pass (fewer rows,
    another input type, an omitted or unknown field, a null in a required field, NaN, a
    string, a boolean ...): the caller then uses :func:`parse_request`, which accepts exactly
    the same bodies and names every problem.
    """
    columns = models.columns
    records = _numeric_batch_records(columns, payload, min_rows)
    if records is not None:
        check_rows(len(records), limits)
    rows = None if records is None else record_values(records, [c.name for c in columns])
    found = None if rows is None else numeric_matrix(rows)
    if found is None or not all_values_fit(columns, *found):
        return None
    matrix = found[0]
    return numeric_frame(columns, [matrix[:, i] for i in range(len(columns))], len(matrix))


def _numeric_batch_records(
    columns: Sequence[InputColumn], payload: Any, min_rows: int
) -> list[Any] | None:
    """The records of a ``{"records": [...]}`` batch the vectorised path may take: at least
    ``min_rows`` objects, each with one value per input, all inputs double or float."""
    if not (isinstance(payload, dict) and len(payload) == 1 and "records" in payload):
        return None
    records = payload["records"]
    if not isinstance(records, list) or len(records) < max(min_rows, 1):
        return None
    if not all(c.type in FLOAT_TYPES and c.name != "records" for c in columns):
        return None
    width = len(columns)
    if not all(type(record) is dict and len(record) == width for record in records):
        return None  # not an object, or an omitted or unknown field
    return records


def all_values_fit(
    columns: Sequence[InputColumn], matrix: np.ndarray, nulls: np.ndarray | None
) -> bool:
    """No value is infinite or NaN, and no required input is null."""
    problems = ~np.isfinite(matrix)
    if nulls is not None:
        required = np.array([column.required for column in columns])
        if (nulls & required).any():
            return False
        problems &= ~nulls
    return not problems.any()


def record_values(records: Sequence[Any], names: Sequence[str]) -> list[tuple[Any, ...]] | None:
    """Each record's values for ``names``, in that order (other keys are left out); None if
    a record is not a JSON object or lacks one of the names."""
    if not all(type(record) is dict for record in records):
        return None
    try:
        return list(map(_row_getter(names), records))
    except KeyError:
        return None


def numeric_matrix(rows: Sequence[Sequence[Any]]) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Decoded JSON rows (equal-length lists or tuples of numbers) as one 2-D array, and
    where the nulls were (None when there were none).

    The array is int64 when every value is an integer, else float64 with NaN for nulls. None
    when any value is something else (a string, a boolean, an array, an object ...) or the
    rows differ in length.
    """
    try:
        matrix = np.array(rows)
    except (ValueError, TypeError, OverflowError):
        return None
    if matrix.ndim != 2:
        return None
    if matrix.dtype.kind in "if":
        return None if _holds_booleans(rows, matrix) else (matrix, None)
    if matrix.dtype.kind != "O":
        return None
    flat = matrix.ravel().tolist()
    if not set(map(type, flat)) <= _NUMBER_TYPES:
        return None
    nulls = np.fromiter((value is None for value in flat), bool, len(flat))
    try:
        numbers = matrix.astype(np.float64)
    except OverflowError:  # an integer beyond float64: the value-by-value way names it
        return None
    return numbers, nulls.reshape(matrix.shape)


def _holds_booleans(rows: Sequence[Sequence[Any]], matrix: np.ndarray) -> bool:
    """Whether a numeric ``matrix`` made from ``rows`` had booleans in it: NumPy turns them
    into 1 and 0 silently, so only the cells holding 1 or 0 (usually few) are looked at."""
    suspects = np.nonzero((matrix == 0) | (matrix == 1))
    return any(
        type(rows[row][col]) is bool
        for row, col in zip(suspects[0].tolist(), suspects[1].tolist(), strict=True)
    )


def numeric_frame(
    columns: Sequence[InputColumn], values: Sequence[np.ndarray | None], n_rows: int
) -> pd.DataFrame:
    """The DataFrame :func:`to_frame` builds, from checked numeric arrays instead of records.

    ``values`` holds one 1-D int64 or float64 array per input column (NaN for missing
    values; long and integer values integral), or None for a column that was not sent.
    """
    names = [column.name for column in columns]
    if all(column.type == "double" for column in columns):
        matrix = np.full((n_rows, len(names)), np.nan)
        for index, array in enumerate(values):
            if array is not None:
                matrix[:, index] = array
        return pd.DataFrame(matrix, columns=names, copy=False)
    data = {
        column.name: _numeric_column(column, np.full(n_rows, np.nan) if array is None else array)
        for column, array in zip(columns, values, strict=True)
    }
    return pd.DataFrame(data, index=pd.RangeIndex(n_rows))


@dataclass(frozen=True)
class FramePredictions:
    """One model call's answers for a whole frame, as arrays: no object per row."""

    outputs: np.ndarray
    """Labels as the model's ``predict`` returns them (classifiers), or float64 values."""
    probabilities: np.ndarray | None
    """Float64, one row per input row and one column per class, when asked for and the
    model has ``predict_proba``; else None."""


def predict_frame(loaded: LoadedModel, frame: pd.DataFrame, *, proba: bool) -> FramePredictions:
    """Predict ``frame`` (built as :func:`to_frame` builds it) with one model call.

    Labels are what ``predict`` returns; for forests they are the argmax of the probabilities
    (what ``ForestClassifier.predict`` computes), so one call gives both, and for other
    pipelines asked for both, the preprocessing runs once for the two. Probabilities are
    computed only when ``proba`` is true, or when they are how a forest's labels are found.
    """
    return _checked(lambda: _predict(loaded, *_preprocessed(loaded, frame), proba=proba), frame)


def _checked(
    predict: Callable[[], FramePredictions], frame: pd.DataFrame | Callable[[], pd.DataFrame]
) -> FramePredictions:
    """``predict()``, with inputs the model overflows on refused as the request's fault,
    naming the extreme inputs of ``frame`` (a function building it when it was not needed)."""
    try:
        predictions = predict()
    except ValueError as exc:
        if "infinity" not in str(exc) and "too large" not in str(exc):
            raise
        raise InvalidRequestError(
            "The model's preprocessing overflowed on these values"
            + _extreme_fields(frame)
            + ": send values in the range the model was trained on (GET /model lists the inputs)."
        ) from exc
    if not _all_finite(predictions):
        # Extreme but finite inputs (1e99, 1.79e308) can overflow inside the model: NaN
        # probabilities or an infinite value would break every protocol's response schema.
        raise InvalidRequestError(
            "The model's output is not a finite number for these values"
            + _extreme_fields(frame)
            + ": send values in the range the model was trained on (GET /model lists the inputs)."
        )
    return predictions


def _all_finite(predictions: FramePredictions) -> bool:
    outputs, probabilities = predictions.outputs, predictions.probabilities
    if outputs.dtype.kind == "f" and not bool(np.isfinite(outputs).all()):
        return False
    return probabilities is None or bool(np.isfinite(probabilities).all())


def _extreme_fields(frame: pd.DataFrame | Callable[[], pd.DataFrame]) -> str:
    numeric = (frame if isinstance(frame, pd.DataFrame) else frame()).select_dtypes("number")
    if numeric.empty:
        return ""
    magnitude = numeric.abs().max()
    extreme = [str(name) for name, value in magnitude.items() if value >= 1e15]
    return f" (extreme values in {', '.join(repr(n) for n in extreme)})" if extreme else ""


def _predict(
    loaded: LoadedModel, features: Any, final: Any, answers: Answers | None, *, proba: bool
) -> FramePredictions:
    """The answers of ``final``, the estimator after the preprocessing, for ``features``
    (labels and probabilities from ``answers`` in one pass, when there is such a function)."""
    if loaded.task == "regression":
        return FramePredictions(np.asarray(final.predict(features), dtype=float), None)
    if loaded.has_proba and labels_follow_proba(final):
        probabilities = forest_proba(final, features, loaded.walk)
        # What ForestClassifier.predict does with the same probabilities: one call, not two.
        labels = np.asarray(final.classes_).take(np.argmax(probabilities, axis=1), axis=0)
        return FramePredictions(labels, probabilities if proba else None)
    if proba and loaded.has_proba and answers is not None:
        labels, probabilities = answers(features)
        return FramePredictions(labels, probabilities)
    labels = np.asarray(final.predict(features))
    if not (proba and loaded.has_proba):
        return FramePredictions(labels, None)
    return FramePredictions(labels, np.asarray(final.predict_proba(features), dtype=float))


def _preprocessed(loaded: LoadedModel, frame: pd.DataFrame) -> tuple[Any, Any, Answers | None]:
    """What the model's preprocessing makes of ``frame``, the estimator to call on it, and
    its one-pass answers if it has them.

    A pipeline's predict methods transform with every step but the last, then call the last:
    done here once for both labels and probabilities, since the preprocessing costs far more
    than a small estimator (``ColumnTransformer``: about 1.5 ms per call whatever the rows).
    The NumPy replay of the preprocessing is used when the model has one and ``frame`` is
    the float64 input frame it takes; it returns the same array, bit for bit.
    """
    estimator = loaded.estimator
    fast = loaded.replay
    if fast is not None:
        matrix = fast.matrix(frame)
        if matrix is not None:
            return fast.transform(matrix), fast.final, fast.answers
    if isinstance(estimator, Pipeline) and len(estimator) > 1:
        return estimator[:-1].transform(frame), estimator[-1], None
    return frame, estimator, None


def prediction_rows(loaded: LoadedModel, predictions: FramePredictions) -> list[PredictionRow]:
    """Plain JSON-ready rows: ``{"label", "confidence", "probabilities"}`` for classifiers
    (the last two None without probabilities), ``{"value"}`` for regressors."""
    if loaded.task == "regression":
        return [{"value": value} for value in predictions.outputs.tolist()]
    labels = [to_native(label) for label in predictions.outputs.tolist()]
    if predictions.probabilities is None:
        return [{"label": label, "confidence": None, "probabilities": None} for label in labels]
    names = [str(c) for c in loaded.classes or ()]
    confidences = predictions.probabilities.max(axis=1).tolist()
    return [
        {
            "label": label,
            "confidence": confidence,
            "probabilities": dict(zip(names, row, strict=True)),
        }
        for label, confidence, row in zip(
            labels, confidences, predictions.probabilities.tolist(), strict=True
        )
    ]


def predict_rows(loaded: LoadedModel, records: Sequence[Mapping[str, Any]]) -> list[PredictionRow]:
    """Predict every record with one model call; plain JSON-ready rows.

    Classifiers: ``{"label", "confidence", "probabilities"}`` (the last two None without
    ``predict_proba``); regressors: ``{"value"}``. This is what every protocol formats.
    """
    fast = loaded.replay
    if fast is not None:
        # The matrix to_frame would wrap, straight into the NumPy replay: no DataFrame. An
        # infinity goes the DataFrame way, for scikit-learn's own refusal.
        matrix = double_matrix(fast.names, records)
        if not np.isinf(matrix).any():
            predictions = _checked(
                lambda: _predict(
                    loaded, fast.transform(matrix), fast.final, fast.answers, proba=True
                ),
                lambda: to_frame(loaded.columns, records),
            )
            return prediction_rows(loaded, predictions)
    frame = to_frame(loaded.columns, records)
    return prediction_rows(loaded, predict_frame(loaded, frame, proba=True))


def predict(loaded: LoadedModel, records: Sequence[Mapping[str, Any]]) -> list[Prediction]:
    """Predict every record with one call to the model, as typed predictions."""
    if loaded.task == "regression":
        return [RegressionPrediction(**row) for row in predict_rows(loaded, records)]
    return [ClassPrediction(**row) for row in predict_rows(loaded, records)]


def warm_up_records(loaded: LoadedModel) -> tuple[list[Record], bool]:
    """Records to warm a freshly loaded model with: its logged input example, or else one
    synthetic row from the signature. Returns them and whether they are the logged example."""
    if loaded.input_example:
        return [dict(record) for record in loaded.input_example], True
    synthetic: Record = {
        column.name: COLUMN_TYPES[column.type].zero if column.required else None
        for column in loaded.columns
    }
    return [synthetic], False


def _row_getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple[Any, ...]]:
    """A function that returns a record's values for ``names``, as a tuple, in that order."""
    if len(names) == 1:
        name = names[0]
        return lambda record: (record[name],)
    getter: Callable[[Mapping[str, Any]], tuple[Any, ...]] = operator.itemgetter(*names)
    return getter


def _numeric_column(column: InputColumn, values: np.ndarray) -> pd.Series:
    """What :func:`_column` makes of the same values (NaN for missing ones)."""
    if column.type in FLOAT_TYPES:
        return pd.Series(values, dtype=COLUMN_TYPES[column.type].dtype)
    if values.dtype.kind == "f" and np.isnan(values).any():
        return pd.Series(values, dtype="float64")
    return pd.Series(values.astype(COLUMN_TYPES[column.type].dtype))


def _column(column: InputColumn, values: list[Any]) -> pd.Series:
    missing = any(value is None for value in values)
    if column.type in FLOAT_TYPES:
        dtype = COLUMN_TYPES[column.type].dtype
        return pd.Series([np.nan if v is None else v for v in values], dtype=dtype)
    if column.type in INTEGER_TYPES:
        if missing:
            return pd.Series([np.nan if v is None else v for v in values], dtype="float64")
        return pd.Series(values, dtype=COLUMN_TYPES[column.type].dtype)
    if column.type == "boolean" and not missing:
        return pd.Series(values, dtype="bool")
    return pd.Series([np.nan if v is None else v for v in values], dtype=object)


def _describe(error: ErrorDetails, columns: Sequence[InputColumn]) -> ErrorDetail:
    """One pydantic error as a field path and a message that says how to fix it."""
    loc = error["loc"]
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    name = str(loc[-1]) if loc else "body"
    column = next((c for c in columns if c.name == name), None)
    message = (
        _shape_message(error, name, column, columns)
        or (_value_message(error, name, column) if column is not None else None)
        or _body_message(error, name)
    )
    return ErrorDetail(field=path or "body", message=message)


def _shape_message(
    error: ErrorDetails, name: str, column: InputColumn | None, columns: Sequence[InputColumn]
) -> str | None:
    """A field missing, unknown or not finite, whatever its column; else None."""
    kind = error["type"]
    if kind == "missing":
        expected = f" ({column.type})" if column else ""
        return f"'{name}' is required{expected}: send a value for it."
    if kind == "extra_forbidden":
        expected = ", ".join(c.name for c in columns)
        return f"'{name}' is not an input of this model: remove it. Expected fields: {expected}."
    if kind == "finite_number":
        return f"'{name}' must be a finite number: NaN and Infinity are not accepted."
    return None


def _value_message(error: ErrorDetails, name: str, column: InputColumn) -> str:
    """A value of an input column that its type refuses."""
    value, expected = error.get("input"), COLUMN_TYPES[column.type].json_kind
    if value is None:
        return f"'{name}' is required and cannot be null: send {expected} ({column.type})."
    if error["type"] in ("greater_than_equal", "less_than_equal") or json_kind(value) == expected:
        # The right kind of value, refused anyway: beyond what the column's type can hold.
        return f"'{name}' is out of range for {column.type}: send a smaller value."
    return f"'{name}' must be {expected} ({column.type}), got {json_kind(value)}."


def _body_message(error: ErrorDetails, name: str) -> str:
    """The body or its ``records`` list in the wrong shape."""
    kind, value = error["type"], error.get("input")
    if name == "records" and kind == "too_short":
        return "'records' is empty: send at least one record."
    if name == "records":
        return f"'records' must be a list of records (JSON objects), got {json_kind(value)}."
    if kind in ("model_type", "dict_type"):
        return f"each record must be a JSON object of feature values, got {json_kind(value)}."
    return str(error["msg"])


def json_kind(value: Any) -> str:
    """How a JSON value reads in a message: 'a string', 'an array' ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
