"""Ingest + validate: load the configured source and check it against the config's contract.

Nothing is logged or registered here: a data set that breaks the contract stops the pipeline
before any MLflow run exists, so a bad file leaves the tracking store and registry untouched.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn import datasets as sklearn_datasets

from pipeline.config import PipelineConfig
from pipeline.errors import DataValidationError

logger = logging.getLogger(__name__)

# Under this share of the rarest class, accuracy says little: a model that always answers the
# majority class scores 1 - share.
IMBALANCE_SHARE = 0.10


@dataclass(frozen=True)
class Dataset:
    """A validated data set: features typed as the model will see them, plus the target."""

    frame: pd.DataFrame
    target: str
    numeric_features: tuple[str, ...]
    categorical_features: tuple[str, ...]
    data_hash: str
    source: str

    @property
    def features(self) -> list[str]:
        return [*self.numeric_features, *self.categorical_features]

    @property
    def X(self) -> pd.DataFrame:
        return self.frame[self.features]

    @property
    def y(self) -> pd.Series:
        return self.frame[self.target]

    @property
    def rows(self) -> int:
        return len(self.frame)


def run(config: PipelineConfig) -> Dataset:
    """Load the configured data and validate it; raises `DataValidationError` naming the column."""
    raw = _load(config)
    data_hash = hash_frame(raw)
    dataset = _validate(raw, config, data_hash)
    # Said when the data is first validated (the `validate` step), before any training; the
    # training run records the same words as a tag (evaluate).
    warning = imbalance_warning(config, dataset.y)
    if warning is not None:
        logger.warning("gate.metric %s: %s", config.gate.metric, warning)
    logger.info(
        "Validated %s: %d rows, %d numeric and %d categorical features, data hash %s",
        dataset.source,
        dataset.rows,
        len(dataset.numeric_features),
        len(dataset.categorical_features),
        data_hash[:12],
    )
    return dataset


def imbalance_warning(config: PipelineConfig, y: pd.Series) -> str | None:
    """Why the gate metric may mislead on these labels, or None: accuracy with a rare class."""
    if config.task != "classification" or config.gate_metric.name != "accuracy":
        return None
    shares = y.value_counts(normalize=True)
    if len(shares) < 2 or shares.min() >= IMBALANCE_SHARE:
        return None
    return (
        f"class {shares.idxmin()!r} is {shares.min():.1%} of the rows: a model that always "
        f"answers {shares.idxmax()!r} scores accuracy {shares.max():.3f}. Gate on test_roc_auc, "
        "test_f1_macro or test_log_loss instead (the baseline check still guards accuracy)"
    )


def hash_frame(frame: pd.DataFrame) -> str:
    """SHA-256 over every column name, dtype and value of every row of the frame as read."""
    digest = hashlib.sha256()
    for name, dtype in frame.dtypes.items():
        digest.update(f"{name}:{dtype};".encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def _load(config: PipelineConfig) -> pd.DataFrame:
    if config.data.dataset is not None:
        return _load_sklearn(config.data.dataset, config.data.target, config.task)
    path = config.data_path
    assert path is not None  # the config guarantees exactly one source
    return _read_file(path, _used_columns(config))


def _used_columns(config: PipelineConfig) -> set[str] | None:
    """The columns to read: target and features when the config lists both kinds, else all."""
    declared = config.data.features
    if declared.numeric is None or declared.categorical is None:
        return None  # the kinds of the other columns are inferred from the data
    return {config.data.target, *declared.numeric, *declared.categorical}


def _load_sklearn(name: str, target: str, task: str) -> pd.DataFrame:
    bunch = getattr(sklearn_datasets, f"load_{name}")(as_frame=True)
    frame = bunch.frame.rename(columns=_snake_case)
    labels = bunch.target
    if task == "classification":
        # Train on the real label values, so the model's classes_ are what users read.
        labels = pd.Series(np.asarray(bunch.target_names)[bunch.target], name=target)
    frame = frame.drop(columns=["target"]).assign(**{target: labels.to_numpy()})
    return frame


def _snake_case(column: str) -> str:
    return re.sub(r"[^0-9a-zA-Z]+", "_", column).strip("_").lower()


def _read_file(path: Path, used: set[str] | None) -> pd.DataFrame:
    """The file's columns in `used` (all of them if None, or if one is missing: the
    validation then names it and lists the file's columns)."""
    try:
        frame = _read_columns(path, used)
        if used is not None and not used <= set(frame.columns):
            frame = _read_columns(path, None)
        return frame
    except pd.errors.EmptyDataError as exc:
        raise DataValidationError(
            f"data file '{path}' is empty: it has no header and no rows"
        ) from exc
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataValidationError(f"data file '{path}' cannot be read: {message}") from exc


