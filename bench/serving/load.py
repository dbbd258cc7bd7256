"""The single-row load generators: closed loops of keep-alive requests, timed per request.

``raw`` (the default) writes pre-built requests on asyncio streams; ``httpx`` and
``threads`` (``http.client``) are there to compare against, see bench/README.md.
"""

from __future__ import annotations

import asyncio
import collections
import http.client
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.serving.machine import cpu_delta, cpu_snapshot
from bench.serving.wire import HOST, REQUEST_TIMEOUT, Payloads, RawConnection, http_request

DRAIN_GRACE = 30.0  # seconds the load loop waits for in-flight requests after the window
GENERATORS = ("raw", "httpx", "threads")
_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


@dataclass
class LoadResult:
    generator: str
    concurrency: int
    warmup_s: float
    window_s: float
    completed: int = 0
    ok: int = 0
    errors: int = 0
    warmup_requests: int = 0
    warmup_errors: int = 0
    stalled: int = 0  # requests still unanswered DRAIN_GRACE seconds after the window
    error_kinds: dict[str, int] = field(default_factory=dict)
    error_sample: str | None = None
    req_per_s: float = 0.0
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    generator_cpu_cores: float | None = None
    server_cpu_cores: float | None = None
    other_cpu_cores: float | None = None  # everything else on the machine: noise indicator


@dataclass(frozen=True)
class _Load:
    """One load phase: where to send what, how hard and how long."""

    port: int
    path: str
    bodies: list[bytes]
    concurrency: int
    warmup: float
    duration: float
    server_pgid: int | None


class _Recorder:
    """Per-request bookkeeping shared by the generators (one per worker, merged after)."""

    __slots__ = (
        "errors",
        "kinds",
        "latencies",
        "sample",
        "t_end",
        "t_measure",
        "warmup",
        "warmup_errors",
    )

    def __init__(self, t_measure: float, t_end: float) -> None:
        self.t_measure = t_measure
        self.t_end = t_end
        self.latencies: list[float] = []
        self.errors = 0
        self.warmup = 0
        self.warmup_errors = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.sample: str | None = None

    def record(self, t0: float, t1: float, ok: bool, kind: str | None, detail: str | None) -> None:
        if self.t_measure <= t1 <= self.t_end:
            self.latencies.append(t1 - t0)
            if not ok:
                self.errors += 1
        elif t1 < self.t_measure:
            self.warmup += 1
            if not ok:
                self.warmup_errors += 1
        if not ok and kind is not None:
            self.kinds[kind] += 1
            if self.sample is None:
                self.sample = detail

    def answered(self, t0: float, t1: float, status: int, body: bytes) -> None:
        """A whole answer: 2xx is a success, anything else an error named by its status."""
        if 200 <= status < 300:
            self.record(t0, t1, True, None, None)
        else:
            self.record(t0, t1, False, f"HTTP {status}", body[:300].decode("utf-8", "replace"))


def _summarise(
    result: LoadResult, recorders: Sequence[_Recorder], cpu: dict[str, float]
) -> LoadResult:
    import numpy as np

    latencies = np.array([x for r in recorders for x in r.latencies], dtype=float)
    result.completed = int(latencies.size)
    result.errors = sum(r.errors for r in recorders)
    result.ok = result.completed - result.errors
    result.warmup_requests = sum(r.warmup for r in recorders)
    result.warmup_errors = sum(r.warmup_errors for r in recorders)
    kinds: collections.Counter[str] = collections.Counter()
    for r in recorders:
        kinds.update(r.kinds)
    result.error_kinds = dict(kinds)
    result.error_sample = next((r.sample for r in recorders if r.sample), None)
    result.req_per_s = result.completed / result.window_s
    if latencies.size:
        ms = latencies * 1000.0
        result.p50_ms = float(np.percentile(ms, 50))
        result.p90_ms = float(np.percentile(ms, 90))
        result.p99_ms = float(np.percentile(ms, 99))
        result.max_ms = float(ms.max())
        result.mean_ms = float(ms.mean())
    _cpu_figures(result, cpu)
    return result


def _cpu_figures(result: LoadResult, cpu: dict[str, float]) -> None:
    if "gen" in cpu:
        result.generator_cpu_cores = cpu["gen"] / result.window_s
    if "server" in cpu:
        result.server_cpu_cores = cpu["server"] / result.window_s
    if "system" in cpu:
        others = cpu["system"] - cpu.get("gen", 0.0) - cpu.get("server", 0.0)
        result.other_cpu_cores = max(0.0, others) / result.window_s


async def _cpu_window(
    t_measure: float, t_end: float, server_pgid: int | None, out: dict[str, float]
) -> None:
    await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
    before = cpu_snapshot(server_pgid)
    await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
    out.update(cpu_delta(before, cpu_snapshot(server_pgid)))


async def _run_workers(
    workers: list[Callable[[], Any]], t_end: float, recorders: list[_Recorder]
) -> int:
    """Run the worker coroutines; cancel any still running DRAIN_GRACE after the window."""
    tasks = [asyncio.create_task(w()) for w in workers]
    timeout = max(0.0, t_end - time.perf_counter()) + DRAIN_GRACE
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5.0)
    for task in done:
        if task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    return len(pending)


