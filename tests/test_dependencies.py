"""pyproject.toml, uv.lock and conda.yaml say the same thing, and the check notices when they don't.

The check itself lives in tools/lockfile.py (what `make lock` uses to write conda.yaml); these tests
run it on this repository and on copies in which one of the three files was edited alone. Every
uv call is offline and uncached: the tests read nothing but the files.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import shutil
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[1]
FILES = ("pyproject.toml", "uv.lock", "conda.yaml")
PERSISTED_FORMATS = ("mlflow", "scikit-learn", "skops")
"""Libraries whose files we keep (models in skops format, logged by MLflow)."""


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("lockfile", REPO_ROOT / "tools" / "lockfile.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lockfile = _load_tool()


def _project() -> dict[str, Any]:
    return dict(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"])


@functools.cache
def _locked() -> dict[str, str]:
    """Package -> locked release (parsing the 1 MB lock takes a while: once per session)."""
    lock = tomllib.loads((REPO_ROOT / "uv.lock").read_text())
    return {entry["name"]: entry["version"] for entry in lock["package"]}


def _runtime_requirements() -> dict[str, Requirement]:
    requirements = [Requirement(line) for line in _project()["dependencies"]]
    return {r.name: r for r in requirements}


def _copy(tmp_path: Path) -> Path:
    for name in FILES:
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    return tmp_path


def _replace_once(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} is not in {path.name} exactly once"
    path.write_text(text.replace(old, new))


def test_pyproject_the_lock_and_conda_yaml_agree() -> None:
    assert lockfile.problems(REPO_ROOT) == []


def test_an_unchanged_copy_passes_the_check(tmp_path: Path) -> None:
    assert lockfile.problems(_copy(tmp_path)) == []


def test_a_dependency_edited_in_pyproject_alone_is_caught(tmp_path: Path) -> None:
    project = _copy(tmp_path)
    _replace_once(project / "pyproject.toml", '"orjson>=3.10"', '"orjson>=3.11"')
    (problem,) = lockfile.problems(project)
    assert problem.startswith("uv.lock does not match pyproject.toml: run `make lock`")


def test_a_dependency_added_to_pyproject_alone_is_caught(tmp_path: Path) -> None:
    project = _copy(tmp_path)
    _replace_once(project / "pyproject.toml", '"tqdm>=4.66",', '"tqdm>=4.66",\n    "rich>=13",')
    (problem,) = lockfile.problems(project)
    assert problem.startswith("uv.lock does not match pyproject.toml")


def test_a_release_edited_in_the_lock_alone_is_caught(tmp_path: Path) -> None:
    project = _copy(tmp_path)
    locked = lockfile.locked_version("mlflow", project)
    _replace_once(
        project / "uv.lock",
        f'name = "mlflow"\nversion = "{locked}"',
        f'name = "mlflow"\nversion = "{locked}.post1"',
    )
    found = lockfile.problems(project)
    assert found
    assert all("uv.lock" in problem and "run `make lock`" in problem for problem in found)


def test_a_pin_edited_in_conda_yaml_alone_is_caught(tmp_path: Path) -> None:
    project = _copy(tmp_path)
    locked = lockfile.locked_version("scikit-learn", project)
    _replace_once(project / "conda.yaml", f'"scikit-learn=={locked}"', '"scikit-learn>=1.6"')
    assert lockfile.problems(project) == ["conda.yaml does not match uv.lock: run `make lock`"]


def test_conda_yaml_pins_every_runtime_dependency_at_its_locked_release() -> None:
    environment = yaml.safe_load((REPO_ROOT / "conda.yaml").read_text())
    (pip_section,) = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict)]
    assert pip_section[-1] == "-e ."
    pins = {r.name: r for r in map(Requirement, pip_section[:-1])}
    for name in _runtime_requirements():
        assert str(pins[name].specifier) == f"=={_locked()[name]}", name
    python = _project()["requires-python"].removeprefix(">=")
    assert f"python={python}" in environment["dependencies"]


@pytest.mark.parametrize("name", PERSISTED_FORMATS)
def test_the_libraries_whose_files_we_persist_stay_on_the_tested_minor(name: str) -> None:
    specifier = _runtime_requirements()[name].specifier
    tested = Version(_locked()[name])
    assert tested in specifier
    next_minor = Version(f"{tested.major}.{tested.minor + 1}")
    assert next_minor not in specifier, f"{name}{specifier} admits {next_minor}, never tested"


def test_uvicorn_comes_with_its_standard_extra_so_uvloop_and_httptools_are_locked() -> None:
    assert _runtime_requirements()["uvicorn"].extras == {"standard"}
    conda = (REPO_ROOT / "conda.yaml").read_text()
    for name in ("uvloop", "httptools"):
        assert re.search(rf'"{name}=={re.escape(_locked()[name])}\b', conda)


def test_the_uv_that_make_bootstraps_is_the_one_the_lock_keeps_installed() -> None:
    dev = [Requirement(r) for r in _project()["optional-dependencies"]["dev"]]
    (uv,) = [r for r in dev if r.name == "uv"]
    assert str(uv.specifier) == f"=={_locked()['uv']}"
