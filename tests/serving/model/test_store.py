"""model_store: resolve a reference in the registry, download and load it safely."""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import warnings
from pathlib import Path

import numpy as np
import pytest
import skops.io
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.neural_network import MLPRegressor
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from pipeline.contracts import TRUSTED_MODULE_PREFIXES
from serving.errors import (
    ModelArtifactError,
    ModelNotFoundError,
    NoVersionInStageError,
    RegistryUnavailableError,
    UnsafeModelError,
)
from serving.model.ref import ModelRef
from serving.model.store import InputColumn, bounded_mlflow_calls, load_model, resolve_version
from tests.serving.factories import TinyModel, TinyStore
from tests.serving.faults import corrupt_skops, delete_artifacts, log_iris_copy, private_store


def test_loads_the_production_version_with_its_metadata(store: TinyStore) -> None:
    loaded = load_model(ModelRef.from_uri("models:/iris/Production"), store.tracking_uri)
    tiny = store.models["iris"]
    assert (loaded.name, loaded.version, loaded.stage) == ("iris", "1", "Production")
    assert "champion" in loaded.aliases
    assert loaded.run_id == tiny.run_id
    assert loaded.task == "classification"
    assert loaded.classes == ("setosa", "versicolor", "virginica")
    assert loaded.classes == tuple(tiny.estimator.classes_)
    assert all(type(label) is str for label in loaded.classes)
    assert loaded.metrics == {"test_accuracy": tiny.metrics["test_accuracy"]}
    assert loaded.has_proba
    assert [c.name for c in loaded.columns] == list(tiny.features.columns)
    assert all(c.type == "double" and c.required for c in loaded.columns)


def test_loads_by_alias_and_by_explicit_version(store: TinyStore) -> None:
    by_alias = load_model(ModelRef.from_uri("models:/iris@challenger"), store.tracking_uri)
    by_version = load_model(ModelRef.from_uri("models:/iris/2"), store.tracking_uri)
    assert by_alias.version == by_version.version == "2"
    assert by_alias.reference == "models:/iris@challenger"
    assert not by_version.has_proba


def test_columns_with_missing_training_values_are_optional(store: TinyStore) -> None:
    loaded = load_model(ModelRef.from_uri("models:/mixed/Production"), store.tracking_uri)
    assert loaded.columns == (
        InputColumn("age", "double", required=False),
        InputColumn("rooms", "long", required=True),
        InputColumn("city", "string", required=False),
        InputColumn("owner", "string", required=True),
    )
    assert loaded.classes == (0, 1)
    assert all(type(label) is int for label in loaded.classes)


def test_regressor_has_regression_task_and_no_classes(store: TinyStore) -> None:
    loaded = load_model(ModelRef.from_uri("models:/diabetes/Production"), store.tracking_uri)
    assert loaded.task == "regression"
    assert loaded.classes is None
    assert not loaded.has_proba
    assert set(loaded.metrics) == {"test_rmse"}


def test_no_production_version_is_a_distinct_error_saying_how_to_promote(
    store: TinyStore, unique_name: str
) -> None:
    store.register(unique_name, store.models["iris"])
    with pytest.raises(NoVersionInStageError) as info:
        load_model(ModelRef.from_uri(f"models:/{unique_name}/Production"), store.tracking_uri)
    message = info.value.message
    assert "no version in stage 'Production'" in message
    assert f"python -m pipeline promote --name {unique_name} --version <v>" in message
    assert "make pipeline" in message
    assert info.value.status_code == 503


@pytest.mark.parametrize(
    ("uri", "fragment"),
    [
        ("models:/nosuchmodel/Production", "No registered model named 'nosuchmodel'"),
        ("models:/iris@nosuchalias", "has no alias 'nosuchalias'"),
        ("models:/iris/99", "has no version 99"),
    ],
)
def test_missing_model_alias_or_version_is_model_not_found(
    store: TinyStore, uri: str, fragment: str
) -> None:
    with pytest.raises(ModelNotFoundError, match=fragment):
        load_model(ModelRef.from_uri(uri), store.tracking_uri)


