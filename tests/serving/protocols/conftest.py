"""The protocol tests use the serving store (``tests/serving/conftest.py``) and serve
``models:/<name>/1`` by name. Nothing touches ./mlruns, ./mlflow.db or the network."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from serving.settings import Settings
from tests.serving.factories import TinyStore


@pytest.fixture
def make_client(
    make_client: Callable[..., TestClient], store: TinyStore
) -> Callable[..., TestClient]:
    """The serving ``make_client`` (lifespan, stack-trace check), addressed by model name."""

    def _make(name: str = "iris", settings: Settings | None = None) -> TestClient:
        return make_client(settings or store.settings(model_uri=f"models:/{name}/1"))

    return _make
