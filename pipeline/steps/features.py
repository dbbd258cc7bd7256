"""The model as one scikit-learn Pipeline (preprocessing + estimator) and the train/test split.

Serving loads this exact object, so the transforms applied at prediction time are the ones
fitted at training time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, RobustScaler, StandardScaler

from pipeline.config import PipelineConfig
from pipeline.errors import DataValidationError
from pipeline.steps.ingest import Dataset

_SCALERS: dict[str, Any] = {
    "standard": StandardScaler(),
    "minmax": MinMaxScaler(),
    "robust": RobustScaler(),
}


@dataclass(frozen=True)
class Split:
    X_train: pd.DataFrame
    X_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series


def row_hashes(X: pd.DataFrame, y: pd.Series, columns: list[str]) -> np.ndarray:
    """One 64-bit fingerprint per row over `columns` (sorted) and the target."""
    frame = X[columns].assign(__target__=y.to_numpy())
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)


def split(config: PipelineConfig, dataset: Dataset) -> Split:
    """Deterministic held-out split: the same config and data always give the same rows."""
    _check_feasible(config, dataset)
    stratify = dataset.y if config.stratified else None
    X_train, X_test, y_train, y_test = train_test_split(
        dataset.X,
        dataset.y,
        test_size=config.split.test_size,
        random_state=config.split.seed,
        stratify=stratify,
    )
    result = Split(X_train=X_train, X_test=X_test, y_train=y_train, y_test=y_test)
    _check_cross_validation(config, result)
    return result


def _check_feasible(config: PipelineConfig, dataset: Dataset) -> None:
    rows = dataset.rows
    held_out = math.ceil(config.split.test_size * rows)
    training = rows - held_out
    if held_out < 2 or training < 2:
        raise DataValidationError(
            f"split.test_size {config.split.test_size} leaves {training} training and "
            f"{held_out} held-out rows of {rows}; choose a test_size that keeps at least two "
            "rows on each side"
        )
    if config.stratified:
        classes = dataset.y.nunique()
        if held_out < classes or training < classes:
            raise DataValidationError(
                f"split.test_size {config.split.test_size} gives {held_out} held-out and "
                f"{training} training rows for {classes} classes; a stratified split needs at "
                "least one row per class on each side: change split.test_size or add rows"
            )


def _check_cross_validation(config: PipelineConfig, data_split: Split) -> None:
    folds = config.split.cv_folds
    if len(data_split.y_train) < folds:
        raise DataValidationError(
            f"split.cv_folds {folds} exceeds the {len(data_split.y_train)} training rows; "
            "lower split.cv_folds or add rows"
        )
    if config.task == "classification":
        counts = data_split.y_train.value_counts()
        if counts.min() < folds:
            raise DataValidationError(
                f"split.cv_folds {folds} exceeds the {int(counts.min())} training rows of "
                f"class {counts.idxmin()!r}; lower split.cv_folds or add rows of that class"
            )


def build_model(config: PipelineConfig, dataset: Dataset) -> Pipeline:
    """An unfitted Pipeline: imputation, scaling and one-hot encoding, then the estimator."""
    prep = config.preprocessing
    transformers = []
    if dataset.numeric_features:
        numeric_steps: list[tuple[str, Any]] = [
            ("impute", SimpleImputer(strategy=prep.numeric_imputation, fill_value=0.0))
        ]
        if prep.scaling != "none":
            numeric_steps.append(("scale", clone(_SCALERS[prep.scaling])))
        transformers.append(("numeric", Pipeline(numeric_steps), list(dataset.numeric_features)))
    if dataset.categorical_features:
        categorical = Pipeline(
            [
                (
                    "impute",
                    SimpleImputer(strategy=prep.categorical_imputation, fill_value="missing"),
                ),
                (
                    "one_hot",
                    OneHotEncoder(
                        handle_unknown="ignore",
                        sparse_output=False,
                        max_categories=prep.one_hot_max_categories,
                    ),
                ),
            ]
        )
        transformers.append(("categorical", categorical, list(dataset.categorical_features)))
    estimator = config.estimator.build()
    if "random_state" in estimator.get_params() and estimator.get_params()["random_state"] is None:
        estimator.set_params(random_state=config.split.seed)
    return Pipeline(
        [
            ("preprocess", ColumnTransformer(transformers, remainder="drop")),
            ("model", estimator),
        ]
    )
