"""The architecture as tests: the import-linter contracts hold (and bite), imports do nothing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.process

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
SERVING_CONTRACT = "serving imports nothing from pipeline but the shared contracts"


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    """Run import-linter on the packages under ``root`` with the contracts of its
    pyproject.toml."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_every_import_linter_contract_is_kept() -> None:
    result = _lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_import_linter_contracts_catch_a_serving_module_importing_training_code(
    tmp_path: Path,
) -> None:
    for package in ("pipeline", "serving"):
        shutil.copytree(
            REPO_ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    with (tmp_path / "serving" / "routes.py").open("a") as module:
        module.write("\nimport pipeline.steps.train  # noqa: E402, F401\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0, result.stdout
    assert f"{SERVING_CONTRACT} BROKEN" in result.stdout, result.stdout
    assert "serving.routes -> pipeline.steps.train" in result.stdout, result.stdout


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
