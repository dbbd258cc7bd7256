"""The model as one scikit-learn Pipeline (preprocessing + estimator) and the train/test split.

Serving loads this exact object, so the transforms applied at prediction time are the ones
fitted at training time.

Preprocessing fits the estimator (``preprocessing.kind``): linear and distance-based models get
imputation, scaling and one-hot encoding; tree models get no scaling and ordinal category
codes, and ``HistGradientBoosting*`` keeps its native handling of missing values and
categories, which scaling + one-hot would throw away.

Row identity (:func:`row_hashes`) does not depend on dtypes: the same row read from a CSV
(integers) and from the prediction log (floats) has the same fingerprint, so the gate can prove
a comparison row was never trained on.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
from sklearn.base import clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.model_selection import StratifiedKFold, TunedThresholdClassifierCV, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import (
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
)

from pipeline.config import PipelineConfig
from pipeline.errors import DataValidationError
from pipeline.steps.ingest import Dataset

logger = logging.getLogger(__name__)

ROW_IDENTITY_VERSION = 2
"""Version of :func:`row_hashes`, recorded beside the fingerprints of a run's training rows;
version 1 hashed values with their dtype (int 3 and float 3.0 differed)."""
# HistGradientBoosting takes at most max_bins (255) categories per feature; rarer ones are
# grouped by the encoder.
_NATIVE_MAX_CATEGORIES = 255
_TREE_NAME_PARTS = ("Forest", "Tree", "GradientBoosting", "XGB", "LGBM")

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
    train_hashes: np.ndarray | None = field(default=None, repr=False, compare=False)
    test_hashes: np.ndarray | None = field(default=None, repr=False, compare=False)
    """Row fingerprints (:func:`row_hashes` over the sorted columns), kept by :func:`split`,
    which computes them anyway: training records the training rows' and the gate compares
    both, each a pass over every row otherwise."""

    def row_hashes(self) -> tuple[np.ndarray, np.ndarray]:
        """(training, held-out) row fingerprints over the sorted feature columns."""
        if self.train_hashes is not None and self.test_hashes is not None:
            return self.train_hashes, self.test_hashes
        columns = sorted(str(c) for c in self.X_train.columns)
        return (
            row_hashes(self.X_train, self.y_train, columns),
            row_hashes(self.X_test, self.y_test, columns),
        )


def row_hashes(
    X: pd.DataFrame, y: pd.Series, columns: list[str], *, version: int = ROW_IDENTITY_VERSION
) -> np.ndarray:
    """One 64-bit fingerprint per row over `columns` and the target.

    Numbers are hashed as float64 (an integer column read back as floats keeps its
    fingerprints), everything else as text, every missing value alike. ``version=1`` gives the
    dtype-dependent fingerprints that runs recorded before, to read their artifacts.
    """
    if version == 1:
        frame = X[columns].assign(__target__=y.to_numpy())
    else:
        frame = pd.DataFrame({c: _canonical(X[c]) for c in columns}, index=X.index)
        frame["__target__"] = _canonical(pd.Series(y.to_numpy(), index=X.index))
    return pd.util.hash_pandas_object(frame, index=False).to_numpy(dtype=np.uint64)


def seen_in(hashes: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Mask of the fingerprints in `hashes` that are among `seen`: `np.isin`, by one sort of
    `seen` and a binary search per fingerprint (`np.isin` would also sort `hashes`, and find
    the unique values of both, at every call: a second or more for a million rows)."""
    # Fingerprints are uint64: mixed with int64, numpy would compare both as floats.
    hashes = np.asarray(hashes, dtype=np.uint64)
    ordered = np.sort(np.asarray(seen, dtype=np.uint64))
    if ordered.size == 0:
        return np.zeros(len(hashes), dtype=bool)
    at = np.searchsorted(ordered, hashes).clip(max=ordered.size - 1)
    return np.asarray(ordered[at] == hashes)


def _canonical(column: pd.Series) -> pd.Series:
    if pd.api.types.is_bool_dtype(column) or pd.api.types.is_numeric_dtype(column):
        values = column.astype("float64")
        # One NaN and one zero: -0.0 == 0.0, and NaN payloads differ between sources.
        return (values + 0.0).where(values.notna(), np.nan)
    if isinstance(column.dtype, pd.CategoricalDtype) or pd.api.types.infer_dtype(
        column, skipna=True
    ) in ("string", "empty"):
        # Each distinct value spelled once, not each row, as a category: pandas hashes a
        # category as its text and a missing value as it hashes None among texts. (Mixed
        # objects take the way below: factorizing would merge 1 and True before str.)
        codes, distinct = pd.factorize(column)
        spelled = np.asarray([str(value) for value in distinct], dtype=object)
        text_codes, text = pd.factorize(spelled)
        rows = text_codes.take(codes, mode="clip") if len(text) else codes
        categories = pd.Index(text, dtype=object)
        return pd.Series(
            pd.Categorical.from_codes(np.where(codes >= 0, rows, -1), categories=categories),
            index=column.index,
        )
    values = column.astype(object)
    present = values.notna()
    text = values.where(~present, values[present].astype(str))
    return text.where(present, None)


