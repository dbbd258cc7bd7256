"""The model signature and dataset schema MLflow would infer, without its walk over every value.

MLflow decides a column's type and whether it may be missing by iterating over every value in
Python (and `from_pandas` digests the frame by calling `type` on every cell): about half of the
training step on a million rows. Both facts follow from much less. A typed column's type is its
dtype, and it may be missing exactly when `isna().any()`; a text-like column's (object,
category, string) type is decided by its distinct values. So MLflow's own inference runs on a
representative frame that holds, per column, the first row of every distinct value (text-like)
or the first row and the first missing one (typed), and gives the schema it gives on the whole
frame, to the last `required` flag.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
from mlflow.data.pandas_dataset import PandasDataset, from_pandas
from mlflow.models import ModelSignature, infer_signature
from mlflow.types import Schema
from sklearn.pipeline import Pipeline

logger = logging.getLogger(__name__)

# Rows predicted for the output schema: its type is the predictions' dtype, whatever the rows.
_PREDICTED_ROWS = 5


def schema(frame: pd.DataFrame) -> Schema:
    """The column schema MLflow infers for `frame`: each column's type and `required` flag."""
    inputs = _infer(_representative(frame)).inputs
    assert isinstance(inputs, Schema)  # a DataFrame always gives a column schema
    return inputs


def model_signature(X: pd.DataFrame, model: Pipeline) -> ModelSignature:
    """What `infer_signature(X, model.predict(X))` gives, predicting only a few rows."""
    return _infer(_representative(X), model.predict(X.head(_PREDICTED_ROWS)))


def _infer(frame: pd.DataFrame, predicted: np.ndarray | None = None) -> ModelSignature:
    with warnings.catch_warnings():
        # MLflow hints that integer columns cannot hold gaps and advises inferring from the
        # whole training set: the representative rows hold each column's first gap, so they do.
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        return infer_signature(frame, predicted)


def dataset_input(
    frame: pd.DataFrame, *, source: str, targets: str, name: str, digest: str
) -> PandasDataset:
    """`mlflow.data.from_pandas` of `frame`, with our digest and the schema of `schema`."""
    # The digest is given: MLflow's would call `type` on every cell of the frame.
    data = from_pandas(frame, source=source, targets=targets, name=name, digest=digest)
    # `schema` is a cached property: giving it its value spares MLflow's walk over every value.
    data.__dict__["schema"] = schema(frame)
    return data


def _representative(frame: pd.DataFrame) -> pd.DataFrame:
    """A few rows of each column that decide its inferred type and `required` flag."""
    if frame.empty:
        return frame
    chosen = [_deciding_rows(frame[name]) for name in frame.columns]
    length = max(len(rows) for rows in chosen)
    # Columns differ in how many rows they need; repeating a row changes neither fact.
    return pd.DataFrame(
        {
            name: frame[name].iloc[np.resize(rows, length)].reset_index(drop=True)
            for name, rows in zip(frame.columns, chosen, strict=True)
        }
    )


def _deciding_rows(column: pd.Series) -> np.ndarray:
    if column.dtype.kind == "O":  # object, category and string dtypes: typed by their values
        try:
            return np.flatnonzero(~column.duplicated().to_numpy())
        except TypeError:  # unhashable values (lists, dicts): only all of them decide
            return np.arange(len(column))
    missing = column.isna().to_numpy()
    return np.array([0, int(missing.argmax())]) if missing.any() else np.array([0])
