"""The Makefile as people and CI use it: what its targets run and say, without installing.

`-o .venv/.installed` keeps make from re-installing the environment; `-n` prints recipes
without running them; `-W FILE` pretends FILE changed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
KEEP_VENV = ("-o", ".venv/.installed")


def _make(*args: str, keep_venv: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", *(KEEP_VENV if keep_venv else ()), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _fake_bin(tmp_path: Path, status: int) -> Path:
    """A `python` that exits with `status`, standing in for `python -m pipeline ...`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.write_text(f'#!/bin/sh\necho "$@"\nexit {status}\n')
    python.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("monitor", "exit status 10: drift or degraded performance found: act (make retrain)"),
        ("retrain", "exit status 10: drift found but no labels to retrain on"),
    ],
)
def test_an_exit_10_of_monitor_or_retrain_is_said_in_words_as_make_can_only_exit_2(
    tmp_path: Path, target: str, says: str
) -> None:
    result = _make(target, f"BIN={_fake_bin(tmp_path, 10)}")
    assert result.returncode == 2
    assert says in result.stderr
    assert "Error 10" in result.stderr
    assert f"-m pipeline {target} --config configs/iris.yaml" in result.stdout


def test_another_failure_of_monitor_is_passed_on_without_the_drift_words(tmp_path: Path) -> None:
    result = _make("monitor", f"BIN={_fake_bin(tmp_path, 3)}")
    assert result.returncode == 2
    assert "Error 3" in result.stderr
    assert "exit status 10" not in result.stderr


def test_make_help_says_what_an_exit_10_of_monitor_does_to_make() -> None:
    result = _make("help")
    assert "drift: exit 10, so make exits 2" in result.stdout


@pytest.mark.parametrize(
    ("target", "module"),
    [
        ("bench-pipeline", "bench.pipeline_scale"),
        ("bench-hostile", "bench.hostile"),
        ("bench-drift", "bench.drift_quality"),
    ],
)
def test_each_bench_target_runs_its_module_and_is_listed_in_help(target: str, module: str) -> None:
    dry = _make("-n", target)
    assert dry.returncode == 0, dry.stderr
    assert f".venv/bin/python -m {module}" in dry.stdout
    assert f"make {target}" in _make("help").stdout
    phony = (REPO_ROOT / "Makefile").read_text().split(".PHONY:", 1)[1].split("\n\n", 1)[0]
    assert target in phony.split()


def test_make_test_installs_chromium_first_when_it_is_missing(tmp_path: Path) -> None:
    missing = tmp_path / "chromium"
    dry = _make("-n", "test", f"CHROMIUM={missing}")
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.splitlines()
    install = next(i for i, line in enumerate(lines) if "apt-get install -y -qq chromium" in line)
    tests = next(i for i, line in enumerate(lines) if line.startswith(".venv/bin/pytest"))
    assert install < tests
    assert f"{missing} is missing: installing Debian's chromium" in dry.stdout


def test_make_test_installs_nothing_when_chromium_is_there(tmp_path: Path) -> None:
    present = tmp_path / "chromium"
    present.write_text("")
    assert "apt-get" not in _make("-n", "test", f"CHROMIUM={present}").stdout


def test_an_install_says_what_each_quiet_step_is_doing() -> None:
    # A dry run (-n) only prints what an install after a changed uv.lock would do.
    dry = _make("-n", "-W", "uv.lock", "venv", keep_venv=False)
    assert dry.returncode == 0, dry.stderr
    assert "installing the locked dependencies into .venv (about 100 s the first time)" in (
        dry.stdout
    )
    assert "source .venv/bin/activate" in dry.stdout
