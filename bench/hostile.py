"""Hostile-input benchmark: small, cheap requests that used to exhaust memory, freeze the
event loop or answer 500 (issue 13), sent to a real ``python -m serving`` with default
limits and the prediction log on.

    .venv/bin/python -m bench.hostile            # the sizes of the issue
    .venv/bin/python -m bench.hostile --small    # a tenth of them: proves it works in seconds

For every case and route it prints the status, the answer's size and time, the server's peak
RSS growth during the request (VmHWM, reset before each case through /proc/<pid>/clear_refs)
and the slowest ``/health/live`` answer seen while it ran (polled every 10 ms on a keep-alive
connection from another thread). Targets: RSS growth <= 150 MB, live <= 100 ms, body <= 1 MB,
no 5xx. Exit status 1 when a case misses one.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.serving.console import log
from bench.serving.servers import STARTUP_TIMEOUT, our_server, stop_all_servers
from bench.serving.store import build_store, load_dataset
from bench.serving.wire import HOST

MAX_RSS_GROWTH_MB = 150.0
MAX_LIVE_MS = 100.0
MAX_BODY_BYTES = 1_000_000
JSON = "application/json"
PARQUET = "application/vnd.apache.parquet"
HUGE_INTEGER = "1" + "0" * 400
_ODD_METHODS = ("PROPFIND", "MKCOL", "LOCK", "PURGE", "SEARCH", "REPORT")
"""Methods uvicorn's parser lets through (made-up ones are a 400 before the app), none
served: each used to add its own series to /metrics."""
_ODD_REPEAT = 50


@dataclass(frozen=True)
class Case:
    """One hostile request: what it is, where it goes, how it is built."""

    name: str
    method: str
    path: str
    content_type: str
    body: Callable[[], bytes]
    repeat: int = 1  # sent this many times (the metrics case)


@dataclass(frozen=True)
class Outcome:
    case: Case
    status: int
    body_bytes: int
    seconds: float
    rss_growth_mb: float | None
    live_ms: float
    metrics_lines: int | None = None

    @property
    def problems(self) -> list[str]:
        found = []
        if self.status >= 500:
            found.append(f"status {self.status}")
        if self.rss_growth_mb is not None and self.rss_growth_mb > MAX_RSS_GROWTH_MB:
            found.append(f"RSS +{self.rss_growth_mb:.0f} MB")
        if self.live_ms > MAX_LIVE_MS:
            found.append(f"live {self.live_ms:.0f} ms")
        if self.body_bytes > MAX_BODY_BYTES:
            found.append(f"body {self.body_bytes:,} B")
        return found


def cases(columns: Sequence[str], model: str, scale: float) -> list[Case]:
    """The inputs of issue 13 (items 1-5), at ``scale`` times the issue's sizes."""
    n_parquet = int(1_000_000 * scale)
    n_invalid = int(99_990 * scale)
    n_keys = int(8_000 * scale)
    n_allowed = int(19_999 * scale)  # just under the default SERVING_MAX_ROWS: parsed in full
    infer = f"/v2/models/{model}/infer"
    row = dict.fromkeys(columns, 1.0)

    def json_body(value: Any) -> Callable[[], bytes]:
        return lambda: json.dumps(value).encode()

    v2_row = {
        "inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [1.0]} for c in columns]
    }
    huge_v2 = json.dumps(v2_row).replace("[1.0]", f"[{HUGE_INTEGER}]", 1).encode()
    huge_records = json.dumps({"dataframe_records": [row]}).replace("1.0", HUGE_INTEGER, 1).encode()
    return [
        Case(f"parquet zstd, {n_parquet:,} rows", "POST", "/invocations", PARQUET,
             lambda: _parquet(columns, n_parquet)),
        Case(f"parquet zstd, {n_allowed:,} rows", "POST", "/invocations", PARQUET,
             lambda: _parquet(columns, n_allowed)),
        Case(f"{n_invalid:,} invalid records", "POST", "/predict", JSON,
             json_body({"records": [{"x": 1}] * n_invalid})),
        Case(f"{n_allowed:,} invalid records", "POST", "/predict", JSON,
             json_body({"records": [{"x": 1}] * n_allowed})),
        Case(f"{n_allowed:,} invalid records", "POST", "/invocations", JSON,
             json_body({"dataframe_records": [{"x": 1}] * n_allowed})),
        Case(f"{n_invalid:,} invalid records", "POST", "/invocations", JSON,
             json_body({"dataframe_records": [{"x": 1}] * n_invalid})),
        Case(f"{n_invalid:,} invalid labels", "POST", "/feedback", JSON,
             json_body({"labels": [{"x": 1}] * n_invalid})),
        Case(f"{n_keys:,} distinct keys", "POST", "/invocations", JSON,
             json_body({"dataframe_records": [{f"k{i}": 1} for i in range(n_keys)]})),
        Case(f"{n_keys:,} distinct keys", "POST", "/predict", JSON,
             json_body({"records": [{f"k{i}": 1} for i in range(n_keys)]})),
        Case(f"{n_keys:,} tensors", "POST", infer, JSON,
             json_body({"inputs": [{"name": f"k{i}", "shape": [1], "datatype": "FP64",
                                    "data": [1]} for i in range(n_keys)]})),
        *(
            Case(f"{_ODD_REPEAT} x {method}", method, "/predict", JSON, lambda: b"{}",
                 repeat=_ODD_REPEAT)
            for method in _ODD_METHODS
        ),
        Case("integer beyond float64", "POST", "/invocations", JSON, lambda: huge_records),
        Case("integer beyond float64", "POST", "/invocations", "text/csv",
             lambda: _csv(columns, HUGE_INTEGER)),
        Case("integer beyond float64", "POST", infer, JSON, lambda: huge_v2),
        Case("lone surrogate", "POST", "/invocations", JSON,
             lambda: b'{"dataframe_records": [{"\\ud800": 1}]}'),
        Case("lone surrogate id", "POST", infer, JSON,
             lambda: json.dumps({**v2_row, "id": "\ud800"}).encode()),
        Case("lone surrogate", "POST", "/feedback", JSON,
             lambda: b'{"request_id": "\\ud800", "label": 1}'),
        Case("1.79e308 everywhere", "POST", "/predict", JSON,
             json_body(dict.fromkeys(columns, 1.79e308))),
        Case("1e99 everywhere", "POST", infer, JSON,
             lambda: json.dumps(v2_row).replace("[1.0]", "[1e99]").encode()),
        Case("text/plain label", "POST", "/feedback", "text/plain",
             json_body({"request_id": "r1", "label": 1})),
    ]  # fmt: skip


