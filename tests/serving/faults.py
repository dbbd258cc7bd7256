"""Real faults for the serving tests: a private copy of the store to move away, and freshly
logged versions whose artifacts are then corrupted or deleted (nothing is mocked)."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import skops.io
from mlflow import MlflowClient
from mlflow.models import infer_signature
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from tests.serving.factories import TinyModel, TinyStore


def private_store(store: TinyStore, directory: Path) -> TinyStore:
    """A copy of the session store's database in ``directory``, safe to move away or break.

    Its experiment still keeps artifacts under the session store's root, so ``root`` stays
    that root: :func:`artifact_dir` finds new versions' files there.
    """
    directory.mkdir(parents=True, exist_ok=True)
    db = directory / "mlflow.db"
    shutil.copyfile(store.root / "mlflow.db", db)
    uri = f"sqlite:///{db}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    return TinyStore(store.root, uri, client, store.experiment_id, dict(store.models))


def log_iris_copy(store: TinyStore) -> TinyModel:
    """Log the session's fitted iris pipeline again, as a new model with its own artifacts."""
    return relog(store, store.models["iris"])


def relog(
    store: TinyStore, model: TinyModel, dicts: Mapping[str, dict[str, Any]] | None = None
) -> TinyModel:
    """Log ``model``'s fitted pipeline again in a new run of the store, with ``dicts`` as JSON
    artifacts of that run (by artifact path), as training logs its records."""
    fitted = model.estimator
    with (
        _use_tracking_uri(store.tracking_uri),
        warnings.catch_warnings(),
        mlflow.start_run(experiment_id=store.experiment_id) as run,
    ):
        warnings.simplefilter("ignore")
        info = mlflow.sklearn.log_model(
            fitted,
            name="model",
            signature=infer_signature(model.features, fitted.predict(model.features)),
            serialization_format="skops",
            pip_requirements=["scikit-learn", "skops"],
            skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(fitted)),
        )
        for path, document in (dicts or {}).items():
            mlflow.log_dict(document, path)
    return TinyModel(fitted, model.features, info.model_uri, run.info.run_id, {})


def artifact_dir(store: TinyStore, model: TinyModel) -> Path:
    """Where the artifact store keeps ``model``'s files (MLmodel, model.skops, ...)."""
    model_id = model.model_uri.removeprefix("models:/")
    path = store.root / "artifacts" / "models" / model_id / "artifacts"
    assert (path / "MLmodel").is_file(), path
    return path


def corrupt_skops(store: TinyStore, model: TinyModel) -> Path:
    """Overwrite the model's skops file with bytes that are not a zip archive."""
    path = artifact_dir(store, model) / "model.skops"
    path.write_bytes(b"this is not a skops archive\n")
    return path


def delete_artifacts(store: TinyStore, model: TinyModel) -> Path:
    """Delete the model's whole artifact directory."""
    path = artifact_dir(store, model)
    shutil.rmtree(path)
    return path
