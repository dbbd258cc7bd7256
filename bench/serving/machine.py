"""What the figures were measured on, and who used the CPU during a window (from /proc)."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import os
import platform
import resource
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
"""The checkout whose `serving` package is measured."""

_PACKAGES = (
    "mlflow",
    "scikit-learn",
    "skops",
    "numpy",
    "pandas",
    "fastapi",
    "starlette",
    "pydantic",
    "uvicorn",
    "uvloop",
    "httptools",
    "httpx",
)
_CLK_TCK = os.sysconf("SC_CLK_TCK")

CpuSnapshot = tuple[float, float | None, float]
"""CPU seconds so far of this process, the server's process group (if any), all cores."""


def machine_facts() -> dict[str, Any]:
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "kernel": platform.release(),
        "loadavg_at_start": _loadavg(),
        "python": platform.python_version(),
        "versions": _versions(),
        "git": _git_facts(),
    }


_SPIN = (
    "import time\n"
    "t = time.perf_counter()\n"
    "x = 0\n"
    "for i in range(15_000_000):\n"
    "    x += i\n"
    "print(time.perf_counter() - t)"
)
"""About a second of pure-Python work in one process (no GIL released, no I/O)."""


def parallel_capacity(rounds: int = 3) -> float:
    """How much work two CPU-bound processes do at once, as a multiple of one alone (median
    of ``rounds``): 2.0 on two free cores. The most two workers can gain on this machine,
    whatever the server does: virtual cores that share a physical one, or a host that
    throttles, give less."""

    def spin(copies: int) -> list[float]:
        procs = [
            subprocess.Popen([sys.executable, "-c", _SPIN], stdout=subprocess.PIPE, text=True)
            for _ in range(copies)
        ]
        return [float(proc.communicate(timeout=120)[0]) for proc in procs]

    gains = []
    for _ in range(rounds):
        alone = spin(1)[0]
        together = spin(2)
        gains.append(2 * alone / statistics.mean(together))
    return statistics.median(gains)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def _memory_gib() -> float | None:
    mem_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    return mem_gib


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in _PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def _loadavg() -> str | None:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return None


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _git_facts() -> dict[str, Any]:
    """Which commit of the server is measured, and whether serving/ has local changes."""
    status = _git("status", "--porcelain", "--", "serving")
    return {
        "commit": _git("rev-parse", "--short", "HEAD"),
        "serving_dirty": None if status is None else bool(status),
        "serving_tree_sha256": _serving_tree_hash(),
    }


def _serving_tree_hash() -> str:
    """A digest of serving/*.py as it is on disk now (it may differ from the commit)."""
    digest = hashlib.sha256()
    for path in sorted((REPO_ROOT / "serving").rglob("*.py")):
        digest.update(str(path.relative_to(REPO_ROOT)).encode() + b"\0")
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def group_processes(pgid: int) -> list[tuple[int, str, float]]:
    """(pid, state, cpu seconds) of every process whose process group is ``pgid``."""
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry.name}/stat").read_bytes()
        except OSError:
            continue
        rest = raw[raw.rindex(b")") + 2 :].split()
        if int(rest[2]) != pgid:
            continue
        cpu = (int(rest[11]) + int(rest[12])) / _CLK_TCK
        found.append((int(entry.name), rest[0].decode(), cpu))
    return found


def group_cpu_seconds(pgid: int) -> float:
    return sum(cpu for _, _, cpu in group_processes(pgid))


def system_busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot (from /proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    guest = sum(fields[8:10]) if len(fields) > 9 else 0  # already counted in user/nice
    return (sum(fields) - idle - guest) / _CLK_TCK


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def cpu_snapshot(server_pgid: int | None) -> CpuSnapshot:
    server = None if server_pgid is None else group_cpu_seconds(server_pgid)
    return self_cpu_seconds(), server, system_busy_seconds()


def cpu_delta(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU seconds between two snapshots: "gen" (this process), "server", "system" (all)."""
    out = {"gen": after[0] - before[0], "system": after[2] - before[2]}
    if before[1] is not None and after[1] is not None:
        out["server"] = after[1] - before[1]
    return out
