"""A model's numeric preprocessing done in plain NumPy, equal to scikit-learn's to the last bit.

Why: on a micro-batch of single-row requests, scikit-learn's ``ColumnTransformer`` costs about
1.5 ms per call whatever the rows (input validation, pandas column selection, joblib, output
wrapping), against a few microseconds of arithmetic: most of what a small logistic regression
costs to serve. Only the preprocessing is replaced; the model's final estimator is still
called exactly as its ``Pipeline`` would call it.

Bit-identical by construction: each supported transformer is replayed with the same NumPy
operations, in the same order and on the same dtype, as its ``transform`` (``X -= mean_``
then ``X /= scale_`` ...), and the blocks are stacked with ``np.hstack`` as the
``ColumnTransformer`` stacks them, so the final estimator receives the same values in the
same memory layout. :func:`compile_preprocessing` checks this on probe rows when the model
loads and returns None (scikit-learn then does the work) for anything else: another
transformer, a categorical column, an output container other than NumPy, a probe that
differs in any bit, dtype or layout.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import sklearn
from scipy.special import expit
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, MinMaxScaler, RobustScaler, StandardScaler
from sklearn.utils.extmath import softmax

logger = logging.getLogger(__name__)

Step = Callable[[np.ndarray], np.ndarray]
"""One transformer's ``transform`` on a float64 array this module owns (it may modify it)."""
Answers = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
"""The final estimator's labels and probabilities for preprocessed rows."""

_PROBE_SEED = 20261206
_PROBE_ROWS = 16


class _UnsupportedError(Exception):
    """The preprocessing holds something this module does not replay."""


@dataclass(frozen=True)
class _Block:
    """One ``ColumnTransformer`` entry: the input columns it takes, and its steps."""

    columns: np.ndarray
    steps: tuple[Step, ...]

    def apply(self, matrix: np.ndarray) -> np.ndarray:
        block = matrix[:, self.columns]  # a fresh array: the steps may work in place
        for step in self.steps:
            block = step(block)
        return block


@dataclass(frozen=True)
class FastPreprocessing:
    """The preprocessing of a ``Pipeline`` whose inputs are all float64 columns."""

    names: tuple[str, ...]
    """The model's input columns, in the order of the matrices :meth:`transform` takes."""
    blocks: tuple[_Block, ...]
    after: tuple[Step, ...]
    """Steps after the column transformer, on the stacked array."""
    pipeline: Any
    """The pipeline replayed: the replay stands for it only (see ``LoadedModel.replay``)."""
    final: Any
    """The pipeline's last step, which receives what :meth:`transform` returns."""
    answers: Answers | None = None
    """Labels and probabilities of ``final`` from one scoring pass, when it is a logistic
    regression checked to give what its ``predict`` and ``predict_proba`` give."""
    order: Literal["C", "F"] = "C"
    """The memory layout scikit-learn's preprocessing gives a frame built on a C-ordered
    matrix. It can change the final estimator's answer in the last bits (a BLAS product sums
    in another order), so the replay gives the same."""

    def matrix(self, frame: pd.DataFrame) -> np.ndarray | None:
        """``frame`` as the float64 matrix :meth:`transform` takes, or None when it is not
        built as the model's input frames are (one C-ordered float64 matrix, these columns in
        this order: the layout scikit-learn's column selection gives depends on it) or holds
        an infinity, which scikit-learn's input checks refuse with an error of their own."""
        if tuple(frame.columns) != self.names or not all(
            dtype == np.float64 for dtype in frame.dtypes
        ):
            return None
        matrix = frame.to_numpy(dtype=np.float64, copy=False)
        if matrix.strides != (matrix.itemsize * matrix.shape[1], matrix.itemsize):
            return None
        return None if np.isinf(matrix).any() else matrix

    def transform(self, matrix: np.ndarray) -> np.ndarray:
        """What the pipeline's preprocessing steps return for these rows (not modified)."""
        # Extreme finite inputs (1e308) can overflow here as in scikit-learn; the infinity is
        # refused downstream (the final estimator's input check, a 4xx naming the columns),
        # so NumPy's warning, once per process, would only be noise in the server's log.
        with np.errstate(over="ignore", invalid="ignore"):
            features = np.hstack([block.apply(matrix) for block in self.blocks])
            for step in self.after:
                features = step(features)
        return np.asarray(features, order=self.order)


