"""Fixtures: tiny real models in a throwaway MLflow store, and apps around them.

The objects they hand out (``TinyStore``, ``TinyModel``) and shared request bodies live in
``tests/serving/factories.py``, which test modules import like any module.

Nothing here touches ./mlruns, ./mlflow.db or the network: every store lives under a
pytest temporary directory and every model is fitted on data bundled with scikit-learn.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable, Iterator
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
from sklearn.base import BaseEstimator, TransformerMixin, is_classifier
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes, load_iris
from sklearn.ensemble import BaggingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.svm import LinearSVC
from sklearn.tree import DecisionTreeClassifier

from serving.app import create_app
from serving.settings import Settings
from tests.serving.factories import TinyModel, TinyStore


class ShadyTransformer(TransformerMixin, BaseEstimator):
    """A transformer from outside the allowed modules: serving must refuse to load it."""

    def fit(self, features: Any, y: Any = None) -> ShadyTransformer:
        return self

    def transform(self, features: Any) -> Any:
        return features


def _iris() -> tuple[pd.DataFrame, np.ndarray]:
    iris = load_iris(as_frame=True)
    features = iris.frame.drop(columns="target")
    y = np.asarray(iris.target_names)[iris.target.to_numpy()]
    return features, y


def _diabetes() -> tuple[pd.DataFrame, np.ndarray]:
    data = load_diabetes(as_frame=True)
    return data.frame.drop(columns="target").iloc[:150], data.target.to_numpy()[:150]


def _mixed() -> tuple[pd.DataFrame, np.ndarray]:
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


def _pipeline(features: pd.DataFrame, estimator: Any, *, unknown: str = "ignore") -> Pipeline:
    numeric = [c for c in features.columns if features[c].dtype.kind in "if"]
    categorical = [c for c in features.columns if c not in numeric]
    steps = [
        (
            "num",
            Pipeline([("impute", SimpleImputer()), ("scale", StandardScaler())]),
            numeric,
        )
    ]
    if categorical:
        steps.append(
            (
                "cat",
                Pipeline(
                    [
                        ("impute", SimpleImputer(strategy="most_frequent")),
                        ("onehot", OneHotEncoder(handle_unknown=unknown)),
                    ]
                ),
                categorical,
            )
        )
    return Pipeline([("preprocess", ColumnTransformer(steps)), ("model", estimator)])


def _log(
    store: TinyStore, features: pd.DataFrame, y: np.ndarray, estimator: Any, **log_kwargs: Any
) -> TinyModel:
    fitted = estimator.fit(features, y)
    predictions = fitted.predict(features)
    if is_classifier(fitted):
        metrics = {"test_accuracy": float(np.mean(predictions == y)), "cv_accuracy": 0.5}
    else:
        metrics = {"test_rmse": float(np.sqrt(np.mean((predictions - y) ** 2))), "cv_rmse": 1.0}
    kwargs: dict[str, Any] = {
        "serialization_format": "skops",
        "pip_requirements": ["scikit-learn", "skops"],  # skips slow requirement inference
        "skops_trusted_types": skops.io.get_untrusted_types(data=skops.io.dumps(fitted)),
    }
    kwargs.update(log_kwargs)
    with (
        _use_tracking_uri(store.tracking_uri),
        warnings.catch_warnings(),
        mlflow.start_run(experiment_id=store.experiment_id) as run,
    ):
        warnings.simplefilter("ignore")
        mlflow.log_metrics(metrics)
        info = mlflow.sklearn.log_model(
            fitted,
            name="model",
            signature=infer_signature(features, predictions),
            input_example=features.head(5),
            **kwargs,
        )
    return TinyModel(fitted, features, info.model_uri, run.info.run_id, metrics)


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory) -> TinyStore:
    """One store for the session: iris (v1 Production + champion, v2 LinearSVC as
    challenger), diabetes (regressor, Production) and mixed (optional columns, Production)."""
    root = tmp_path_factory.mktemp("mlflow-store")
    tracking_uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = client.create_experiment(
        "serving-tests", artifact_location=(root / "artifacts").as_uri()
    )
    tiny = TinyStore(root, tracking_uri, client, experiment_id)
    features, y = _iris()
    tiny.models["iris"] = _log(
        tiny, features, y, _pipeline(features, LogisticRegression(max_iter=300))
    )
    tiny.models["iris_svc"] = _log(tiny, features, y, _pipeline(features, LinearSVC()))
    features, y = _diabetes()
    tiny.models["diabetes"] = _log(tiny, features, y, _pipeline(features, Ridge()))
    features, y = _mixed()
    tiny.models["mixed"] = _log(
        tiny,
        features,
        y,
        _pipeline(features, RandomForestClassifier(n_estimators=5, random_state=0)),
    )
    tiny.register("iris", tiny.models["iris"], production=True)
    tiny.register("iris", tiny.models["iris_svc"], alias="challenger")
    tiny.register("diabetes", tiny.models["diabetes"], production=True)
    tiny.register("mixed", tiny.models["mixed"], production=True)
    return tiny


@pytest.fixture(scope="session")
def shady_model(store: TinyStore) -> TinyModel:
    """An iris model whose pipeline holds a type from outside the allowed modules."""
    features, y = _iris()
    estimator = Pipeline(
        [("shady", ShadyTransformer()), ("model", LogisticRegression(max_iter=300))]
    )
    return _log(store, features, y, estimator)


@pytest.fixture(scope="session")
def pickled_model(store: TinyStore) -> TinyModel:
    """An iris model logged with pickle, which serving must never load."""
    features, y = _iris()
    return _log(
        store,
        features,
        y,
        _pipeline(features, LogisticRegression(max_iter=300)),
        serialization_format="pickle",
    )


@pytest.fixture(scope="session")
def forest_model(store: TinyStore) -> TinyModel:
    """An iris random forest: its labels come from the same probabilities as predict_proba."""
    features, y = _iris()
    estimator = _pipeline(features, RandomForestClassifier(n_estimators=10, random_state=0))
    return _log(store, features, y, estimator)


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


@pytest.fixture(scope="session")
def sparse_iris(store: TinyStore) -> TinyModel:
    """An iris forest whose 'sepal width (cm)' had gaps in training, so it is an optional
    double: every input numeric. Registered as 'sparse-iris', version 1 in Production."""
    features, y = _iris()
    features = features.copy()
    features.loc[[2, 30, 77, 120], "sepal width (cm)"] = np.nan
    estimator = _pipeline(features, RandomForestClassifier(n_estimators=7, random_state=0))
    model = _log(store, features, y, estimator)
    store.register("sparse-iris", model, production=True)
    return model


@pytest.fixture(scope="session")
def strict_mixed(store: TinyStore) -> TinyModel:
    """A model with the 'mixed' inputs that fails for real on any request for the city
    'nice': trained without it, with a one-hot encoder that raises on unknown categories. Its
    logged input example has no 'nice', so it loads and warms up like any model."""
    features, y = _mixed()
    features = features.copy()
    features["city"] = features["city"].replace("nice", "lyon")
    estimator = _pipeline(
        features, RandomForestClassifier(n_estimators=5, random_state=1), unknown="error"
    )
    return _log(store, features, y, estimator)


@pytest.fixture(scope="session")
def slow_iris(store: TinyStore) -> TinyModel:
    """Iris bagged over 500 trees: about 50 ms per call, fifty times the logistic model.

    Bagging, not a random forest: the server walks a forest's trees at once, in well under a
    millisecond for a row, while bagging calls each tree in turn whatever the rows."""
    features, y = _iris()
    bagged = BaggingClassifier(DecisionTreeClassifier(), n_estimators=500, random_state=0)
    estimator = _pipeline(features, bagged)
    return _log(store, features, y, estimator)


def log_broken_model(store: TinyStore) -> TinyModel:
    """A freshly logged iris model whose skops file is then deleted from the artifact store."""
    features, y = _iris()
    model = _log(store, features, y, _pipeline(features, LogisticRegression(max_iter=300)))
    model_id = model.model_uri.removeprefix("models:/")
    skops_file = store.root / "artifacts" / "models" / model_id / "artifacts" / "model.skops"
    assert skops_file.is_file(), skops_file
    skops_file.unlink()
    return model


@pytest.fixture
def broken_model(store: TinyStore) -> TinyModel:
    return log_broken_model(store)


@pytest.fixture
def make_broken_model(store: TinyStore) -> Callable[[], TinyModel]:
    """Log a broken model when called (e.g. in the middle of a test)."""
    return lambda: log_broken_model(store)


@pytest.fixture
def unique_name() -> str:
    """A registered model name no other test uses."""
    return f"model-{uuid.uuid4().hex[:8]}"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings must come from the test, not from the developer's shell; and the prediction
    log (on by default, relative to the working directory) must not land in the checkout."""
    import os

    monkeypatch.chdir(tmp_path)
    for key in list(os.environ):
        if key.startswith("SERVING_"):
            monkeypatch.delenv(key)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


def _no_traceback(response: httpx.Response) -> None:
    response.read()
    assert "Traceback" not in response.text, response.text


@pytest.fixture
def make_client(store: TinyStore) -> Iterator[Callable[..., TestClient]]:
    """Start an app (lifespan included) around a store model; stops them all at the end.

    Every response is checked for leaked stack traces.
    """
    clients: list[TestClient] = []

    def _make(
        settings: Settings | None = None, *, raise_server_exceptions: bool = True, **overrides: Any
    ) -> TestClient:
        app: FastAPI = create_app(settings or store.settings(**overrides))
        client = TestClient(app, raise_server_exceptions=raise_server_exceptions)
        client.event_hooks["response"] = [_no_traceback]
        client.__enter__()
        clients.append(client)
        return client

    yield _make
    for client in reversed(clients):
        client.__exit__(None, None, None)
