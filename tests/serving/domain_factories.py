"""A model version that carries its training domain (``INPUT_DOMAIN_ARTIFACT``), logged the
way training logs it: ``mlflow.log_dict(domain.to_json(), INPUT_DOMAIN_ARTIFACT)`` in the
version's run."""

from __future__ import annotations

from pipeline.contracts import INPUT_DOMAIN_ARTIFACT, ColumnDomain, InputDomain
from tests.serving.factories import TinyModel, TinyStore
from tests.serving.faults import relog

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
    return relog(store, model, {INPUT_DOMAIN_ARTIFACT: domain.to_json()})