def compile_preprocessing(
    estimator: Any, names: Sequence[str], probe: Sequence[Mapping[str, Any]] = ()
) -> FastPreprocessing | None:
    """The NumPy replay of ``estimator``'s preprocessing for float64 inputs ``names``, checked
    against scikit-learn on ``probe`` records (the logged input example) and on synthetic
    rows; None when it does not apply or any check differs."""
    try:
        fast = _compile(estimator, tuple(names))
    except _UnsupportedError as exc:
        logger.debug("NumPy preprocessing not used: %s", exc)
        return None
    matrix = _probe_matrix(fast.names, probe)
    try:
        fast = _checked(fast, estimator, matrix)
    except _UnsupportedError as exc:
        logger.warning("NumPy preprocessing not used: %s; scikit-learn does it instead", exc)
        return None
    return dataclasses.replace(fast, answers=_checked_answers(fast, matrix))


def _checked_answers(fast: FastPreprocessing, matrix: np.ndarray) -> Answers | None:
    """:func:`_logistic_answers` of the final estimator, if it gives exactly what its
    ``predict`` and ``predict_proba`` give on the probe rows (those it can score)."""
    answers = _logistic_answers(fast.final)
    if answers is None:
        return None
    features = fast.transform(matrix)
    features = features[~np.isnan(features).any(axis=1)]
    if not len(features):
        return None
    try:
        labels, probabilities = answers(features)
        expected = fast.final.predict(features), fast.final.predict_proba(features)
    except Exception as exc:  # scikit-learn refuses the probe: nothing to compare with
        logger.warning("One-pass logistic answers not used: the probe fails (%s)", exc)
        return None
    if not (
        labels.dtype == expected[0].dtype
        and np.array_equal(labels, expected[0])
        and probabilities.tobytes() == np.ascontiguousarray(expected[1]).tobytes()
    ):
        logger.warning("One-pass logistic answers not used: they differ from scikit-learn's")
        return None
    return answers


