"""Small factories shared by the serving tests: the objects the fixtures in ``conftest.py``
hand out, and request bodies. Test modules import them as
``from tests.serving.factories import ...`` (pytest's importlib mode registers ``tests`` as a
namespace package)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import mlflow
import pandas as pd
import pyarrow.dataset as ds
from fastapi.testclient import TestClient
from mlflow import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from serving.settings import Settings

SETOSA: Final[dict[str, float]] = {
    "sepal length (cm)": 5.1,
    "sepal width (cm)": 3.5,
    "petal length (cm)": 1.4,
    "petal width (cm)": 0.2,
}
"""One iris record (the first row of the data set): a valid /predict body for the iris models.
Shared: copy it (``{**SETOSA, ...}``) to change it."""

MakeClient = Callable[..., TestClient]
"""The ``make_client`` fixture: an app (lifespan included) around a store model."""


@dataclass(frozen=True)
class TinyModel:
    """A fitted sklearn Pipeline, the frame it was trained on and where it was logged."""

    estimator: Any
    features: pd.DataFrame
    model_uri: str
    run_id: str
    metrics: dict[str, float]


@dataclass
class TinyStore:
    """A temporary MLflow store holding a few registered models."""

    root: Path
    tracking_uri: str
    client: MlflowClient
    experiment_id: str
    models: dict[str, TinyModel] = field(default_factory=dict)

    def register(
        self, name: str, model: TinyModel, *, production: bool = False, alias: str | None = None
    ) -> str:
        """Register ``model`` as a new version of ``name``; return the version."""
        try:
            self.client.get_registered_model(name)
        except mlflow.exceptions.MlflowException:
            self.client.create_registered_model(name)
        # The registry resolves the logged-model source through the global tracking URI.
        with _use_tracking_uri(self.tracking_uri):
            version = self.client.create_model_version(
                name, source=model.model_uri, run_id=model.run_id, tags={"run_id": model.run_id}
            ).version
        if production:
            self.promote(name, str(version))
        if alias is not None:
            self.client.set_registered_model_alias(name, alias, str(version))
        return str(version)

    def promote(self, name: str, version: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.client.transition_model_version_stage(
                name, version, "Production", archive_existing_versions=True
            )
        self.client.set_registered_model_alias(name, "champion", version)

    def stage_challenger(self, name: str, version: str) -> None:
        """Put ``version`` in Staging with the ``challenger`` alias, as ``gate.live`` does."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self.client.transition_model_version_stage(
                name, version, "Staging", archive_existing_versions=True
            )
        self.client.set_registered_model_alias(name, "challenger", version)

    def settings(self, **overrides: Any) -> Settings:
        """Settings pointing at this store; keyword arguments override the rest."""
        values: dict[str, Any] = {"tracking_uri": self.tracking_uri, "poll_seconds": 0.05}
        values.update(overrides)
        return Settings(**values)


def wait_until(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail (saying ``what``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what or "the condition never held"
        time.sleep(0.05)


def read_predictions(log_dir: Path, model_name: str) -> pd.DataFrame:
    """Every prediction row the log holds for ``model_name`` (all parts, both roles)."""
    directory = log_dir / model_name / "predictions"
    if not directory.is_dir() or not list(directory.glob("part-*.parquet")):
        return pd.DataFrame()
    table = ds.dataset(sorted(directory.glob("part-*.parquet")), format="parquet").to_table()
    return table.to_pandas()
