from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sklearn.dummy import DummyClassifier

from pipeline.config import load_config
from pipeline.steps import baseline


@pytest.mark.parametrize("labels", [["no", "yes", "maybe"], [3, 1, 2]])
def test_the_classifier_baseline_equals_a_dummy_fitted_on_every_training_row(
    labels: list[object],
    iris_config: Callable[..., dict[str, Any]],
    write_config: Callable[..., Path],
) -> None:
    rng = np.random.default_rng(0)
    y = pd.Series(rng.choice(np.asarray(labels, dtype=object), 1_001, p=[0.6, 0.3, 0.1]))
    X = pd.DataFrame({"a": rng.random(1_001), "b": rng.choice(["x", "z"], 1_001)})
    fitted = baseline.fit(load_config(write_config(iris_config())), X, y).model
    every_row = DummyClassifier(strategy="prior").fit(X, y)
    np.testing.assert_array_equal(fitted.classes_, every_row.classes_)
    assert fitted.classes_.dtype == every_row.classes_.dtype
    np.testing.assert_array_equal(fitted.class_prior_, every_row.class_prior_)
    np.testing.assert_array_equal(fitted.feature_names_in_, every_row.feature_names_in_)
    np.testing.assert_array_equal(fitted.predict_proba(X), every_row.predict_proba(X))
    np.testing.assert_array_equal(fitted.predict(X), every_row.predict(X))
