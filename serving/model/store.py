"""Resolve, download and safely load a registered model version. No HTTP in here.

The model is never unpickled: the sklearn flavor must be serialized with skops, and every
type skops does not trust by default must come from an allowed module before it is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse
from urllib.request import url2pathname

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
from sklearn.pipeline import Pipeline

from pipeline.contracts import (
    CANARY_ROLLBACK_TAG,
    COLUMN_TYPES,
    HELD_OUT_PREFIX,
    STORE_LOCK_SUFFIX,
    TRUSTED_MODULE_PREFIXES,
    InputDomain,
    Task,
    refused_types,
)
from serving.errors import (
    ModelArtifactError,
    ModelLoadError,
    ModelNotFoundError,
    NoVersionInStageError,
    RegistryUnavailableError,
    ServingError,
    UnsafeModelError,
    UnsupportedModelError,
)
from serving.model.domain import load_domain
from serving.model.fastpath import FastPreprocessing, compile_preprocessing
from serving.model.forest import ForestWalk, compile_walk
from serving.model.ref import ModelRef

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_ADDRESS = re.compile(r" (?:object )?at 0x[0-9a-fA-F]+")
_REASON_CHARS = 300


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
    rollback: str | None = None
    """The version's canary rollback tag (``contracts.CANARY_ROLLBACK_TAG``), if a server set it."""


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
    domain: InputDomain | None = field(default=None, repr=False)
    """The training domain logged with the run (values outside it are flagged); None if none."""
    fast: FastPreprocessing | None = field(default=None, repr=False)
    """The estimator's preprocessing replayed in NumPy, when it is checked equal to
    scikit-learn's (see :mod:`serving.model.fastpath`); else None."""
    walk: ForestWalk | None = field(default=None, repr=False)
    """The final estimator's trees flattened for small batches, when it is a forest checked
    equal to scikit-learn's (see :mod:`serving.model.forest`); else None."""

    @property
    def has_proba(self) -> bool:
        return self.task == "classification" and hasattr(self.estimator, "predict_proba")

    @property
    def replay(self) -> FastPreprocessing | None:
        """``fast``, if it replays this very estimator (a copy with another one has none)."""
        fast = self.fast
        return fast if fast is not None and fast.pipeline is self.estimator else None


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
        rollback=(version.tags or {}).get(CANARY_ROLLBACK_TAG),
    )


def set_rollback_tag(tracking_uri: str, name: str, version: str, value: str) -> None:
    """Record on the registry that the canary of ``name`` ``version`` was rolled back, and why.

    Raises:
        RegistryUnavailableError: the registry could not be reached (the caller retries).
        ModelLoadError: the registry refused the write.
    """
    client = _client(tracking_uri)
    _registry_call(
        tracking_uri,
        lambda: client.set_model_version_tag(name, version, CANARY_ROLLBACK_TAG, value),
    )


def load_model(ref: ModelRef, tracking_uri: str) -> LoadedModel:
    """Resolve ``ref``, download its artifacts and load it safely.

    Raises:
        ModelNotFoundError: the registered model, alias or version does not exist.
        NoVersionInStageError: no version is in the requested stage yet.
        RegistryUnavailableError: the registry could not be asked (down, moved, unreadable).
        ModelArtifactError: the version's artifacts are missing or a file in them is corrupt.
        UnsafeModelError: the model is not skops or holds a type outside the allowed modules.
        UnsupportedModelError: no sklearn flavor or no named input signature.
        ModelLoadError: the registry refused a request.
    """
    client = _client(tracking_uri)
    version = _registry_call(tracking_uri, lambda: _find_version(client, ref))
    label = f"model '{version.name}' version {version.version}"
    source = _registry_call(
        tracking_uri,
        lambda: client.get_model_version_download_uri(version.name, str(version.version)),
    )
    # Debug only: a version that fails to load is retried every poll, and the holder logs
    # the failure once, not each attempt.
    logger.debug("Loading %s from %s", label, source)
    with tempfile.TemporaryDirectory(prefix="serving-model-") as tmp:
        local_dir = _download(source, tmp, tracking_uri, label)
        mlmodel = _read_mlmodel(local_dir, label, source)
        estimator = _load_estimator(local_dir, mlmodel, label, source)
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
        domain=load_domain(run_id, tracking_uri, label),
        fast=_fast_preprocessing(estimator, columns, example),
        walk=compile_walk(estimator[-1] if isinstance(estimator, Pipeline) else estimator),
    )
    logger.info(
        "Loaded %s (%s, %d input columns, preprocessing in %s%s)",
        label,
        loaded.task,
        len(columns),
        "scikit-learn" if loaded.fast is None else "NumPy, checked equal to scikit-learn",
        "" if loaded.walk is None else ", small batches' trees walked in NumPy",
    )
    return loaded


