"""A model version that carries its training domain (``INPUT_DOMAIN_ARTIFACT``), logged the
way training logs it: ``mlflow.log_dict(domain.to_json(), INPUT_DOMAIN_ARTIFACT)`` in the
version's run."""

from __future__ import annotations

import warnings

import mlflow
import skops.io
from mlflow.models import infer_signature
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from pipeline.contracts import INPUT_DOMAIN_ARTIFACT, ColumnDomain, InputDomain
from tests.serving.factories import TinyModel, TinyStore

MIXED_DOMAIN = InputDomain(
    {
        "age": ColumnDomain("age", low=20.0, high=60.0),
        "rooms": ColumnDomain("rooms", low=1.0, high=5.0),
        "city": ColumnDomain("city", categories=frozenset({"paris", "lyon", "nice"})),
        "owner": ColumnDomain("owner", categories=frozenset({"yes", "no"})),
    }
)
"""The domain of the session store's 'mixed' model (age, rooms, city, owner)."""


def log_with_domain(store: TinyStore, model: TinyModel, domain: InputDomain) -> TinyModel:
    """Log ``model``'s fitted pipeline again in a new run, with ``domain`` as its artifact."""
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
        mlflow.log_dict(domain.to_json(), INPUT_DOMAIN_ARTIFACT)
    return TinyModel(fitted, model.features, info.model_uri, run.info.run_id, {})