def split(config: PipelineConfig, dataset: Dataset) -> Split:
    """Deterministic held-out split: the same config and data always give the same rows.

    A held-out row identical (features and label) to a training row is moved to the training
    side: scoring a model on a copy of a row it trained on is not held-out evidence.
    """
    _check_feasible(config, dataset)
    stratify = _strata(config, dataset)
    X_train, X_test, y_train, y_test = train_test_split(
        dataset.X,
        dataset.y,
        test_size=config.split.test_size,
        random_state=config.split.seed,
        stratify=None if stratify is None else _sorted_codes(stratify),
    )
    result = _without_copies_of_training_rows(
        Split(X_train=X_train, X_test=X_test, y_train=y_train, y_test=y_test)
    )
    _check_cross_validation(config, result)
    return result


def _strata(config: PipelineConfig, dataset: Dataset) -> pd.Series | None:
    """What the split keeps in proportion: the class (when stratified) and, with
    ``split.recent_rows``, whether a row is recent, so that test_size of the recent rows is
    held out whatever their number. A stratum too small to split falls back to the class."""
    recent = min(config.split.recent_rows, dataset.rows)
    classes = dataset.y.astype(str) if config.stratified else None
    if recent == 0:
        return dataset.y if config.stratified else None
    age = pd.Series(["old"] * (dataset.rows - recent) + ["recent"] * recent, index=dataset.y.index)
    strata = age if classes is None else classes + "|" + age
    if strata.value_counts().min() < 2:
        logger.info("Too few recent rows per class to hold out apart; stratifying by class")
        return dataset.y if config.stratified else None
    return strata


def _sorted_codes(strata: pd.Series) -> pd.Series | np.ndarray:
    """Text strata as integer codes in the order of the sorted texts: the split sorts the strata
    (in Python, for text: seconds on a million rows) and only their order and counts decide
    which rows it holds out, so the codes give the same split."""
    if pd.api.types.infer_dtype(strata, skipna=False) != "string":
        return strata
    codes, _ = pd.factorize(strata, sort=True)
    return codes


def _without_copies_of_training_rows(data_split: Split) -> Split:
    seen, held_out = data_split.row_hashes()
    copies = seen_in(held_out, seen)
    if not copies.any():
        return Split(
            data_split.X_train,
            data_split.X_test,
            data_split.y_train,
            data_split.y_test,
            train_hashes=seen,
            test_hashes=held_out,
        )
    kept = int((~copies).sum())
    if kept < 2:
        raise DataValidationError(
            f"{kept} of {len(copies)} held-out rows are not exact copies of training rows; "
            "remove the duplicate rows from the data or use a larger split.test_size"
        )
    logger.info(
        "%d held-out rows are exact copies of training rows: they train, and do not score",
        int(copies.sum()),
    )
    return Split(
        X_train=pd.concat([data_split.X_train, data_split.X_test[copies]]),
        X_test=data_split.X_test[~copies],
        y_train=pd.concat([data_split.y_train, data_split.y_test[copies]]),
        y_test=data_split.y_test[~copies],
        train_hashes=np.concatenate([seen, held_out[copies]]),
        test_hashes=held_out[~copies],
    )


def positive_class(config: PipelineConfig, classes: list[Any]) -> Any:
    """The class binary metrics and threshold tuning are about (``data.positive_class``)."""
    wanted = config.data.positive_class
    if wanted is None:
        return classes[-1]
    for label in classes:
        if label == wanted or str(label) == str(wanted):
            return label
    raise DataValidationError(
        f"data.positive_class {wanted!r} is not a class of target '{config.data.target}'; "
        f"classes: {', '.join(map(str, classes))}"
    )


def preprocessing_kind(config: PipelineConfig) -> Literal["linear", "tree"]:
    """``preprocessing.kind``, with ``auto`` resolved by the estimator's class."""
    if config.preprocessing.kind != "auto":
        return config.preprocessing.kind
    class_name = config.estimator.class_path.rpartition(".")[2]
    return "tree" if any(part in class_name for part in _TREE_NAME_PARTS) else "linear"


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
    """An unfitted Pipeline: preprocessing chosen for the estimator, then the estimator (wrapped
    in a threshold tuner when ``decision_threshold`` is set)."""
    kind = preprocessing_kind(config)
    estimator = config.estimator.build()
    if "random_state" in estimator.get_params() and estimator.get_params()["random_state"] is None:
        estimator.set_params(random_state=config.split.seed)
    native = kind == "tree" and _has_native_categories(estimator)
    transformers = []
    if dataset.numeric_features:
        transformers.append(
            ("numeric", _numeric_steps(config, kind, native), list(dataset.numeric_features))
        )
    if dataset.categorical_features:
        transformers.append(
            (
                "categorical",
                _categorical_steps(config, kind, native, _most_categories(dataset)),
                list(dataset.categorical_features),
            )
        )
    if native and "categorical_features" not in config.estimator.params:
        # The ColumnTransformer puts numeric columns first: the rest are category codes.
        mask = [False] * len(dataset.numeric_features) + [True] * len(dataset.categorical_features)
        estimator.set_params(categorical_features=mask if any(mask) else None)
    final: Any = estimator
    if config.decision_threshold is not None:
        final = _threshold_tuner(config, dataset, estimator)
    return Pipeline(
        [
            ("preprocess", ColumnTransformer(transformers, remainder="drop")),
            ("model", final),
        ]
    )


