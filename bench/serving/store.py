"""The data set, the two models and the throwaway MLflow store they are registered in."""

from __future__ import annotations

import importlib.metadata
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.serving.console import log

MODEL_TITLES = {
    "rf": "RandomForestClassifier(n_estimators=100)",
    "lr": "LogisticRegression",
}


@dataclass
class Dataset:
    columns: list[str]
    single_rows: list[list[float]]  # the pool of single-row payloads (held-out rows)
    bulk_rows: list[list[float]]  # the rows of the one bulk request


@dataclass
class Store:
    root: Path
    tracking_uri: str
    registered: dict[str, str]  # model key -> registered model name


def load_dataset(bulk_rows: int) -> tuple[Any, Any, Dataset]:
    """(X_train, y_train, the request rows) from scikit-learn's breast-cancer data."""
    import numpy as np
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    frame = load_breast_cancer(as_frame=True)
    X = frame.data.astype("float64")
    y = frame.target
    X_train, X_test, y_train, _ = train_test_split(X, y, test_size=0.3, random_state=0, stratify=y)
    rng = np.random.default_rng(0)
    bulk_index = rng.integers(0, len(X), size=bulk_rows)
    data = Dataset(
        columns=[str(c) for c in X.columns],
        single_rows=[[float(v) for v in row] for row in X_test.to_numpy()],
        bulk_rows=[[float(v) for v in row] for row in X.to_numpy()[bulk_index]],
    )
    return X_train, y_train, data


def registered_name(key: str) -> str:
    """The registered model the benchmark serves for model ``key`` (rf, lr)."""
    return f"bench-{key}"


def build_estimator(key: str, columns: Sequence[str]) -> Any:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if key == "rf":
        model: Any = RandomForestClassifier(n_estimators=100, random_state=0, n_jobs=1)
    elif key == "lr":
        model = LogisticRegression(max_iter=5000)
    else:
        raise ValueError(f"unknown model {key!r}: use rf or lr")
    preprocess = ColumnTransformer([("num", StandardScaler(), list(columns))])
    return Pipeline([("preprocess", preprocess), ("model", model)])


def _pinned_requirements() -> list[str]:
    # Exact pins from this environment (as the train step does): no slow inference.
    return [
        f"{package}=={importlib.metadata.version(package)}"
        for package in ("mlflow", "scikit-learn", "skops", "numpy", "scipy", "pandas")
    ]


def build_store(root: Path, keys: Sequence[str], X_train: Any, y_train: Any) -> Store:
    """Train, log, register and promote each model in a new SQLite store under ``root``."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import mlflow
    from mlflow import MlflowClient

    tracking_uri = f"sqlite:///{root}/mlflow.db"
    # `make bench-serving` exports MLFLOW_TRACKING_URI=sqlite:///mlflow.db: never use it here.
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    os.environ.pop("MLFLOW_REGISTRY_URI", None)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    experiment_id = client.create_experiment(
        "bench-serving", artifact_location=(root / "artifacts").as_uri()
    )
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    registered = {key: _register(client, experiment_id, key, X_train, y_train) for key in keys}
    return Store(root=root, tracking_uri=tracking_uri, registered=registered)


def log_version(experiment_id: str, name: str, model: Any, X_train: Any, *, run_name: str) -> str:
    """Log a fitted ``model`` as the pipeline does (skops, trusted types, signature, pinned
    requirements) and register it as a new version of ``name``; returns the version."""
    import mlflow
    import skops.io
    from mlflow.models import infer_signature

    with (
        warnings.catch_warnings(),
        mlflow.start_run(experiment_id=experiment_id, run_name=run_name),
    ):
        warnings.simplefilter("ignore")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(X_train, model.predict(X_train)),
            input_example=X_train.head(5),
            serialization_format="skops",
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
            pip_requirements=_pinned_requirements(),
        )
        return str(mlflow.register_model(info.model_uri, name).version)


def _register(client: Any, experiment_id: str, key: str, X_train: Any, y_train: Any) -> str:
    """Fit, log and register one model; its version 1 goes to Production as `champion`."""
    started = time.perf_counter()
    model = build_estimator(key, list(X_train.columns)).fit(X_train, y_train)
    name = registered_name(key)
    version = log_version(experiment_id, name, model, X_train, run_name=f"bench-{key}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        client.transition_model_version_stage(name, version, "Production")
    client.set_registered_model_alias(name, "champion", version)
    log(
        f"registered {name} v{version} ({MODEL_TITLES[key]}) in Production "
        f"in {time.perf_counter() - started:.1f}s"
    )
    return name
