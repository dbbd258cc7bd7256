"""Objects shared by test layers that train through the real pipeline (e2e, team)."""

from __future__ import annotations

from typing import Any, Final

# One setosa flower as the pipeline's iris config names its columns (snake case, in cm).
IRIS_SETOSA: Final[dict[str, float]] = {
    "sepal_length_cm": 5.1,
    "sepal_width_cm": 3.5,
    "petal_length_cm": 1.4,
    "petal_width_cm": 0.2,
}


def iris_config(name: str = "iris-test", **sections: Any) -> dict[str, Any]:
    """A small, fast iris config as a dict, experiment and registered model `name`;
    keyword arguments replace whole sections."""
    config: dict[str, Any] = {
        "experiment": name,
        "registered_model": name,
        "task": "classification",
        "data": {"dataset": "iris", "target": "species"},
        "estimator": {
            "class_path": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iter": 500},
        },
        "split": {"test_size": 0.3, "seed": 42, "stratify": True, "cv_folds": 3},
        "gate": {"metric": "test_f1_macro", "threshold": 0.8, "min_improvement": 0.0},
    }
    config.update(sections)
    return config