def _read_columns(path: Path, used: set[str] | None) -> pd.DataFrame:
    # Columns the config does not use are never parsed: on wide files they are most of the
    # reading time and memory.
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path, usecols=None if used is None else lambda name: name in used)
    if used is None:
        return pd.read_parquet(path)
    names = pq.read_schema(path).names
    return pd.read_parquet(path, columns=[name for name in names if name in used])


def _validate(raw: pd.DataFrame, config: PipelineConfig, data_hash: str) -> Dataset:
    source = config.source_description
    target = config.data.target
    if raw.empty:
        raise DataValidationError(f"data '{source}' has no rows; provide a file with data rows")
    if target not in raw.columns:
        raise DataValidationError(
            f"target column '{target}' not found in '{source}'; "
            f"columns are: {', '.join(map(str, raw.columns))}"
        )
    missing_target = int(raw[target].isna().sum())
    if missing_target:
        raise DataValidationError(
            f"target column '{target}' has {missing_target} missing values in {len(raw)} rows "
            f"(first at row {_first_row(raw[target].isna())}); drop or fill those rows"
        )
    numeric, categorical = _feature_columns(raw, config)
    frame = pd.DataFrame(index=raw.index)
    for column in numeric:
        frame[column] = _as_numeric(raw[column], column, "numeric feature")
    for column in categorical:
        frame[column] = _as_category_strings(raw[column])
    for column in (*numeric, *categorical):
        if frame[column].isna().all():
            raise DataValidationError(
                f"feature column '{column}' is missing in all {len(raw)} rows; "
                "remove it from the data or the config"
            )
    frame[target] = _check_target(raw[target], config)
    return Dataset(
        frame=frame.reset_index(drop=True),
        target=target,
        numeric_features=numeric,
        categorical_features=categorical,
        data_hash=data_hash,
        source=source,
    )


def _feature_columns(
    raw: pd.DataFrame, config: PipelineConfig
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(numeric, categorical): each kind as the config lists it, else inferred from dtypes."""
    declared = config.data.features
    _require_declared_columns(raw, config)
    inferred_numeric, inferred_categorical = _infer_undeclared(raw, config)
    numeric = inferred_numeric if declared.numeric is None else tuple(declared.numeric)
    categorical = (
        inferred_categorical if declared.categorical is None else tuple(declared.categorical)
    )
    if not numeric and not categorical:
        raise DataValidationError(
            f"'{config.source_description}' has no feature columns besides the target "
            f"'{config.data.target}'"
        )
    return numeric, categorical


def _require_declared_columns(raw: pd.DataFrame, config: PipelineConfig) -> None:
    declared = config.data.features
    for column in (*(declared.numeric or ()), *(declared.categorical or ())):
        if column not in raw.columns:
            raise DataValidationError(
                f"feature column '{column}' declared in the config is not in "
                f"'{config.source_description}'; columns are: {', '.join(map(str, raw.columns))}"
            )


def _infer_undeclared(
    raw: pd.DataFrame, config: PipelineConfig
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Kinds of the columns the config does not list, by dtype; none if it lists both kinds."""
    declared = config.data.features
    if declared.numeric is not None and declared.categorical is not None:
        return (), ()  # both kinds listed: the config chose the features, others are ignored
    listed = {config.data.target, *(declared.numeric or ()), *(declared.categorical or ())}
    undeclared = [column for column in raw.columns if column not in listed]
    numeric = tuple(column for column in undeclared if _is_numeric(raw[column]))
    categorical = tuple(column for column in undeclared if not _is_numeric(raw[column]))
    for column in categorical:
        _refuse_ambiguous_column(raw[column], column)
    return numeric, categorical


def _refuse_ambiguous_column(column: pd.Series, name: str) -> None:
    """An undeclared text column that is really numbers with typos, or dates, is refused.

    One-hot encoding either would train silently on nonsense categories.
    """
    dates = (
        "column '{name}' holds dates, which the model cannot use as they are; list the "
        "features in the config to leave it out, or derive numbers from it"
    )
    if pd.api.types.is_datetime64_any_dtype(column):
        raise DataValidationError(dates.format(name=name))
    present = column.dropna()
    if present.empty or pd.api.types.is_bool_dtype(column):
        return
    numbers = pd.to_numeric(present, errors="coerce")
    bad = numbers.isna()
    if bad.sum() > 0 and bad.mean() <= 0.1:
        example = present[bad].iloc[0]
        raise DataValidationError(
            f"column '{name}' looks numeric but has {int(bad.sum())} non-numeric values in "
            f"{len(column)} rows (e.g. {example!r}); fix them, or list '{name}' under "
            "data.features.categorical if it really is a category"
        )
    as_text = present.astype(str)
    parsed = pd.to_datetime(as_text, errors="coerce", format="ISO8601")
    if parsed.notna().mean() >= 0.9:
        raise DataValidationError(dates.format(name=name))


def _is_numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)