def _fast_preprocessing(
    estimator: Any, columns: Sequence[InputColumn], example: Sequence[Mapping[str, Any]]
) -> FastPreprocessing | None:
    """The NumPy preprocessing, for models whose inputs are all doubles (one float64 matrix)."""
    if not columns or any(column.type != "double" for column in columns):
        return None
    return compile_preprocessing(estimator, [column.name for column in columns], example)


def to_native(value: Any) -> Any:
    """Turn a numpy scalar into the equivalent Python value (str, int, float, bool)."""
    return value.item() if isinstance(value, np.generic) else value


@contextlib.contextmanager
def bounded_mlflow_calls(timeout_seconds: float) -> Iterator[None]:
    """While the context lasts, MLflow's HTTP client tries each request once, for at most
    ``timeout_seconds``, and draws no download progress bars, unless the operator set these
    variables.

    By default MLflow retries a dead tracking server with exponential backoff for about two
    minutes (``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, ``MLFLOW_HTTP_REQUEST_TIMEOUT``, read at
    every request), and meanwhile the server could not tell anyone the registry is down. The
    poll loop is the retry loop here: a failed request is reported, then asked again at the
    next poll. The only MLflow requests a serving process makes are its registry polls and
    model downloads. What was set is removed on exit.
    """
    limits = {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, math.ceil(timeout_seconds))),
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # a bar per retried download
    }
    applied = {k: v for k, v in limits.items() if k not in os.environ}
    os.environ.update(applied)
    try:
        yield
    finally:
        for key, value in applied.items():
            if os.environ.get(key) == value:
                del os.environ[key]


def _client(tracking_uri: str) -> MlflowClient:
    """A client bound to ``tracking_uri``; refuses a SQLite store that is not there.

    MLflow keeps its SQLite connections open, so a store moved or deleted while the server
    runs still answers from the moved file: without this check the outage would be invisible.
    And a new connection to a missing path would create an empty store there.
    """
    if tracking_uri.startswith("sqlite:///"):
        db_path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
        if db_path and db_path != ":memory:":
            _check_sqlite_store(Path(db_path), tracking_uri)
            with _store_settled(Path(db_path), tracking_uri):
                client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
                # MLflow opens the registry store lazily: open it here, inside the lock.
                _registry_call(tracking_uri, lambda: client.search_registered_models(max_results=1))
            return client
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _store_settled(db: Path, tracking_uri: str) -> contextlib.AbstractContextManager[object]:
    """Share the lock a pipeline process holds while it creates or migrates the SQLite store.

    MLflow migrates a store that lacks tables whenever it opens one, so opening a store the
    pipeline is still creating would race it ("table ... already exists").
    """
    lock = db.with_name(db.name + STORE_LOCK_SUFFIX)
    try:
        handle = lock.open("rb")
    except OSError:
        # No lock file: no pipeline process ever created or migrated this store.
        return contextlib.nullcontext()
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise RegistryUnavailableError(
            f"The MLflow registry at {tracking_uri} is unreachable: a pipeline process is "
            f"creating the store {db} (it holds {lock}); the server retries at the next poll."
        ) from None
    return handle  # closing it releases the lock


def _check_sqlite_store(db: Path, tracking_uri: str) -> None:
    unreachable = f"The MLflow registry at {tracking_uri} is unreachable"
    if not db.is_file():
        raise RegistryUnavailableError(
            f"{unreachable}: no MLflow store at {db} (moved or deleted?). Put the store back, "
            "run `make pipeline` to create it, or point SERVING_TRACKING_URI at the store."
        )
    if not os.access(db, os.R_OK):
        raise RegistryUnavailableError(
            f"{unreachable}: the store {db} is not readable by this process (permissions)."
        )
    if db.stat().st_size == 0:
        raise RegistryUnavailableError(
            f"{unreachable}: {db} is an empty file, not an MLflow store. Put the store back, "
            "or point SERVING_TRACKING_URI at the store."
        )


