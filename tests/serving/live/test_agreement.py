"""Agreement between two versions' answers on the same rows."""

from __future__ import annotations

import numpy as np

from serving.live.traffic import agreement
from serving.model.inference import FramePredictions


def test_classifiers_agree_on_rows_with_the_same_label() -> None:
    first = [{"label": "a", "probabilities": None}, {"label": "b", "probabilities": None}]
    second = [{"label": "a", "probabilities": None}, {"label": "c", "probabilities": None}]
    assert agreement("classification", first, second) == (2, 1)  # type: ignore[arg-type]


def test_regressors_agree_within_one_percent() -> None:
    first = FramePredictions(np.array([100.0, 100.0, 0.0]), None)
    second = FramePredictions(np.array([100.9, 102.0, 0.0]), None)
    assert agreement("regression", first, second) == (3, 2)


def test_answers_of_different_lengths_are_not_compared() -> None:
    assert agreement("regression", [{"value": 1.0}], []) == (0, 0)  # type: ignore[list-item]
