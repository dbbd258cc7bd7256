"""Tiny real models in a throwaway MLflow store, for the protocol tests.

Copied (trimmed) from ``tests/serving/conftest.py``: under ``--import-mode=importlib`` one
conftest cannot import another. Nothing touches ./mlruns, ./mlflow.db or the network.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import pytest
import skops.io
from fastapi import FastAPI
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.models import infer_signature
from mlflow.tracking._tracking_service.utils import _use_tracking_uri
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from serving.app import create_app
from serving.settings import Settings


@dataclass(frozen=True)
class TinyModel:
    """A fitted sklearn Pipeline, the frame it was trained on and where it was logged."""

    estimator: Any
    features: pd.DataFrame
    model_uri: str
    run_id: str


@dataclass
class TinyStore:
    """A temporary MLflow store where each model is registered once, as version 1."""

    root: Path
    tracking_uri: str
    client: MlflowClient
    experiment_id: str
    models: dict[str, TinyModel] = field(default_factory=dict)

    def register(self, name: str, model: TinyModel) -> None:
        self.client.create_registered_model(name)
        with _use_tracking_uri(self.tracking_uri):
            self.client.create_model_version(name, source=model.model_uri, run_id=model.run_id)

    def settings(self, name: str) -> Settings:
        return Settings(
            tracking_uri=self.tracking_uri, model_uri=f"models:/{name}/1", poll_seconds=0.05
        )


def _iris() -> tuple[pd.DataFrame, np.ndarray]:
    iris = load_iris(as_frame=True)
    features = iris.frame.drop(columns="target")
    return features, np.asarray(iris.target_names)[iris.target.to_numpy()]


def _diabetes() -> tuple[pd.DataFrame, np.ndarray]:
    data = load_diabetes(as_frame=True)
    return data.frame.drop(columns="target").iloc[:150], data.target.to_numpy()[:150]


def _mixed() -> tuple[pd.DataFrame, np.ndarray]:
    """age (double, has gaps), rooms (long), city (string, has gaps), owner (string)."""
    rng = np.random.default_rng(7)
    n = 80
    features = pd.DataFrame(
        {
            "age": rng.normal(40, 10, n),
            "rooms": rng.integers(1, 6, n).astype("int64"),
            "city": pd.Series(rng.choice(["paris", "lyon", "nice"], n), dtype=object),
            "owner": pd.Series(rng.choice(["yes", "no"], n), dtype=object),
        }
    )
    features.loc[[3, 11, 40], "age"] = np.nan
    features.loc[[5, 23], "city"] = np.nan
    y = ((features["rooms"] > 2) & (features["owner"] == "yes")).astype("int64").to_numpy()
    return features, y


def _pipeline(features: pd.DataFrame, estimator: Any) -> Pipeline:
    numeric = [c for c in features.columns if features[c].dtype.kind in "if"]
    categorical = [c for c in features.columns if c not in numeric]
    numeric_steps = Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())])
    steps: list[tuple[str, Any, list[str]]] = [("num", numeric_steps, numeric)]
    if categorical:
        categorical_steps = Pipeline(
            [
                ("impute", SimpleImputer(strategy="most_frequent")),
                ("onehot", OneHotEncoder(handle_unknown="ignore")),
            ]
        )
        steps.append(("cat", categorical_steps, categorical))
    return Pipeline([("preprocess", ColumnTransformer(steps)), ("model", estimator)])


def _log(store: TinyStore, features: pd.DataFrame, y: np.ndarray, estimator: Any) -> TinyModel:
    fitted = estimator.fit(features, y)
    with (
        _use_tracking_uri(store.tracking_uri),
        warnings.catch_warnings(),
        mlflow.start_run(experiment_id=store.experiment_id) as run,
    ):
        warnings.simplefilter("ignore")
        info = mlflow.sklearn.log_model(
            fitted,
            name="model",
            signature=infer_signature(features, fitted.predict(features)),
            input_example=features.head(5),
            serialization_format="skops",
            pip_requirements=["scikit-learn", "skops"],  # skips slow requirement inference
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(fitted)),
        )
    return TinyModel(fitted, features, info.model_uri, run.info.run_id)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    """iris (classifier, string labels), diabetes (regressor) and mixed (classifier with
    optional double and string columns, int labels), each registered as version 1."""
    root = tmp_path_factory.mktemp("protocols-store")
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = client.create_experiment(
        "protocol-tests", artifact_location=(root / "artifacts").as_uri()
    )
    tiny = TinyStore(root, tracking_uri, client, experiment_id)
    features, y = _iris()
    tiny.models["iris"] = _log(
        tiny, features, y, _pipeline(features, LogisticRegression(max_iter=300))
    )
    features, y = _diabetes()
    tiny.models["diabetes"] = _log(tiny, features, y, _pipeline(features, Ridge()))
    features, y = _mixed()
    tiny.models["mixed"] = _log(
        tiny,
        features,
        y,
        _pipeline(features, RandomForestClassifier(n_estimators=5, random_state=0)),
    )
    for name, model in tiny.models.items():
        tiny.register(name, model)
    return tiny


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings must come from the test, not from the developer's shell."""
    for key in list(os.environ):
        if key.startswith("SERVING_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _no_traceback(response: httpx.Response) -> None:
    response.read()
    assert "Traceback" not in response.text, response.text


def build_app(settings: Settings) -> FastAPI:
    """The real app: ``create_app`` mounts both protocol routers."""
    return create_app(settings)


@pytest.fixture
def make_client(store: TinyStore) -> Iterator[Callable[..., TestClient]]:
    """Start an app (lifespan included) serving ``models:/<name>/1``; stopped at the end.

    Every response is checked for leaked stack traces.
    """
    clients: list[TestClient] = []

    def _make(name: str = "iris", settings: Settings | None = None) -> TestClient:
        client = TestClient(build_app(settings or store.settings(name)))
        client.event_hooks["response"] = [_no_traceback]
        client.__enter__()
        clients.append(client)
        return client

    yield _make
    for client in reversed(clients):
        client.__exit__(None, None, None)


def _gappy() -> tuple[pd.DataFrame, np.ndarray]:
    """iris plus 'petals' (long); 'sepal width (cm)' has gaps, so it is an optional double."""
    features, _ = _iris()
    features = features.copy()
    features["petals"] = np.random.default_rng(3).integers(3, 7, len(features)).astype("int64")
    features.loc[[2, 30, 77, 120], "sepal width (cm)"] = np.nan
    return features, load_iris().target.astype("int64")


@pytest.fixture(scope="session")
def gappy(store: TinyStore) -> TinyModel:
    """A forest on numeric inputs only, with an optional double, a required long and integer
    labels, registered as 'gappy' version 1."""
    features, y = _gappy()
    model = _log(
        store,
        features,
        y,
        _pipeline(features, RandomForestClassifier(n_estimators=7, random_state=0)),
    )
    store.models["gappy"] = model
    store.register("gappy", model)
    return model
