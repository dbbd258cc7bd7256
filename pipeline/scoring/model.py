"""Which model scores: a name, alias or URI resolved to one version, downloaded and checked once.

Both engines use the one verified local copy that `load` returns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline

from pipeline import model_io
from pipeline.errors import ConfigError, RegistryError
from pipeline.registry import production

FeatureKind = Literal["double", "long", "string"]
# The signature column types batch scoring converts to; any other type is refused.
_KINDS: dict[str, FeatureKind] = {"double": "double", "long": "long", "string": "string"}


@dataclass(frozen=True)
class Feature:
    name: str
    kind: FeatureKind
    required: bool


@dataclass(frozen=True)
class LoadedModel:
    uri: str
    version: str | None
    local_dir: Path
    pipeline: Pipeline
    features: tuple[Feature, ...]
    classes: tuple[str, ...] | None
    """str() of each class label for a classifier, else None (regressor)."""
    has_proba: bool


def resolve_model_uri(model_uri: str | None, name: str | None) -> tuple[str, str | None]:
    """(URI, registry version or None): `name` -> its Production version, `name@alias` -> alias."""
    if (model_uri is None) == (name is None):
        raise ConfigError(
            "give exactly one of a model URI (--model-uri models:/iris/3, runs:/<id>/model) "
            "or a registered model name (--name iris, --name iris@champion)"
        )
    if model_uri is not None:
        if not model_uri.strip():
            raise ConfigError("the model URI is empty; pass e.g. models:/iris/Production")
        return model_uri, None
    assert name is not None
    return _resolve_name(name)


def _resolve_name(name: str) -> tuple[str, str]:
    model_name, _, alias = name.partition("@")
    if not model_name.strip():
        raise ConfigError(f"'{name}' names no model; pass e.g. --name iris or --name iris@champion")
    client = MlflowClient()
    _require_registered(client, model_name)
    if alias:
        try:
            found = client.get_model_version_by_alias(model_name, alias)
        except MlflowException as exc:
            raise RegistryError(
                f"registered model '{model_name}' has no alias '{alias}'; "
                f"use --name {model_name} for its Production version or pass --model-uri"
            ) from exc
        return f"models:/{model_name}@{alias}", str(found.version)
    current = production.production_version(client, model_name)
    if current is None:
        raise RegistryError(
            f"registered model '{model_name}' has no Production version; promote one "
            f"(python -m pipeline promote --name {model_name} --version N) or pass "
            f"--model-uri models:/{model_name}/<version>"
        )
    return f"models:/{model_name}/{production.PRODUCTION}", str(current.version)


def _require_registered(client: MlflowClient, model_name: str) -> None:
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RegistryError(
            f"registered model '{model_name}' does not exist in {mlflow.get_tracking_uri()}; "
            "train and register it first (python -m pipeline main --config ...), or pass "
            "--model-uri"
        ) from exc


def load(uri: str, version: str | None, tmp: Path) -> LoadedModel:
    """Download once into `tmp`, check, load: both engines use this one verified copy."""
    # The version resolved a moment ago, not whatever holds the stage or alias by now: a
    # promotion in between must not make the run report one version and score another.
    pinned = f"models:/{_registered_name(uri)}/{version}" if version is not None else uri
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(tmp)))
    except Exception as exc:
        raise RegistryError(f"cannot download model '{uri}': {exc}") from exc
    if not (local / "MLmodel").is_file():
        raise RegistryError(f"'{uri}' is not an MLflow model (no MLmodel file in it)")
    pipeline = model_io.load_model(str(local))
    meta = Model.load(str(local / "MLmodel"))
    classes = None
    if is_classifier(pipeline):
        classes = tuple(str(c) for c in pipeline.classes_)
    return LoadedModel(
        uri=uri,
        version=version,
        local_dir=local,
        pipeline=pipeline,
        features=_features(meta, uri),
        classes=classes,
        has_proba=classes is not None and hasattr(pipeline, "predict_proba"),
    )


def _registered_name(uri: str) -> str:
    """'iris' from models:/iris/Production or models:/iris@champion."""
    reference = uri.removeprefix("models:/")
    return reference.partition("@")[0] if "@" in reference else reference.rsplit("/", 1)[0]


def _features(meta: Model, uri: str) -> tuple[Feature, ...]:
    schema = meta.get_input_schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        raise RegistryError(
            f"model '{uri}' has no column signature; batch scoring needs one "
            "(models trained by this pipeline have it)"
        )
    features = []
    for spec in schema.inputs:
        kind = getattr(spec.type, "name", str(spec.type))
        if kind not in _KINDS:
            raise RegistryError(
                f"model '{uri}' input '{spec.name}' has type {kind}; batch scoring supports "
                f"the column types {', '.join(_KINDS)}"
            )
        features.append(Feature(name=spec.name, kind=_KINDS[kind], required=spec.required))
    return tuple(features)