def test_missing_sqlite_store_is_reported_and_not_created(tmp_path: Path) -> None:
    db = tmp_path / "absent" / "mlflow.db"
    with pytest.raises(RegistryUnavailableError, match="no MLflow store at") as info:
        load_model(ModelRef.from_uri("models:/iris/1"), f"sqlite:///{db}")
    assert "SERVING_TRACKING_URI" in info.value.message
    assert not db.exists()


def test_a_sqlite_store_moved_away_is_unreachable_though_mlflow_would_still_answer(
    store: TinyStore, tmp_path: Path
) -> None:
    private = private_store(store, tmp_path / "store")
    ref = ModelRef.from_uri("models:/iris/Production")
    assert resolve_version(ref, private.tracking_uri).version == "1"
    db = tmp_path / "store" / "mlflow.db"
    db.rename(tmp_path / "moved.db")
    # MLflow's pooled connection still reads the moved file: the outage would be invisible.
    assert str(private.client.get_model_version("iris", "1").version) == "1"
    with pytest.raises(RegistryUnavailableError) as info:
        resolve_version(ref, private.tracking_uri)
    assert f"The MLflow registry at {private.tracking_uri} is unreachable" in info.value.message
    assert f"no MLflow store at {db} (moved or deleted?)" in info.value.message
    assert not db.exists()  # and nothing created an empty store in its place

    db.touch()  # what a fresh SQLite connection to the missing path would have left
    with pytest.raises(RegistryUnavailableError, match="is an empty file, not an MLflow store"):
        resolve_version(ref, private.tracking_uri)


@pytest.mark.timeout(60)
def test_a_dead_tracking_server_is_unreachable_at_once_when_mlflow_calls_are_bounded() -> None:
    with socket.socket() as sock:  # a port nobody listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ
    # Unbounded, MLflow would retry for minutes and this test would time out.
    with bounded_mlflow_calls(2), pytest.raises(RegistryUnavailableError) as info:
        resolve_version(ModelRef.from_uri("models:/iris/Production"), uri)
    assert info.value.message.startswith(f"The MLflow registry at {uri} is unreachable: ")
    assert "connection refused" in info.value.message
    assert " at 0x" not in info.value.message  # stable from one poll to the next
    assert "MLFLOW_HTTP_REQUEST_MAX_RETRIES" not in os.environ


def test_a_corrupt_skops_file_is_named_with_its_version_and_place(
    store: TinyStore, unique_name: str
) -> None:
    model = log_iris_copy(store)
    corrupt_skops(store, model)
    version = store.register(unique_name, model)
    with pytest.raises(ModelArtifactError) as info:
        load_model(ModelRef.from_uri(f"models:/{unique_name}/{version}"), store.tracking_uri)
    message = info.value.message
    assert f"The skops file of model '{unique_name}' version {version} at file://" in message
    assert "/model.skops is not a valid skops archive (File is not a zip file)" in message
    assert info.value.error_type == "model_artifact_error"


def test_a_deleted_artifact_directory_is_named_and_not_blamed_on_the_registry(
    store: TinyStore, unique_name: str
) -> None:
    model = log_iris_copy(store)
    path = delete_artifacts(store, model)
    version = store.register(unique_name, model)
    with pytest.raises(ModelArtifactError) as info:
        load_model(ModelRef.from_uri(f"models:/{unique_name}/{version}"), store.tracking_uri)
    message = info.value.message
    assert f"The artifacts of model '{unique_name}' version {version} are missing at {path}" in (
        message
    )
    assert "registry" not in message and "TRACKING_URI" not in message
    shutil.rmtree(path.parent, ignore_errors=True)


