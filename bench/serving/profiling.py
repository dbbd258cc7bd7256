"""Optional profiling of the servers with py-spy (``--profile DIR``)."""

from __future__ import annotations

import collections
import contextlib
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from bench.serving.console import log
from bench.serving.servers import signal_group

_BOILERPLATE_FRAMES = ("<frozen", "threading.py", "runpy", "concurrent/futures/thread.py")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.is_file() else shutil.which("py-spy")


class Profiler:
    """``py-spy record`` on a server's process tree; SIGINT makes it write its file."""

    def __init__(self, exe: str, pid: int, out: Path) -> None:
        self.exe = exe
        self.pid = pid
        self.out = out
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._stopped = False

    def start(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self.proc = subprocess.Popen(
                [
                    self.exe,
                    "record",
                    "--pid",
                    str(self.pid),
                    "--subprocesses",
                    "--nonblocking",
                    "--rate",
                    "100",
                    "--format",
                    "raw",
                    "--output",
                    str(self.out),
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )

    def stop(self) -> Path | None:
        with self._lock:
            self._stopped = True
            proc = self.proc
        if proc is None:
            return None
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        return self.out if self.out.is_file() else None


def summarise_profile(path: Path, top: int = 25) -> list[str]:
    """Self and inclusive sample shares per function from py-spy's raw (collapsed) output."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        own[frames[-1]] += count
        for frame in set(frames):
            if not any(b in frame for b in _BOILERPLATE_FRAMES):
                inclusive[frame] += count
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples", "", "self time (where the CPU is):"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in own.most_common(top)]
    lines += ["", "inclusive time (what it is spent under):"]
    lines += [f"  {100 * c / total:5.1f}%  {f}" for f, c in inclusive.most_common(2 * top)]
    return lines


@contextlib.contextmanager
def profiled(profile_dir: Path | None, label: str, pid: int, delay: float) -> Iterator[None]:
    """Profile ``pid`` from ``delay`` seconds into the block until its end, if asked."""
    exe = find_py_spy() if profile_dir is not None else None
    if profile_dir is None or exe is None:
        yield
        return
    profile_dir.mkdir(parents=True, exist_ok=True)
    profiler = Profiler(exe, pid, profile_dir / f"{label}.raw.txt")
    timer = threading.Timer(delay, profiler.start)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        written = profiler.stop()
        if written is not None:
            _write_summary(profile_dir, label, written)


def _write_summary(profile_dir: Path, label: str, written: Path) -> None:
    summary = summarise_profile(written)
    summary_path = profile_dir / f"{label}.summary.txt"
    summary_path.write_text("\n".join(summary) + "\n")
    log(f"profile of {label}: {summary_path}")
    for line in summary[3:11]:
        log(f"    {line.strip()}")