def _parquet(columns: Sequence[str], rows: int) -> bytes:
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame({c: np.ones(rows) for c in columns})
    buffer = io.BytesIO()
    frame.to_parquet(buffer, compression="zstd", index=False)
    return buffer.getvalue()


def _csv(columns: Sequence[str], first: str) -> bytes:
    header = ",".join(f'"{c}"' for c in columns)
    values = ",".join([first] + ["1"] * (len(columns) - 1))
    return f"{header}\n{values}\n".encode()


class LivenessProbe:
    """Polls ``/health/live`` every 10 ms on one keep-alive connection; the slowest answer
    since :meth:`reset` is :attr:`worst_ms`."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.worst_ms = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LivenessProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def reset(self) -> None:
        self.worst_ms = 0.0

    def _run(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                conn.request("GET", "/health/live")
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(HOST, self.port, timeout=60)
                continue
            self.worst_ms = max(self.worst_ms, (time.perf_counter() - started) * 1000)
            self._stop.wait(0.01)
        conn.close()


def _server_pid(leader: int) -> int:
    """The process answering (``python -m serving`` with one worker is the leader itself)."""
    return leader


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _memory_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def run_case(case: Case, port: int, pid: int, probe: LivenessProbe) -> Outcome:
    body = case.body()
    time.sleep(0.2)  # let the previous case's garbage go
    can_reset = _reset_peak(pid)
    before_kb = _memory_kb(pid, "VmRSS")
    probe.reset()
    conn = http.client.HTTPConnection(HOST, port, timeout=120)
    started = time.perf_counter()
    for _ in range(case.repeat):
        conn.request(case.method, case.path, body=body, headers={"Content-Type": case.content_type})
        response = conn.getresponse()
        answer = response.read()
    seconds = time.perf_counter() - started
    time.sleep(0.05)  # one more liveness poll after the answer
    peak_kb = _memory_kb(pid, "VmHWM") if can_reset else None
    metrics_lines = None
    if case.repeat > 1:
        conn.request("GET", "/metrics")
        metrics_lines = len(conn.getresponse().read().splitlines())
    conn.close()
    return Outcome(
        case=case,
        status=response.status,
        body_bytes=len(answer),
        seconds=seconds,
        rss_growth_mb=None if peak_kb is None else max(0, peak_kb - before_kb) / 1024,
        live_ms=probe.worst_ms,
        metrics_lines=metrics_lines,
    )


def report(outcomes: Sequence[Outcome]) -> str:
    lines = [
        f"{'input':<32} {'route':<24} {'status':>6} {'answer B':>10} {'time s':>7} "
        f"{'RSS +MB':>8} {'live ms':>8}  verdict",
    ]
    for o in outcomes:
        rss = "-" if o.rss_growth_mb is None else f"{o.rss_growth_mb:.0f}"
        verdict = "ok" if not o.problems else "MISSED: " + ", ".join(o.problems)
        if o.metrics_lines is not None:
            verdict += f" (/metrics {o.metrics_lines} lines after)"
        route = f"{o.case.method} {o.case.path}"[:24]
        lines.append(
            f"{o.case.name[:32]:<32} {route:<24} {o.status:>6} {o.body_bytes:>10,} "
            f"{o.seconds:>7.2f} {rss:>8} {o.live_ms:>8.1f}  {verdict}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile", description=__doc__)
    parser.add_argument("--small", action="store_true", help="a tenth of the issue's sizes")
    parser.add_argument("--json", type=Path, help="also write the outcomes to this file")
    args = parser.parse_args(argv)
    scale = 0.1 if args.small else 1.0
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        root = Path(tmp)
        X_train, y_train, data = load_dataset(bulk_rows=1)
        store = build_store(root, ["rf"], X_train, y_train)
        server = our_server(store, "rf", root, None, root / "prediction_log")
        try:
            server.start(STARTUP_TIMEOUT)
            pid = _server_pid(server.pgid)
            log(f"server ready (pid {pid}); sending {'small' if args.small else 'full'} inputs")
            with LivenessProbe(server.port) as probe:
                outcomes = list(
                    _run_all(
                        cases(data.columns, store.registered["rf"], scale), server.port, pid, probe
                    )
                )
        finally:
            stop_all_servers()
    print(report(outcomes))
    if args.json is not None:
        args.json.write_text(json.dumps([_as_json(o) for o in outcomes], indent=2))
    missed = [o for o in outcomes if o.problems]
    print(f"\n{len(outcomes) - len(missed)}/{len(outcomes)} cases within every target "
          f"(RSS growth <= {MAX_RSS_GROWTH_MB:.0f} MB, live <= {MAX_LIVE_MS:.0f} ms, "
          f"answer <= 1 MB, no 5xx)")  # fmt: skip
    return 1 if missed else 0


def _run_all(
    selected: Sequence[Case], port: int, pid: int, probe: LivenessProbe
) -> Iterator[Outcome]:
    for case in selected:
        outcome = run_case(case, port, pid, probe)
        log(f"{case.name} -> {case.method} {case.path}: {outcome.status}")
        yield outcome


def _as_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "input": outcome.case.name,
        "route": f"{outcome.case.method} {outcome.case.path}",
        "status": outcome.status,
        "answer_bytes": outcome.body_bytes,
        "seconds": round(outcome.seconds, 3),
        "rss_growth_mb": outcome.rss_growth_mb,
        "live_ms": round(outcome.live_ms, 1),
        "problems": outcome.problems,
    }


if __name__ == "__main__":
    sys.exit(main())