def _registry_call(tracking_uri: str, call: Callable[[], _T]) -> _T:
    """Run a registry request; a failure says whether the registry could not be reached or
    refused, with the reason in one stable line (the same fault reads the same every poll)."""
    try:
        return call()
    except ServingError:
        raise
    except MlflowException as exc:
        if _transport_failure(exc):
            raise RegistryUnavailableError(
                f"The MLflow registry at {tracking_uri} is unreachable: {_reason(exc)}. "
                "Check that the tracking server is up and SERVING_TRACKING_URI."
            ) from exc
        raise ModelLoadError(
            f"The MLflow registry at {tracking_uri} refused the request: {_reason(exc)}. "
            "Check SERVING_TRACKING_URI (or MLFLOW_TRACKING_URI)."
        ) from exc
    except Exception as exc:
        raise RegistryUnavailableError(
            f"The MLflow registry at {tracking_uri} could not be read: {_reason(exc)}. "
            "Check SERVING_TRACKING_URI (or MLFLOW_TRACKING_URI) and that the store is up."
        ) from exc


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes; MLflow's REST client raises from inside ``except`` without
    ``from``, so the transport error is its context."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _transport_failure(exc: BaseException) -> bool:
    """Whether the request never got an answer (refused, reset, timed out): requests' and
    urllib3's errors are OSErrors too."""
    return any(isinstance(e, OSError) for e in _chain(exc))


def _reason(exc: BaseException) -> str:
    """Why a call failed, short and stable: no object addresses, first line only."""
    for error in _chain(exc):
        if isinstance(error, ConnectionRefusedError) or "Connection refused" in str(error):
            return "connection refused"
        if isinstance(error, TimeoutError) or "timed out" in str(error).lower():
            return "no answer before the timeout"
    message = exc.message if isinstance(exc, MlflowException) else str(exc)
    first = (message.strip().splitlines() or [type(exc).__name__])[0]
    return _ADDRESS.sub("", first)[:_REASON_CHARS]


def _local_path(uri: str) -> Path | None:
    """The local directory an artifact URI names, or None when it is remote."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        return Path(url2pathname(parsed.path))
    return Path(uri) if parsed.scheme == "" else None


def _download(source: str, dst: str, tracking_uri: str, label: str) -> Path:
    """Download the version's artifacts into ``dst``; a failure names where they should be."""
    try:
        return Path(
            download_artifacts(artifact_uri=source, dst_path=dst, tracking_uri=tracking_uri)
        )
    except Exception as exc:
        local = _local_path(source)
        if local is not None and not local.is_dir():
            raise ModelArtifactError(
                f"The artifacts of {label} are missing at {local}: the directory was moved or "
                "deleted. Restore it, or promote another version."
            ) from exc
        raise ModelArtifactError(
            f"Could not download the artifacts of {label} from {source}: {_reason(exc)}. "
            "Check that the artifact store is up and readable."
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


def _read_mlmodel(local_dir: Path, label: str, source: str) -> Model:
    path = local_dir / "MLmodel"
    if not path.is_file():
        raise ModelArtifactError(
            f"The MLmodel file of {label} is missing at {source}/MLmodel: re-log the model, "
            "or promote another version."
        )
    try:
        return Model.load(str(path))
    except Exception as exc:
        raise ModelArtifactError(
            f"The MLmodel file of {label} at {source}/MLmodel is not valid ({_reason(exc)}): "
            "re-log the model, or promote another version."
        ) from exc


def _load_estimator(local_dir: Path, mlmodel: Model, label: str, source: str) -> Any:
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
    relative = str(flavor.get("pickled_model", "model.skops"))
    data_path = (local_dir / relative).resolve()
    where = f"{source.rstrip('/')}/{relative}"
    if local_dir.resolve() not in data_path.parents:
        raise UnsafeModelError(f"The skops file of {label} ({relative}) is outside its artifacts.")
    if not data_path.is_file():
        raise ModelArtifactError(
            f"The skops file of {label} is missing at {where}: re-log the model, or promote "
            "another version."
        )
    try:
        untrusted = skops.io.get_untrusted_types(file=data_path)
    except Exception as exc:  # zipfile.BadZipFile, a truncated or foreign file
        raise ModelArtifactError(
            f"The skops file of {label} at {where} is not a valid skops archive "
            f"({_reason(exc)}): re-log the model, or promote another version."
        ) from exc
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
        raise ModelArtifactError(
            f"The skops file of {label} at {where} could not be loaded ({_reason(exc)}): "
            "re-log the model, or promote another version."
        ) from exc
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
