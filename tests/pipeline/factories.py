"""Small factories shared by the pipeline tests: configs, data and fitted models.

Test modules import them as ``from tests.pipeline.factories import ...`` (pytest's importlib
mode registers ``tests`` as a namespace package). The fixtures that need pytest (a throwaway
MLflow store, ``write_config``, ``iris_config``) stay in ``tests/conftest.py``; a module-scoped
fixture takes its own store with :func:`store_of_its_own`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking._model_registry import utils as registry_utils
from mlflow.tracking._tracking_service import utils as tracking_utils
from sklearn.datasets import load_iris
from sklearn.pipeline import Pipeline

from pipeline.config import PipelineConfig, load_config
from pipeline.steps import features, ingest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"


def shipped_config(name: str) -> PipelineConfig:
    """One of the configs the repository ships, by stem (``iris``, ``customers``, ...)."""
    return load_config(CONFIGS / f"{name}.yaml")


def diabetes_config(**sections: Any) -> dict[str, Any]:
    """A small, fast regression config as a dict; keyword arguments replace whole sections."""
    config: dict[str, Any] = {
        "experiment": "diabetes-test",
        "registered_model": "diabetes-test",
        "task": "regression",
        "data": {"dataset": "diabetes", "target": "progression"},
        "estimator": {"class_path": "sklearn.linear_model.Ridge"},
        "split": {"cv_folds": 2},
        "gate": {"metric": "test_rmse"},
    }
    config.update(sections)
    return config


def iris_csv(target: str = "target") -> str:
    """The iris data set as CSV text with the class names as labels in column `target`."""
    frame = load_iris(as_frame=True).frame
    names = dict(enumerate(["setosa", "versicolor", "virginica"]))
    frame["target"] = frame["target"].map(names)
    return frame.rename(columns={"target": target}).to_csv(index=False)


@dataclass(frozen=True)
class Fitted:
    """A config's data, its split and the model fitted on the training rows (no MLflow)."""

    dataset: ingest.Dataset
    split: features.Split
    model: Pipeline


def fitted(config: PipelineConfig) -> Fitted:
    dataset = ingest.run(config)
    data_split = features.split(config, dataset)
    model = features.build_model(config, dataset).fit(data_split.X_train, data_split.y_train)
    return Fitted(dataset=dataset, split=data_split, model=model)


@contextmanager
def store_of_its_own(root: Path) -> Iterator[str]:
    """A SQLite store in `root` (the working directory meanwhile) for a module's fixtures, as
    ``mlflow_store`` gives one to a test; yields its URI and forgets it afterwards."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_REGISTRY_URI", uri)
        patch.delenv("MLFLOW_RUN_ID", raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield uri
    tracking_utils._tracking_uri = None
    registry_utils._registry_uri = None
