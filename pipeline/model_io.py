"""Load a logged scikit-learn model back from MLflow without trusting arbitrary code.

MLflow 3 refuses to deserialize sklearn models unless a process-wide flag allows pickle-like
loading, and the skops allow-list it would use is read from the artifact itself. Here the
artifact's skops types are checked against the modules a plain scikit-learn pipeline is made
of, and only then loaded.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
import skops.io
import yaml
from sklearn.pipeline import Pipeline

from pipeline.contracts import refused_types
from pipeline.errors import RegistryError

logger = logging.getLogger(__name__)


def load_model(model_uri: str) -> Pipeline:
    """Download `model_uri` (runs:/, models:/) and load its skops file after a type check."""
    with tempfile.TemporaryDirectory(prefix="model-") as tmp:
        try:
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp))
        except Exception as exc:
            raise RegistryError(f"cannot download model '{model_uri}': {exc}") from exc
        flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"].get("sklearn")
        if flavor is None or flavor.get("serialization_format") != "skops":
            raise RegistryError(
                f"model '{model_uri}' is not a skops-serialized scikit-learn model; "
                "re-train it with this pipeline"
            )
        model_file = local / flavor["pickled_model"]
        untrusted = skops.io.get_untrusted_types(file=model_file)
        foreign = refused_types(untrusted)
        if foreign:
            raise RegistryError(
                f"model '{model_uri}' contains types outside scikit-learn/numpy/scipy "
                f"({', '.join(foreign)}); refusing to load it"
            )
        model = skops.io.load(model_file, trusted=untrusted)
    if not isinstance(model, Pipeline):
        raise RegistryError(f"model '{model_uri}' is a {type(model).__name__}, not a Pipeline")
    return model