def test_refuses_a_skops_file_with_a_type_outside_the_allowed_modules_naming_it(
    store: TinyStore, shady_model: TinyModel, unique_name: str
) -> None:
    version = store.register(unique_name, shady_model)
    with pytest.raises(UnsafeModelError) as info:
        load_model(ModelRef.from_uri(f"models:/{unique_name}/{version}"), store.tracking_uri)
    assert "conftest.ShadyTransformer" in info.value.message
    assert "Refusing to load" in info.value.message


def test_refuses_a_pickled_model(
    store: TinyStore, pickled_model: TinyModel, unique_name: str
) -> None:
    version = store.register(unique_name, pickled_model)
    with pytest.raises(UnsafeModelError, match="only skops is loaded"):
        load_model(ModelRef.from_uri(f"models:/{unique_name}/{version}"), store.tracking_uri)


def test_resolve_version_follows_the_stage_without_downloading(
    store: TinyStore, unique_name: str
) -> None:
    store.register(unique_name, store.models["iris"], production=True)
    ref = ModelRef.from_uri(f"models:/{unique_name}/Production")
    assert resolve_version(ref, store.tracking_uri).version == "1"
    store.register(unique_name, store.models["diabetes"], production=True)
    resolved = resolve_version(ref, store.tracking_uri)
    assert (resolved.version, resolved.stage) == ("2", "Production")


@pytest.mark.parametrize(
    "estimator",
    [
        RandomForestRegressor(n_estimators=2),
        HistGradientBoostingClassifier(max_iter=2),
        KNeighborsClassifier(n_neighbors=2),
        MLPRegressor(hidden_layer_sizes=(2,), max_iter=5),
    ],
    ids=lambda e: type(e).__name__,
)
def test_plain_sklearn_pipelines_only_need_allowed_types(estimator: object) -> None:
    rng = np.random.default_rng(0)
    features = rng.choice(["a", "b"], size=(20, 1)).astype(object)
    target = np.arange(20) % 2
    pipeline = Pipeline([("onehot", OneHotEncoder(sparse_output=False)), ("m", estimator)])
    with warnings.catch_warnings():
        # A 5-iteration MLP does not converge; its types are what matters here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        pipeline.fit(features, target)
    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(pipeline))
    assert untrusted
    assert all(t.startswith(TRUSTED_MODULE_PREFIXES) for t in untrusted), untrusted


def test_allowed_prefixes_are_whole_module_names() -> None:
    assert all(prefix.endswith(".") for prefix in TRUSTED_MODULE_PREFIXES)
    assert not "sklearnx.evil".startswith(TRUSTED_MODULE_PREFIXES)
    assert LogisticRegression.__module__.startswith(TRUSTED_MODULE_PREFIXES)


def test_a_sqlite_store_a_pipeline_is_still_creating_is_unreachable_until_it_is_done(
    store: TinyStore,
) -> None:
    db = Path(store.tracking_uri.removeprefix("sqlite:///"))
    lock = db.with_name(db.name + ".lock")
    ref = ModelRef.from_uri("models:/iris/Production")
    with lock.open("wb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RegistryUnavailableError) as raised:
            resolve_version(ref, store.tracking_uri)
    assert f"a pipeline process is creating the store {db} (it holds {lock})" in str(raised.value)
    assert resolve_version(ref, store.tracking_uri).version == "1"


def test_a_forest_loads_with_its_trees_flattened_for_small_batches_and_says_so(
    store: TinyStore, forest_model: TinyModel, unique_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    store.register(unique_name, forest_model, production=True)
    with caplog.at_level("INFO", logger="serving.model.store"):
        loaded = load_model(
            ModelRef.from_uri(f"models:/{unique_name}/Production"), store.tracking_uri
        )
    assert loaded.walk is not None and loaded.walk.forest is loaded.estimator[-1]
    assert "small batches' trees walked in NumPy" in caplog.text
    logistic = load_model(ModelRef.from_uri("models:/iris/Production"), store.tracking_uri)
    assert logistic.walk is None
