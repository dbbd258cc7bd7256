"""Named fail points: a no-op unless enabled, and then a real SIGKILL at that line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from pipeline import failpoints
from tests.pipeline.factories import REPO_ROOT

SCRIPT = (
    "from pipeline.failpoints import failpoint\n"
    "failpoint('registry.after_stage')\n"
    "print('survived', flush=True)\n"
)


def _run(enabled: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != failpoints.ENVIRONMENT_VARIABLE}
    if enabled is not None:
        env[failpoints.ENVIRONMENT_VARIABLE] = enabled
    return subprocess.run(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_fail_point_does_nothing_when_the_environment_does_not_name_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(failpoints.ENVIRONMENT_VARIABLE, "registry.after_alias")
    failpoints.failpoint("registry.after_stage")  # this process survives it
    assert failpoints.enabled() == {"registry.after_alias"}


@pytest.mark.process
def test_an_enabled_fail_point_kills_the_process_with_sigkill_right_there() -> None:
    killed = _run("registry.after_alias, registry.after_stage")
    assert killed.returncode == -signal.SIGKILL
    assert "survived" not in killed.stdout
    spared = _run("registry.after_alias")
    assert (spared.returncode, spared.stdout.strip()) == (0, "survived")


def test_every_fail_point_the_code_names_is_listed() -> None:
    names = set()
    for path in (REPO_ROOT / "pipeline").rglob("*.py"):
        text = path.read_text()
        names |= {
            part.split('"')[1] for part in text.split("failpoint(")[1:] if part.startswith('"')
        }
    assert names == set(failpoints.ALL_POINTS)
