"""The architecture as tests: serving and training stay apart, and imports do nothing."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def _imported_packages(package: str) -> set[str]:
    found: set[str] = set()
    for path in (REPO_ROOT / package).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module.split(".")[0])
    return found


@pytest.mark.parametrize(
    ("package", "forbidden"), [("serving", "pipeline"), ("pipeline", "serving")]
)
def test_a_package_does_not_import_the_other(package: str, forbidden: str) -> None:
    assert forbidden not in _imported_packages(package)


def test_importing_every_module_sets_no_tracking_uri_and_creates_nothing(tmp_path: Path) -> None:
    modules = [
        ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
        for package in ("pipeline", "serving")
        for path in (REPO_ROOT / package).rglob("*.py")
        if path.name != "__main__.py"
    ]
    script = (
        "import importlib, logging, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "from mlflow.tracking._tracking_service import utils\n"
        "assert utils._tracking_uri is None, utils._tracking_uri\n"
        "assert not logging.getLogger().handlers, logging.getLogger().handlers\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={
            "PYTHONPATH": str(REPO_ROOT),
            "PATH": "/usr/bin:/bin",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        },
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_serving_defaults_to_the_model_of_the_default_config(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pipeline.cli import DEFAULT_CONFIG
    from pipeline.config import load_config
    from serving.settings import Settings

    for name in ("SERVING_MODEL_NAME", "SERVING_MODEL_STAGE", "SERVING_MODEL_URI"):
        monkeypatch.delenv(name, raising=False)
    settings = Settings()
    assert settings.model_name == load_config(REPO_ROOT / DEFAULT_CONFIG).registered_model
    assert settings.model_stage == "Production"
