"""Resolve, download and safely load a registered model version. No HTTP in here.

The model is never unpickled: the sklearn flavor must be serialized with skops, and every
type skops does not trust by default must come from an allowed module before it is loaded.
"""

from __future__ import annotations

import logging
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import skops.io
from mlflow import MlflowClient
from mlflow.artifacts import download_artifacts
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.types.schema import DataType
from sklearn.base import is_classifier

from pipeline.contracts import (
    COLUMN_TYPES,
    HELD_OUT_PREFIX,
    TRUSTED_MODULE_PREFIXES,
    Task,
    refused_types,
)
from serving.errors import (
    ModelLoadError,
    ModelNotFoundError,
    NoVersionInStageError,
    ServingError,
    UnsafeModelError,
    UnsupportedModelError,
)
from serving.model.ref import ModelRef

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


@dataclass(frozen=True)
class InputColumn:
    """One named input of the model signature."""

    name: str
    type: str
    required: bool


@dataclass(frozen=True)
class ResolvedVersion:
    """A registry version the reference points at, before anything is downloaded."""

    name: str
    version: str
    stage: str | None
    aliases: tuple[str, ...]
    run_id: str | None


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model version ready to predict, with what the server reports about it."""

    name: str
    version: str
    stage: str | None
    aliases: tuple[str, ...]
    reference: str
    run_id: str | None
    task: Task
    columns: tuple[InputColumn, ...]
    classes: tuple[Any, ...] | None
    metrics: Mapping[str, float]
    estimator: Any = field(repr=False)
    input_example: tuple[Mapping[str, Any], ...] = field(default=(), repr=False)
    """The logged input example as records (None for missing values); empty if none."""

    @property
    def has_proba(self) -> bool:
        return self.task == "classification" and hasattr(self.estimator, "predict_proba")


def promote_hint(name: str) -> str:
    """Tell the operator how to put a version of ``name`` into Production."""
    return (
        f"Promote one with `python -m pipeline promote --name {name} --version <v>`, "
        "or run `make pipeline` to train, register and promote."
    )


def resolve_version(ref: ModelRef, tracking_uri: str) -> ResolvedVersion:
    """Find which registry version ``ref`` points at right now."""
    client = _client(tracking_uri)
    version = _registry_call(tracking_uri, lambda: _find_version(client, ref))
    return ResolvedVersion(
        name=version.name,
        version=str(version.version),
        stage=version.current_stage,
        aliases=tuple(version.aliases or ()),
        run_id=version.run_id,
    )


def load_model(ref: ModelRef, tracking_uri: str) -> LoadedModel:
    """Resolve ``ref``, download its artifacts and load it safely.

    Raises:
        ModelNotFoundError: the registered model, alias or version does not exist.
        NoVersionInStageError: no version is in the requested stage yet.
        UnsafeModelError: the model is not skops or holds a type outside the allowed modules.
        UnsupportedModelError: no sklearn flavor or no named input signature.
        ModelLoadError: the registry or artifact store could not be reached.
    """
    client = _client(tracking_uri)
    version = _registry_call(tracking_uri, lambda: _find_version(client, ref))
    label = f"model '{version.name}' version {version.version}"
    download_uri = _registry_call(
        tracking_uri,
        lambda: client.get_model_version_download_uri(version.name, str(version.version)),
    )
    logger.info("Loading %s from %s", label, download_uri)
    with tempfile.TemporaryDirectory(prefix="serving-model-") as tmp:
        local_dir = Path(
            _registry_call(
                tracking_uri,
                lambda: download_artifacts(
                    artifact_uri=download_uri, dst_path=tmp, tracking_uri=tracking_uri
                ),
            )
        )
        mlmodel = _read_mlmodel(local_dir, label)
        estimator = _load_estimator(local_dir, mlmodel, label)
        example = _input_example(local_dir, mlmodel, label)
    columns = _input_columns(mlmodel, label)
    run_id = version.run_id or mlmodel.run_id
    classifier = bool(is_classifier(estimator))
    classes = getattr(estimator, "classes_", None) if classifier else None
    loaded = LoadedModel(
        name=version.name,
        version=str(version.version),
        stage=version.current_stage,
        aliases=tuple(version.aliases or ()),
        reference=ref.uri,
        run_id=run_id,
        task="classification" if classifier else "regression",
        columns=columns,
        classes=None if classes is None else tuple(to_native(c) for c in classes),
        metrics=_held_out_metrics(client, run_id, version),
        estimator=estimator,
        input_example=example,
    )
    logger.info("Loaded %s (%s, %d input columns)", label, loaded.task, len(columns))
    return loaded


def to_native(value: Any) -> Any:
    """Turn a numpy scalar into the equivalent Python value (str, int, float, bool)."""
    return value.item() if isinstance(value, np.generic) else value


def _client(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri``; refuses to create a missing SQLite store."""
    if tracking_uri.startswith("sqlite:///"):
        db_path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
        if db_path and db_path != ":memory:" and not Path(db_path).is_file():
            raise ModelLoadError(
                f"No MLflow store at {db_path} (tracking URI {tracking_uri}). Run "
                "`make pipeline` to create it, or point SERVING_TRACKING_URI at the store."
            )
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _registry_call(tracking_uri: str, call: Callable[[], _T]) -> _T:
    try:
        return call()
    except ServingError:
        raise
    except MlflowException as exc:
        raise ModelLoadError(
            f"The MLflow registry at {tracking_uri} refused the request: {exc.message}. "
            "Check SERVING_TRACKING_URI (or MLFLOW_TRACKING_URI)."
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"Could not reach the MLflow registry at {tracking_uri}: {exc}. "
            "Check SERVING_TRACKING_URI (or MLFLOW_TRACKING_URI) and that the store is up."
        ) from exc


