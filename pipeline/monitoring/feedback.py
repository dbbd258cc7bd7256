"""Feedback: labels that arrive after the prediction, appended to the log as one part.

The user's file (CSV or Parquet) names each prediction by the `request_id` the server returned
in its `X-Request-ID` header and, for requests with several records, the record's `row`
(0 when left out). Labels are checked against the task before anything is written, so a bad
file leaves the log as it was; a later label for the same prediction replaces an earlier one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import PipelineConfig
from pipeline.errors import DataValidationError
from pipeline.monitoring.prediction_log import PredictionLog

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("request_id", "label")
SUFFIXES = frozenset({".csv", ".parquet", ".pq"})
_LAYOUT = "it needs the columns request_id and label, and optionally row (default 0)"


@dataclass(frozen=True)
class FeedbackResult:
    model_name: str
    rows: int
    path: Path


def run(config: PipelineConfig, file: str | Path) -> FeedbackResult:
    """Validate the labels in `file` and write them as a feedback part of the model's log."""
    source = Path(file)
    labels = validate_labels(_read(source), config.task, source=str(source))
    log = PredictionLog(Path(config.monitoring.log_dir), config.registered_model)
    path = log.write_feedback(labels, task=config.task)
    return FeedbackResult(model_name=config.registered_model, rows=len(labels), path=path)


def validate_labels(frame: pd.DataFrame, task: str, *, source: str) -> pd.DataFrame:
    """request_id (text), row (int >= 0) and label (text or number, by task), or an error."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataValidationError(
            f"feedback file '{source}' has no column {', '.join(repr(c) for c in missing)}; "
            f"{_LAYOUT} (its columns are: {', '.join(map(str, frame.columns))})"
        )
    if frame.empty:
        raise DataValidationError(f"feedback file '{source}' has no rows; add one label per row")
    extra = [c for c in frame.columns if c not in (*REQUIRED_COLUMNS, "row")]
    if extra:
        logger.info("Ignoring columns %s of %s", extra, source)
    for column in REQUIRED_COLUMNS:
        gaps = frame[column].isna() | (frame[column].astype(str).str.strip() == "")
        if gaps.any():
            raise DataValidationError(
                f"column '{column}' of feedback file '{source}' is empty in {int(gaps.sum())} "
                f"rows (first at row {_first_row(gaps)}); every label needs a request_id and "
                "a label"
            )
    labels = pd.DataFrame(
        {
            "request_id": frame["request_id"].map(_text).astype(str),
            "row": _rows(frame, source),
            "label": _labels(frame["label"], task, source),
        }
    )
    duplicated = labels.duplicated(["request_id", "row"], keep=False)
    if duplicated.any():
        first = labels[duplicated].iloc[0]
        same = (labels["request_id"] == first["request_id"]) & (labels["row"] == first["row"])
        raise DataValidationError(
            f"feedback file '{source}' labels request_id {first['request_id']!r} row "
            f"{first['row']} {int(same.sum())} times; keep one label per prediction "
            "(a later file replaces earlier labels)"
        )
    return labels.reset_index(drop=True)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataValidationError(f"feedback file '{path}' not found; pass an existing file")
    if path.suffix.lower() not in SUFFIXES:
        raise DataValidationError(
            f"feedback file '{path}' must be a .csv or .parquet file; {_LAYOUT}"
        )
    try:
        if path.suffix.lower() == ".csv":
            # Text as written: a label "01" or an id "007" must not turn into a number.
            return pd.read_csv(path, dtype=str)
        return pd.read_parquet(path)
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(
            f"feedback file '{path}' is empty: it has no header and no rows; {_LAYOUT}"
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataValidationError(f"feedback file '{path}' cannot be read: {message}") from exc


def _rows(frame: pd.DataFrame, source: str) -> pd.Series:
    if "row" not in frame.columns:
        return pd.Series(0, index=frame.index, dtype="int64")
    raw = frame["row"]
    numbers = pd.to_numeric(raw, errors="coerce")
    bad = numbers.isna() | (numbers < 0) | (numbers.fillna(0) % 1 != 0)
    if bad.any():
        example = raw[bad].iloc[0]
        raise DataValidationError(
            f"column 'row' of feedback file '{source}' must hold whole numbers >= 0 (the "
            f"record's index within its request); {int(bad.sum())} rows do not (e.g. "
            f"{example!r} at row {_first_row(bad)}); leave the column out for single-record "
            "requests"
        )
    return numbers.astype("int64")


def _labels(column: pd.Series, task: str, source: str) -> pd.Series:
    if task == "regression":
        numbers = pd.to_numeric(column, errors="coerce")
        bad = numbers.isna() | ~np.isfinite(numbers.fillna(0).to_numpy(dtype=float))
        if bad.any():
            raise DataValidationError(
                f"column 'label' of feedback file '{source}' must hold numbers for a regression "
                f"model; {int(bad.sum())} rows do not (e.g. {column[bad].iloc[0]!r} at row "
                f"{_first_row(bad)})"
            )
        return numbers.astype("float64")
    return column.map(_text).astype(str)


def _text(value: object) -> str:
    # Spelled as the server logs the class label: str() of the label, 3 not "3.0" when a
    # Parquet writer stored whole numbers as floats.
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _first_row(mask: pd.Series) -> int:
    # Row numbers as a person counts them in the file: 1 is the first data row.
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1
