"""Named fail points: places where a test can kill the process for real.

Each write of a registry transaction is followed by one line, `failpoint("registry.after_stage")`.
It does nothing unless the environment variable `PIPELINE_FAILPOINTS` names that point
(comma-separated names); then the process sends itself SIGKILL right there, so a test sees
exactly what a crash at that moment leaves behind (etcd's gofail and TiKV's fail-rs work so).
No handler, `finally` or `atexit` runs: that is the point.
"""

from __future__ import annotations

import os
import signal

ENVIRONMENT_VARIABLE = "PIPELINE_FAILPOINTS"

# Every point the code defines, so tests (and a typo in the variable) can be checked against it.
REGISTRY_POINTS = (
    "registry.after_intent",
    "registry.after_stage",
    "registry.after_alias",
    "registry.after_history",
    "registry.after_outcome",
    "registry.before_unlock",
)
GATE_POINTS = ("gate.after_evidence_tags",)
ALL_POINTS = REGISTRY_POINTS + GATE_POINTS


def enabled() -> frozenset[str]:
    """The fail points the environment enables (read on every call: tests set it per process)."""
    value = os.environ.get(ENVIRONMENT_VARIABLE, "")
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def failpoint(name: str) -> None:
    """Kill this process with SIGKILL when `name` is enabled; otherwise do nothing."""
    if name in enabled():
        os.kill(os.getpid(), signal.SIGKILL)