def _find_version(client: MlflowClient, ref: ModelRef) -> ModelVersion:
    try:
        client.get_registered_model(ref.name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ModelNotFoundError(
            f"No registered model named '{ref.name}' in the registry. Train and register "
            "one with `make pipeline`, or set SERVING_MODEL_NAME / SERVING_MODEL_URI to an "
            "existing model."
        ) from exc
    if ref.kind == "stage":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            versions = client.get_latest_versions(ref.name, stages=[ref.value])
        if not versions:
            raise NoVersionInStageError(
                f"Registered model '{ref.name}' has no version in stage '{ref.value}' yet. "
                + promote_hint(ref.name)
            )
        return max(versions, key=lambda v: int(v.version))
    if ref.kind == "alias":
        try:
            return client.get_model_version_by_alias(ref.name, ref.value)
        except MlflowException as exc:
            raise ModelNotFoundError(
                f"Registered model '{ref.name}' has no alias '{ref.value}'. Set the alias on "
                "a version, or point SERVING_MODEL_URI at an existing alias or version."
            ) from exc
    try:
        return client.get_model_version(ref.name, ref.value)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise ModelNotFoundError(
            f"Registered model '{ref.name}' has no version {ref.value}. Point "
            "SERVING_MODEL_URI at an existing version."
        ) from exc


def _read_mlmodel(local_dir: Path, label: str) -> Model:
    path = local_dir / "MLmodel"
    if not path.is_file():
        raise UnsupportedModelError(f"The artifacts of {label} have no MLmodel file: re-log it.")
    return Model.load(str(path))


def _load_estimator(local_dir: Path, mlmodel: Model, label: str) -> Any:
    flavor = mlmodel.flavors.get("sklearn")
    if flavor is None:
        raise UnsupportedModelError(
            f"{label} has no sklearn flavor: log it with mlflow.sklearn.log_model."
        )
    if flavor.get("serialization_format") != "skops":
        raise UnsafeModelError(
            f"{label} is serialized as {flavor.get('serialization_format')!r}; only skops is "
            "loaded, because pickle can run arbitrary code. Re-log it with "
            'serialization_format="skops".'
        )
    data_path = (local_dir / str(flavor.get("pickled_model", "model.skops"))).resolve()
    if not data_path.is_file() or local_dir.resolve() not in data_path.parents:
        raise UnsupportedModelError(f"The skops file of {label} is missing from its artifacts.")
    untrusted = skops.io.get_untrusted_types(file=data_path)
    refused = refused_types(untrusted)
    if refused:
        raise UnsafeModelError(
            f"Refusing to load {label}: its skops file contains type(s) "
            f"{', '.join(refused)} outside the allowed modules "
            f"({', '.join(TRUSTED_MODULE_PREFIXES)}). Re-train it with plain scikit-learn "
            "components."
        )
    try:
        estimator = skops.io.load(data_path, trusted=untrusted)
    except Exception as exc:
        raise ModelLoadError(f"Could not load the skops file of {label}: {exc}") from exc
    if not hasattr(estimator, "predict"):
        raise UnsupportedModelError(f"{label} has no predict method.")
    return estimator


def _input_example(local_dir: Path, mlmodel: Model, label: str) -> tuple[dict[str, Any], ...]:
    """The logged input example as records, or () when there is none or it cannot be read."""
    if mlmodel.saved_input_example_info is None:
        return ()
    try:
        example: Any = mlmodel.load_input_example(str(local_dir))
        frame = example if isinstance(example, pd.DataFrame) else pd.DataFrame(example)
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
    except Exception as exc:
        logger.warning("Ignoring the unreadable input example of %s: %s", label, exc)
        return ()
    return tuple({str(k): to_native(v) for k, v in record.items()} for record in records)


def _input_columns(mlmodel: Model, label: str) -> tuple[InputColumn, ...]:
    schema = mlmodel.get_input_schema()
    if schema is None or not schema.has_input_names():
        raise UnsupportedModelError(
            f"{label} has no signature with named input columns: log it with "
            "signature=infer_signature(X_train, y_pred) on a DataFrame."
        )
    columns = []
    for spec in schema.inputs:
        type_name = spec.type.name if isinstance(spec.type, DataType) else str(spec.type)
        if type_name not in COLUMN_TYPES:
            raise UnsupportedModelError(
                f"{label} input '{spec.name}' has type {type_name}; serving supports "
                f"{', '.join(sorted(COLUMN_TYPES))}."
            )
        columns.append(InputColumn(name=str(spec.name), type=type_name, required=spec.required))
    return tuple(columns)


def _held_out_metrics(
    client: MlflowClient, run_id: str | None, version: ModelVersion
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for key, raw in (version.tags or {}).items():
        if key.startswith(HELD_OUT_PREFIX):
            try:
                metrics[key] = float(raw)
            except ValueError:
                continue
    if run_id:
        try:
            run_metrics = client.get_run(run_id).data.metrics
        except MlflowException:
            logger.warning("Run %s of model %s not found; metrics from tags", run_id, version.name)
        else:
            metrics.update(
                {k: float(v) for k, v in run_metrics.items() if k.startswith(HELD_OUT_PREFIX)}
            )
    return dict(sorted(metrics.items()))