async def _load_raw(load: _Load) -> LoadResult:
    requests = [http_request(load.port, load.path, body) for body in load.bodies]
    conns = [RawConnection(load.port) for _ in range(load.concurrency)]
    await asyncio.gather(*(c.connect() for c in conns))
    start = time.perf_counter()
    t_measure, t_end = start + load.warmup, start + load.warmup + load.duration
    recorders = [_Recorder(t_measure, t_end) for _ in range(load.concurrency)]
    n = len(requests)
    perf = time.perf_counter

    def make_worker(index: int) -> Callable[[], Any]:
        conn, rec = conns[index], recorders[index]

        async def worker() -> None:
            i = index * 7
            while True:
                t0 = perf()
                if t0 >= t_end:
                    return
                try:
                    status, body = await conn.request(requests[i % n])
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
                    rec.record(t0, perf(), False, type(exc).__name__, repr(exc))
                    await asyncio.sleep(0.01)  # do not spin on a refusing server
                else:
                    rec.answered(t0, perf(), status, body)
                i += 1

        return worker

    cpu: dict[str, float] = {}
    cpu_task = asyncio.create_task(_cpu_window(t_measure, t_end, load.server_pgid, cpu))
    try:
        workers = [make_worker(i) for i in range(load.concurrency)]
        stalled = await _run_workers(workers, t_end, recorders)
        await cpu_task
    finally:
        cpu_task.cancel()
        await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    result = LoadResult("raw", load.concurrency, load.warmup, load.duration, stalled=stalled)
    return _summarise(result, recorders, cpu)


async def _load_httpx(load: _Load) -> LoadResult:
    import httpx

    url = f"http://{HOST}:{load.port}{load.path}"
    concurrency = load.concurrency
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    bodies, n = load.bodies, len(load.bodies)
    perf = time.perf_counter
    async with httpx.AsyncClient(limits=limits, timeout=REQUEST_TIMEOUT) as client:
        start = perf()
        t_measure, t_end = start + load.warmup, start + load.warmup + load.duration
        recorders = [_Recorder(t_measure, t_end) for _ in range(concurrency)]

        def make_worker(index: int) -> Callable[[], Any]:
            rec = recorders[index]

            async def worker() -> None:
                i = index * 7
                while True:
                    t0 = perf()
                    if t0 >= t_end:
                        return
                    try:
                        response = await client.post(url, content=bodies[i % n], headers=_HEADERS)
                    except httpx.HTTPError as exc:
                        rec.record(t0, perf(), False, type(exc).__name__, repr(exc))
                        await asyncio.sleep(0.01)
                    else:
                        _record_httpx(rec, t0, perf(), response)
                    i += 1

            return worker

        cpu: dict[str, float] = {}
        cpu_task = asyncio.create_task(_cpu_window(t_measure, t_end, load.server_pgid, cpu))
        try:
            workers = [make_worker(i) for i in range(concurrency)]
            stalled = await _run_workers(workers, t_end, recorders)
            await cpu_task
        finally:
            cpu_task.cancel()
    result = LoadResult("httpx", concurrency, load.warmup, load.duration, stalled=stalled)
    return _summarise(result, recorders, cpu)


def _record_httpx(rec: _Recorder, t0: float, t1: float, response: Any) -> None:
    if response.is_success:
        rec.record(t0, t1, True, None, None)
    else:
        rec.record(t0, t1, False, f"HTTP {response.status_code}", response.text[:300])


def _thread_worker(
    load: _Load, index: int, rec: _Recorder, start: float, failures: list[BaseException]
) -> None:
    """One thread's closed loop on its own http.client keep-alive connection."""
    perf = time.perf_counter
    conn = http.client.HTTPConnection(HOST, load.port, timeout=REQUEST_TIMEOUT)
    n = len(load.bodies)
    try:
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        time.sleep(max(0.0, start - perf()))
        i = index * 7
        while True:
            t0 = perf()
            if t0 >= rec.t_end:
                return
            try:
                conn.request("POST", load.path, body=load.bodies[i % n], headers=_HEADERS)
                response = conn.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                rec.record(t0, perf(), False, type(exc).__name__, repr(exc))
                conn.close()
                time.sleep(0.01)
            else:
                rec.answered(t0, perf(), response.status, body)
            i += 1
    except BaseException as exc:
        failures.append(exc)
    finally:
        conn.close()


def _load_threads(load: _Load) -> LoadResult:
    """One thread per connection with http.client keep-alive connections."""
    perf = time.perf_counter
    start = perf() + 0.2  # let every thread connect first
    t_measure, t_end = start + load.warmup, start + load.warmup + load.duration
    recorders = [_Recorder(t_measure, t_end) for _ in range(load.concurrency)]
    failures: list[BaseException] = []
    threads = [
        threading.Thread(
            target=_thread_worker,
            args=(load, i, recorders[i], start, failures),
            daemon=True,
            name=f"load-{i}",
        )
        for i in range(load.concurrency)
    ]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, t_measure - perf()))
    before = cpu_snapshot(load.server_pgid)
    time.sleep(max(0.0, t_end - perf()))
    cpu = cpu_delta(before, cpu_snapshot(load.server_pgid))
    deadline = time.monotonic() + DRAIN_GRACE
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stalled = sum(thread.is_alive() for thread in threads)
    if failures:
        raise failures[0]
    result = LoadResult("threads", load.concurrency, load.warmup, load.duration, stalled=stalled)
    return _summarise(result, recorders, cpu)


def run_async(coro: Any, use_uvloop: bool) -> Any:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
    return asyncio.run(coro)


def run_load(
    generator: str,
    port: int,
    payloads: Payloads,
    concurrency: int,
    warmup: float,
    duration: float,
    server_pgid: int | None,
    use_uvloop: bool,
) -> LoadResult:
    """Single-row load on ``port``: ``payloads.single`` in turn, from ``generator``."""
    load = _Load(port, payloads.path, payloads.single, concurrency, warmup, duration, server_pgid)
    if generator == "raw":
        result: LoadResult = run_async(_load_raw(load), use_uvloop)
        return result
    if generator == "httpx":
        result = run_async(_load_httpx(load), use_uvloop)
        return result
    if generator == "threads":
        return _load_threads(load)
    raise ValueError(f"unknown generator {generator!r}")