def _as_numeric(column: pd.Series, name: str, role: str) -> pd.Series:
    converted = column if _is_numeric(column) else _parse_numbers(column, name, role)
    infinite = pd.Series(np.isinf(converted.to_numpy(dtype=float)), index=column.index)
    if infinite.any():
        raise DataValidationError(
            f"{role} '{name}' has {int(infinite.sum())} infinite values in {len(column)} rows "
            f"(first at row {_first_row(infinite)}); replace them with numbers or leave them empty"
        )
    return converted


def _parse_numbers(column: pd.Series, name: str, role: str) -> pd.Series:
    converted = pd.to_numeric(column, errors="coerce")
    bad = converted.isna() & column.notna()
    if bad.any():
        example = column[bad].iloc[0]
        raise DataValidationError(
            f"{role} '{name}' has {int(bad.sum())} non-numeric values in {len(column)} rows "
            f"(e.g. {example!r} at row {_first_row(bad)}); fix them"
            + (" or declare it categorical" if role == "numeric feature" else "")
        )
    return converted


def _as_category_strings(column: pd.Series) -> pd.Series:
    # Category dtype: one small code per row, each distinct value converted once. The logged
    # signature still declares an optional string column (MLflow types a category column by its
    # values), and HistGradientBoosting's native categories take it as it is. Values are
    # spelled the way a client would send them: 3 not "3.0" (pandas reads integer codes with
    # gaps as floats), true/false not "True"/"False".
    codes, distinct = pd.factorize(column)  # a gap gets the code -1, which stays a gap
    texts = [_category_text(value) for value in distinct]
    categories, merged = np.unique(np.array(texts, dtype=object), return_inverse=True)
    # Distinct values may share a spelling (3 and "3" in an object column): one category.
    # The appended -1 is what code -1 (a gap) looks up.
    recoded = np.append(merged, -1)[codes]
    values = pd.Categorical.from_codes(recoded, categories=pd.Index(categories, dtype=object))
    return pd.Series(values, index=column.index, name=column.name)


def _category_text(value: object) -> str:
    if isinstance(value, bool | np.bool_):
        return "true" if value else "false"
    if isinstance(value, float | np.floating) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _check_target(column: pd.Series, config: PipelineConfig) -> pd.Series:
    target = config.data.target
    if config.task == "regression":
        return _as_numeric(column, target, "regression target")
    counts = column.value_counts()
    if len(counts) < 2:
        raise DataValidationError(
            f"target column '{target}' has a single class {counts.index[0]!r} in {len(column)} "
            "rows; a classifier needs at least two classes"
        )
    if config.stratified and counts.min() < 2:
        rare = counts[counts < 2].index.tolist()
        raise DataValidationError(
            f"target column '{target}' has classes with a single row ({rare!r}); a stratified "
            "split needs at least two rows per class: add rows or set split.stratify: false"
        )
    return column


def _first_row(mask: pd.Series) -> int:
    # Row numbers as a person counts them in the file: 1 is the first data row.
    return int(np.flatnonzero(mask.to_numpy())[0]) + 1
