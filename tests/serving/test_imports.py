"""Importing serving has no side effects and never pulls in the training code: of
``pipeline`` it loads the shared contracts only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.process

MODULES = [
    "serving",
    "serving.settings",
    "serving.errors",
    "serving.model.ref",
    "serving.model.store",
    "serving.model.inference",
    "serving.model.state",
    "serving.model.batcher",
    "serving.middleware.metrics",
    "serving.schemas",
    "serving.middleware.request_id",
    "serving.prediction_log",
    "serving.feedback",
    "serving.deps",
    "serving.routes",
    "serving.app",
    "serving.__main__",
]

PROBE = f"""
import logging, os, sys
before = set(os.listdir("."))
for name in {MODULES!r}:
    __import__(name)
import mlflow.tracking._tracking_service.utils as tracking
import mlflow.tracking._model_registry.utils as registry
assert tracking._tracking_uri is None, tracking._tracking_uri
assert registry._registry_uri is None, registry._registry_uri
assert not logging.getLogger().handlers, logging.getLogger().handlers
training = [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]
assert set(training) <= set(("pipeline", "pipeline.contracts")), training
assert set(os.listdir(".")) == before, set(os.listdir(".")) ^ before
print("clean")
"""


def test_importing_serving_sets_no_uri_configures_no_logging_and_creates_no_files(
    tmp_path: Path,
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean"
    assert list(tmp_path.iterdir()) == []