def _logistic_answers(final: Any) -> Answers | None:
    """A logistic regression's labels and probabilities from one ``decision_function`` call.

    Its ``predict`` and ``predict_proba`` each call ``decision_function`` (input validation
    included: about 100 µs a call) and then do what this does with the scores: the positive
    class where a binary score is above 0, else the highest score; the logistic function of
    a binary score, else the softmax of the scores.
    """
    if type(final) is not LogisticRegression:
        return None
    classes = final.classes_

    def answers(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        scores = final.decision_function(features)
        if scores.ndim == 1:
            labels = classes.take((scores > 0).astype(np.intp), axis=0)
            positive = expit(scores)
            return labels, np.stack([1 - positive, positive], axis=1)
        labels = classes.take(np.argmax(scores, axis=1), axis=0)
        return labels, softmax(scores, copy=False)

    return answers


def _compile(estimator: Any, names: tuple[str, ...]) -> FastPreprocessing:
    if sklearn.get_config().get("transform_output", "default") != "default":
        raise _UnsupportedError("scikit-learn's output is set to a DataFrame")
    if not (isinstance(estimator, Pipeline) and len(estimator) > 1):
        raise _UnsupportedError("not a pipeline with preprocessing")
    steps = [step for _, step in estimator.steps[:-1] if step not in (None, "passthrough")]
    if not steps:
        raise _UnsupportedError("no preprocessing step")
    first, rest = steps[0], steps[1:]
    if isinstance(first, ColumnTransformer):
        blocks = _column_blocks(first, names)
    else:
        blocks = (_Block(_input_indices(first, names), _steps(first)),)
    after = tuple(step for transformer in rest for step in _steps(transformer))
    return FastPreprocessing(
        names=names, blocks=blocks, after=after, pipeline=estimator, final=estimator[-1]
    )


def _column_blocks(transformer: ColumnTransformer, names: tuple[str, ...]) -> tuple[_Block, ...]:
    _default_output(transformer)
    if transformer.transformer_weights:
        raise _UnsupportedError("the column transformer weights its outputs")
    if getattr(transformer, "sparse_output_", False):
        raise _UnsupportedError("the column transformer's output is sparse")
    fitted_names = getattr(transformer, "feature_names_in_", None)
    indices = getattr(transformer, "_transformer_to_input_indices", None)
    if fitted_names is None or indices is None:
        raise _UnsupportedError("the column transformer was not fitted on named columns")
    blocks = []
    for name, inner, _ in transformer.transformers_:
        if inner == "drop" or not indices.get(name):
            continue  # what ColumnTransformer.transform skips
        columns = [str(fitted_names[i]) for i in indices[name]]
        blocks.append(_Block(_positions(columns, names), _steps(inner)))
    if not blocks:
        raise _UnsupportedError("the column transformer keeps no column")
    return tuple(blocks)


def _input_indices(transformer: Any, names: tuple[str, ...]) -> np.ndarray:
    fitted = getattr(transformer, "feature_names_in_", None)
    if fitted is None:
        raise _UnsupportedError(f"{type(transformer).__name__} was not fitted on named columns")
    if tuple(str(n) for n in fitted) != names:
        raise _UnsupportedError(f"{type(transformer).__name__} was fitted on other columns")
    return np.arange(len(names))


def _positions(columns: Sequence[str], names: tuple[str, ...]) -> np.ndarray:
    missing = [column for column in columns if column not in names]
    if missing:
        raise _UnsupportedError(f"columns {missing} are not inputs of the signature")
    return np.array([names.index(column) for column in columns], dtype=np.intp)


def _steps(transformer: Any) -> tuple[Step, ...]:
    """The steps replaying ``transformer`` (a supported transformer or a pipeline of them)."""
    if isinstance(transformer, Pipeline):
        return tuple(
            step
            for _, inner in transformer.steps
            if inner not in (None, "passthrough")
            for step in _steps(inner)
        )
    if transformer == "passthrough":
        return ()
    _default_output(transformer)
    kind = type(transformer)
    if kind is FunctionTransformer:
        if transformer.func is not None or transformer.inverse_func is not None:
            raise _UnsupportedError("a FunctionTransformer with a function")
        return ()
    if kind is StandardScaler:
        return (_standard(transformer),)
    if kind is MinMaxScaler:
        return (_min_max(transformer),)
    if kind is RobustScaler:
        return (_robust(transformer),)
    if kind is SimpleImputer:
        return (_imputer(transformer),)
    raise _UnsupportedError(f"{kind.__name__} is not replayed")


def _default_output(transformer: Any) -> None:
    config = getattr(transformer, "_sklearn_output_config", None) or {}
    if config.get("transform", "default") != "default":
        raise _UnsupportedError(f"{type(transformer).__name__} outputs a DataFrame")


def _float64(values: Any) -> np.ndarray | None:
    return None if values is None else np.asarray(values, dtype=np.float64)


def _standard(scaler: StandardScaler) -> Step:
    # StandardScaler.transform: X -= mean_ (with_mean), then X /= scale_ (with_std).
    return _centred_scaled(
        scaler.mean_ if scaler.with_mean else None, scaler.scale_ if scaler.with_std else None
    )


def _robust(scaler: RobustScaler) -> Step:
    # RobustScaler.transform: X -= center_ (with_centering), then X /= scale_ (with_scaling).
    return _centred_scaled(
        scaler.center_ if scaler.with_centering else None,
        scaler.scale_ if scaler.with_scaling else None,
    )


def _centred_scaled(center: Any, scale: Any) -> Step:
    """``X -= center`` then ``X /= scale``, each skipped when None: in place, as sklearn does."""
    shift, divisor = _float64(center), _float64(scale)

    def step(block: np.ndarray) -> np.ndarray:
        if shift is not None:
            block -= shift
        if divisor is not None:
            block /= divisor
        return block

    return step


def _min_max(scaler: MinMaxScaler) -> Step:
    # MinMaxScaler.transform: X *= scale_, X += min_, then clipped to the range if asked.
    scale, shift = _float64(scaler.scale_), _float64(scaler.min_)
    low, high = (float(bound) for bound in scaler.feature_range)
    clip = bool(scaler.clip)

    def step(block: np.ndarray) -> np.ndarray:
        block *= scale
        block += shift
        if clip:
            np.clip(block, low, high, out=block)
        return block

    return step


def _imputer(imputer: SimpleImputer) -> Step:
    # SimpleImputer.transform on float data: each NaN becomes its column's statistic, cast
    # to the fill dtype (a "constant" strategy keeps its statistics as objects).
    missing = imputer.missing_values
    if imputer.add_indicator:
        raise _UnsupportedError("SimpleImputer adds indicator columns")
    if not (isinstance(missing, float) and np.isnan(missing)):
        raise _UnsupportedError("SimpleImputer imputes a value other than NaN")
    fill_dtype = getattr(imputer, "_fill_dtype", None)
    if getattr(imputer, "_fit_dtype", None) != np.float64 or fill_dtype != np.float64:
        raise _UnsupportedError("SimpleImputer was fitted on data other than float64")
    fill = np.asarray(imputer.statistics_).astype(np.float64)
    if np.isnan(fill).any():
        raise _UnsupportedError(
            "SimpleImputer has a column without statistic (dropped at transform)"
        )

    def step(block: np.ndarray) -> np.ndarray:
        mask = np.isnan(block)
        if mask.any():
            block[mask] = np.broadcast_to(fill, block.shape)[mask]
        return block

    return step


def _probe_matrix(names: Sequence[str], probe: Sequence[Mapping[str, Any]]) -> np.ndarray:
    """The probe records, a row of zeros, one of NaN and seeded values of several scales."""
    rows = [[record.get(name) for name in names] for record in probe]
    width = len(names)
    logged = np.array(rows, dtype=np.float64).reshape(len(rows), width)
    generator = np.random.default_rng(_PROBE_SEED)
    scales = np.logspace(-3, 6, _PROBE_ROWS)[:, None]
    synthetic = generator.standard_normal((_PROBE_ROWS, width)) * scales
    synthetic[::3, ::2] = np.nan  # missing values in some rows and columns
    return np.vstack([logged, np.zeros((1, width)), np.full((1, width), np.nan), synthetic])


def _frame(rows: np.ndarray, names: Sequence[str]) -> pd.DataFrame:
    """A frame built as the server builds its input frames: on one C-ordered matrix."""
    return pd.DataFrame(np.ascontiguousarray(rows), columns=list(names), copy=False)


def _checked(fast: FastPreprocessing, estimator: Pipeline, matrix: np.ndarray) -> FastPreprocessing:
    """``fast`` with the memory layout scikit-learn gives (see ``FastPreprocessing.order``),
    once it equals scikit-learn in every bit, dtype and layout on ``matrix``, and on a row or
    two alone, as single-row requests send them.

    Raises:
        _UnsupportedError: saying how it differs, or that scikit-learn refuses the probe.
    """
    for index, rows in enumerate((matrix, matrix[:1], matrix[-1:], matrix[-2:])):
        frame = _frame(rows.copy(), fast.names)
        try:
            expected = np.asarray(estimator[:-1].transform(frame))
        except Exception as exc:  # scikit-learn refuses the probe: nothing to compare with
            raise _UnsupportedError(
                f"scikit-learn's preprocessing fails on the probe rows ({exc})"
            ) from exc
        if index == 0:
            fast = dataclasses.replace(fast, order=_layout(expected))
        taken = fast.matrix(frame)
        if taken is None:
            raise _UnsupportedError("the probe frame is not taken")
        actual = fast.transform(taken)
        if actual.dtype != expected.dtype or actual.shape != expected.shape:
            given, wanted = (f"{a.dtype}{a.shape}" for a in (actual, expected))
            raise _UnsupportedError(f"{given} where scikit-learn gives {wanted}")
        if actual.strides != expected.strides:
            raise _UnsupportedError(
                f"the memory layout differs from scikit-learn's (strides {actual.strides} "
                f"where it gives {expected.strides})"
            )
        if actual.tobytes() != expected.tobytes():
            raise _UnsupportedError("a value differs from scikit-learn's")
    return fast


def _layout(expected: np.ndarray) -> Literal["C", "F"]:
    """The layout of scikit-learn's output for many rows (one row is both C and F)."""
    if expected.flags.c_contiguous:
        return "C"
    if expected.flags.f_contiguous:
        return "F"
    raise _UnsupportedError("scikit-learn's preprocessing output is not contiguous")