def estimator_of(model: Pipeline) -> Any:
    """The configured estimator inside the model, unwrapped from a threshold tuner."""
    final = model.named_steps["model"]
    if isinstance(final, TunedThresholdClassifierCV):
        return getattr(final, "estimator_", final.estimator)
    return final


def decision_threshold(model: Pipeline) -> float | None:
    """The tuned probability threshold of the positive class, or None (argmax, i.e. 0.5)."""
    final = model.named_steps["model"]
    threshold = getattr(final, "best_threshold_", None)
    return None if threshold is None else float(threshold)


def _has_native_categories(estimator: Any) -> bool:
    return "categorical_features" in estimator.get_params()


def _numeric_steps(config: PipelineConfig, kind: str, native: bool) -> Any:
    prep = config.preprocessing
    if native:
        return "passthrough"  # HistGradientBoosting splits on missing values itself
    steps: list[tuple[str, Any]] = [
        ("impute", SimpleImputer(strategy=prep.numeric_imputation, fill_value=0.0))
    ]
    if kind == "linear" and prep.scaling != "none":
        steps.append(("scale", clone(_SCALERS[prep.scaling])))
    return Pipeline(steps)


def _most_categories(dataset: Dataset) -> int:
    """The largest number of distinct values of a categorical column (pandas, vectorised)."""
    columns = dataset.categorical_features
    return max((int(dataset.frame[c].nunique()) for c in columns), default=0)


def _categorical_steps(
    config: PipelineConfig, kind: str, native: bool, most_categories: int
) -> Pipeline:
    prep = config.preprocessing
    if native:
        # Missing and unseen categories become NaN, which HistGradientBoosting treats as
        # missing rather than as one more category. Rare categories are grouped only when a
        # column has more than HistGradientBoosting takes: the grouping counts every value in
        # Python (about 17 s of a million-row run under the profiler), for nothing otherwise.
        grouping = _NATIVE_MAX_CATEGORIES if most_categories > _NATIVE_MAX_CATEGORIES else None
        encoder = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=np.nan,
            encoded_missing_value=np.nan,
            max_categories=prep.one_hot_max_categories or grouping,
        )
        return Pipeline([("ordinal", encoder)])
    impute = SimpleImputer(strategy=prep.categorical_imputation, fill_value="missing")
    if kind == "tree":
        ordinal = OrdinalEncoder(
            handle_unknown="use_encoded_value",
            unknown_value=-1,
            max_categories=prep.one_hot_max_categories,
        )
        return Pipeline([("impute", impute), ("ordinal", ordinal)])
    one_hot = OneHotEncoder(
        handle_unknown="ignore", sparse_output=False, max_categories=prep.one_hot_max_categories
    )
    return Pipeline([("impute", impute), ("one_hot", one_hot)])


def _threshold_scorer(objective: str, positive: Any) -> Any:
    """The tuner's objective. f1, precision and recall are about the positive class, so their
    scorer carries ``pos_label`` (the named scorers assume the class 1), and the threshold is
    on that class's probability. Accuracy and balanced accuracy are symmetric: scikit-learn's
    named scorer, threshold on the probability of ``classes_[1]``. Only scikit-learn objects
    here: the tuner is saved in the model, and skops loads only trusted types."""
    from sklearn import metrics as skm

    about_positive = {
        "f1": skm.f1_score,
        "precision": skm.precision_score,
        "recall": skm.recall_score,
    }
    if objective in about_positive:
        return skm.make_scorer(about_positive[objective], pos_label=positive, zero_division=0)
    return objective


def _threshold_tuner(
    config: PipelineConfig, dataset: Dataset, estimator: Any
) -> TunedThresholdClassifierCV:
    tuning = config.decision_threshold
    assert tuning is not None
    classes = np.unique(dataset.y.to_numpy()).tolist()  # sorted as scikit-learn's classes_
    if len(classes) != 2:
        raise DataValidationError(
            f"decision_threshold needs a binary target; '{config.data.target}' has "
            f"{len(classes)} classes: remove decision_threshold"
        )
    folds = tuning.cv_folds or config.split.cv_folds
    positive = positive_class(config, classes)
    return TunedThresholdClassifierCV(
        estimator,
        scoring=_threshold_scorer(tuning.optimize, positive),
        cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.split.seed),
        random_state=config.split.seed,
    )
