"""Every metric the pipeline knows, in one table: how it is computed, scored and compared.

A metric is named without a prefix (``rmse``) where monitoring reads it from a production
window, ``test_rmse`` where it was measured on held-out rows (run metrics, version tags,
``gate.metric``) and ``cv_rmse_mean`` / ``cv_rmse_std`` in cross-validation.

The config and the CLI import this module, so it imports no heavy library at import time:
numpy, pandas and scikit-learn are imported by the functions that compute.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pipeline.contracts import HELD_OUT_PREFIX

if TYPE_CHECKING:
    import numpy as np

Task = Literal["classification", "regression"]


# (y, predicted, proba, labels) -> value, or None when these rows cannot give it.
Compute = Callable[["np.ndarray", "np.ndarray", "np.ndarray | None", "list[Any]"], "float | None"]


@dataclass(frozen=True)
class Metric:
    name: str
    task: Task
    scorer: str
    """The scikit-learn scorer of the same metric: CV and search optimise what the gate judges."""
    lower_is_better: bool
    needs_proba: bool
    compute: Compute

    @property
    def held_out(self) -> str:
        """Its name as a held-out metric: ``test_<name>``."""
        return f"{HELD_OUT_PREFIX}{self.name}"

    @property
    def scorer_sign(self) -> float:
        """-1 for scorers that report the metric negated (sklearn maximises every scorer)."""
        return -1.0 if self.scorer.startswith("neg_") else 1.0


def _accuracy(y: np.ndarray, predicted: np.ndarray, proba: Any, labels: Any) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y, predicted))


def _f1_macro(y: np.ndarray, predicted: np.ndarray, proba: Any, labels: Any) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y, predicted, average="macro"))


def _roc_auc(
    y: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None, labels: list[Any]
) -> float | None:
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    present = len(pd.unique(y))
    if proba is None or present < 2:
        return None
    if len(labels) == 2:
        positive = (y == labels[1]).astype(int)
        return float(roc_auc_score(positive, proba[:, 1]))
    if present < len(labels):
        return None  # one-vs-rest needs every class among the rows
    return float(roc_auc_score(y, proba, multi_class="ovr", labels=labels))


def _log_loss(
    y: np.ndarray, predicted: np.ndarray, proba: np.ndarray | None, labels: list[Any]
) -> float | None:
    from sklearn.metrics import log_loss

    return None if proba is None else float(log_loss(y, proba, labels=labels))


def _rmse(y: np.ndarray, predicted: np.ndarray, proba: Any, labels: Any) -> float:
    from sklearn.metrics import root_mean_squared_error

    return float(root_mean_squared_error(y, predicted))


def _mae(y: np.ndarray, predicted: np.ndarray, proba: Any, labels: Any) -> float:
    from sklearn.metrics import mean_absolute_error

    return float(mean_absolute_error(y, predicted))


def _r2(y: np.ndarray, predicted: np.ndarray, proba: Any, labels: Any) -> float | None:
    from sklearn.metrics import r2_score

    return float(r2_score(y, predicted)) if len(y) >= 2 else None  # undefined on one row


METRICS: Mapping[str, Metric] = {
    metric.name: metric
    for metric in (
        Metric("accuracy", "classification", "accuracy", False, False, _accuracy),
        Metric("f1_macro", "classification", "f1_macro", False, False, _f1_macro),
        Metric("roc_auc", "classification", "roc_auc_ovr", False, True, _roc_auc),
        Metric("log_loss", "classification", "neg_log_loss", True, True, _log_loss),
        Metric("rmse", "regression", "neg_root_mean_squared_error", True, False, _rmse),
        Metric("mae", "regression", "neg_mean_absolute_error", True, False, _mae),
        Metric("r2", "regression", "r2", False, False, _r2),
    )
}


def metric(name: str) -> Metric:
    """The metric called `name`, with or without the held-out prefix (``rmse``, ``test_rmse``)."""
    found = METRICS.get(name.removeprefix(HELD_OUT_PREFIX))
    if found is None:
        raise KeyError(f"unknown metric '{name}'; known: {', '.join(METRICS)}")
    return found


def for_task(task: str) -> tuple[Metric, ...]:
    return tuple(m for m in METRICS.values() if m.task == task)


def cross_validated(task: str, gate_metric: str | None = None) -> tuple[Metric, ...]:
    """The task's metrics any estimator can be cross-validated on (no probabilities needed),
    and the gate's metric, which the config check has already matched to the estimator: the
    cross-validated estimate of what the gate will judge belongs beside the held-out score."""
    chosen = [m for m in for_task(task) if not m.needs_proba]
    if gate_metric is not None and (gate := metric(gate_metric)) not in chosen:
        chosen.append(gate)
    return tuple(chosen)


def is_held_out(name: str) -> bool:
    return name.startswith(HELD_OUT_PREFIX)


def held_out(metrics: Mapping[str, float]) -> dict[str, float]:
    """The held-out (``test_*``) metrics of a run's or version's metrics, in their order."""
    return {name: value for name, value in metrics.items() if is_held_out(name)}


def prediction_metrics(
    task: str,
    y: Sequence[Any] | np.ndarray,
    predicted: Sequence[Any] | np.ndarray,
    proba: np.ndarray | None = None,
    classes: Sequence[Any] | None = None,
) -> dict[str, float]:
    """The task's metrics from predictions already made, named without the `test_` prefix.

    For held-out rows (evaluate, gate), predictions read back from the prediction log
    (monitoring) or made once for many chunks (the reference profile). A metric that cannot be
    computed on these rows (r2 of one row, probabilities for a label outside `classes`) is
    left out rather than guessed.
    """
    import numpy as np
    import pandas as pd

    y = np.asarray(y)
    predicted = np.asarray(predicted)
    if len(y) == 0:
        return {}
    labels = list(classes) if classes is not None else []
    if task == "classification":
        y, predicted, labels = as_codes(y, predicted, labels)
    # Probabilities only mean something for rows whose label is one of the model's classes.
    with_proba = proba is not None and classes is not None and set(pd.unique(y)) <= set(labels)
    result: dict[str, float] = {}
    for entry in for_task(task):
        if entry.needs_proba and not with_proba:
            continue
        value = entry.compute(y, predicted, proba, labels)
        if value is not None:
            result[entry.name] = value
    return result


def as_codes(
    y: np.ndarray, predicted: np.ndarray, labels: list[Any]
) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    """Class labels as integer codes (the model's classes first, in order), when they are
    text: scikit-learn's metrics sort and compare object arrays in Python, which costs seconds
    per metric on a million rows; on codes every metric has the same value."""
    import numpy as np
    import pandas as pd

    if y.dtype != object and predicted.dtype != object:
        return y, predicted, labels
    known = np.asarray(labels, dtype=object)
    codes, _ = pd.factorize(np.concatenate([known, y.astype(object), predicted.astype(object)]))
    k, n = len(known), len(y)
    return codes[k : k + n], codes[k + n :], codes[:k].tolist()


_REGRESSION_SCORER_PREFIXES = ("neg_mean", "neg_root", "neg_median", "neg_max", "r2", "explained")


def scorer_task(scorer: str) -> Task | None:
    """The task a scikit-learn scorer belongs to, or None if scikit-learn has no such scorer."""
    from sklearn.metrics import get_scorer_names

    if scorer not in get_scorer_names():
        return None
    regression = scorer.startswith(_REGRESSION_SCORER_PREFIXES) or scorer in {
        "max_error",
        "d2_absolute_error_score",
    }
    return "regression" if regression else "classification"


def classification_diagnostics(
    y: Sequence[Any] | np.ndarray,
    predicted: Sequence[Any] | np.ndarray,
    proba: np.ndarray | None,
    classes: Sequence[Any],
    positive: Any,
) -> dict[str, float]:
    """What a classifier's held-out rows say beyond the gate's metrics, named without prefix.

    Balanced accuracy and precision, recall and F1 of every class; with probabilities the
    average precision (area under the precision-recall curve) and the Brier score, of
    ``positive`` for a binary task, macro one-vs-rest and the multiclass mean squared distance
    for more classes. Not gate metrics: the gate's table is :data:`METRICS`.
    """
    import numpy as np
    from sklearn import metrics as skm

    names = list(classes)
    y, predicted, labels = as_codes(np.asarray(y), np.asarray(predicted), names)
    positive = labels[names.index(positive)] if positive in names else positive
    result = {"balanced_accuracy": float(skm.balanced_accuracy_score(y, predicted))}
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y, predicted, labels=labels, zero_division=0
    )
    for index, label in enumerate(names):
        name = metric_label(label)
        result[f"precision_{name}"] = float(precision[index])
        result[f"recall_{name}"] = float(recall[index])
        result[f"f1_{name}"] = float(f1[index])
    present = set(np.unique(y).tolist())
    if proba is None or len(present) < 2 or not present <= set(labels):
        return result
    if len(labels) == 2:
        column = labels.index(positive)
        is_positive = (y == positive).astype(int)
        result["average_precision"] = float(
            skm.average_precision_score(is_positive, proba[:, column])
        )
        result["brier"] = float(skm.brier_score_loss(is_positive, proba[:, column]))
    else:
        one_hot = (y[:, None] == np.asarray(labels, dtype=object)[None, :]).astype(float)
        result["average_precision"] = float(
            skm.average_precision_score(one_hot, proba, average="macro")
        )
        result["brier"] = float(np.mean(np.sum((proba - one_hot) ** 2, axis=1)))
    return result


def metric_label(label: Any) -> str:
    """A class label as MLflow allows it in a metric name (letters, digits, ``_-. /``)."""
    import re

    return re.sub(r"[^A-Za-z0-9_\-. /]", "_", str(label)) or "_"
