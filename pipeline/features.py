"""The model as one scikit-learn Pipeline (preprocessing + estimator) and the train/test split.

Serving loads this exact object, so the transforms applied at prediction time are the ones
fitted at training time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MinMaxScaler, OneHotEncoder, RobustScaler, StandardScaler

from pipeline.config import PipelineConfig
from pipeline.ingest import Dataset

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


def split(config: PipelineConfig, dataset: Dataset) -> Split:
    """Deterministic held-out split: the same config and data always give the same rows."""
    stratify = dataset.y if config.task == "classification" and config.split.stratify else None
    X_train, X_test, y_train, y_test = train_test_split(
        dataset.X,
        dataset.y,
        test_size=config.split.test_size,
        random_state=config.split.seed,
        stratify=stratify,
    )
    return Split(X_train=X_train, X_test=X_test, y_train=y_train, y_test=y_test)


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
