"""The bulk phase (one many-row request, repeated) and the untimed sanity requests."""

from __future__ import annotations

import asyncio
import http.client
import time
from dataclasses import dataclass
from typing import Any

from bench.serving.load import run_async
from bench.serving.machine import cpu_delta, cpu_snapshot
from bench.serving.servers import ServerFailedError
from bench.serving.wire import (
    HOST,
    REQUEST_TIMEOUT,
    Payloads,
    RawConnection,
    http_request,
    labels_from,
)


@dataclass
class BulkResult:
    rows: int
    body_bytes: int
    requests: int = 0
    errors: int = 0
    error_sample: str | None = None
    seconds: float = 0.0
    rows_per_s: float | None = None
    median_ms: float | None = None
    max_ms: float | None = None
    server_cpu_cores: float | None = None
    other_cpu_cores: float | None = None


async def _warm_up(
    conn: RawConnection, request: bytes, warmup: int, result: BulkResult
) -> bytes | None:
    """Send the untimed requests; the first successful answer's body, if any."""
    first_ok: bytes | None = None
    for _ in range(warmup):
        status, body = await asyncio.wait_for(conn.request(request), REQUEST_TIMEOUT)
        if 200 <= status < 300 and first_ok is None:
            first_ok = body
        elif not 200 <= status < 300:
            result.error_sample = f"warm-up: HTTP {status}: {body[:300]!r}"
    return first_ok


async def _timed(
    conn: RawConnection, request: bytes, repeats: int, result: BulkResult
) -> tuple[list[float], bytes | None]:
    """Send the timed requests: their latencies, and the first successful answer's body."""
    latencies = []
    first_ok: bytes | None = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        try:
            status, body = await asyncio.wait_for(conn.request(request), REQUEST_TIMEOUT)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            result.errors += 1
            result.error_sample = result.error_sample or repr(exc)
            continue
        latencies.append(time.perf_counter() - t0)
        if 200 <= status < 300:
            first_ok = first_ok or body
        else:
            result.errors += 1
            result.error_sample = result.error_sample or f"HTTP {status}: {body[:300]!r}"
    return latencies, first_ok


async def _bulk(
    port: int, request: bytes, rows: int, body_bytes: int, warmup: int, repeats: int, pgid: int
) -> tuple[BulkResult, bytes | None]:
    conn = RawConnection(port)
    result = BulkResult(rows=rows, body_bytes=body_bytes)
    try:
        first_ok = await _warm_up(conn, request, warmup, result)
        before = cpu_snapshot(pgid)
        began = time.perf_counter()
        latencies, timed_ok = await _timed(conn, request, repeats, result)
        first_ok = first_ok or timed_ok
        result.seconds = time.perf_counter() - began
        cpu = cpu_delta(before, cpu_snapshot(pgid))
        result.server_cpu_cores = cpu["server"] / result.seconds
        others = cpu["system"] - cpu["gen"] - cpu["server"]
        result.other_cpu_cores = max(0.0, others) / result.seconds
    finally:
        await conn.close()
    result.requests = repeats
    good = repeats - result.errors
    if good > 0 and latencies:
        result.rows_per_s = good * rows / result.seconds
        ordered = sorted(latencies)
        result.median_ms = ordered[len(ordered) // 2] * 1000.0
        result.max_ms = ordered[-1] * 1000.0
    return result, first_ok


def run_bulk(
    port: int,
    payloads: Payloads,
    rows: int,
    warmup: int,
    repeats: int,
    pgid: int,
    use_uvloop: bool,
) -> tuple[BulkResult, bytes | None]:
    """The bulk phase on one connection: its figures, and the first successful answer."""
    request = http_request(port, payloads.path, payloads.bulk)
    coro = _bulk(port, request, rows, len(payloads.bulk), warmup, repeats, pgid)
    outcome: tuple[BulkResult, bytes | None] = run_async(coro, use_uvloop)
    return outcome


def sanity_labels(kind: str, protocol: str, port: int, payloads: Payloads, count: int) -> list[Any]:
    """Labels for the first ``count`` pool rows, one request each (not timed)."""
    labels: list[Any] = []
    conn = http.client.HTTPConnection(HOST, port, timeout=REQUEST_TIMEOUT)
    try:
        for body in payloads.single[:count]:
            conn.request(
                "POST", payloads.path, body=body, headers={"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            raw = response.read()
            if response.status != 200:
                raise ServerFailedError(
                    f"{kind} answered HTTP {response.status} to a single-row request: {raw[:500]!r}"
                )
            labels.extend(labels_from(protocol, raw))
    finally:
        conn.close()
    return labels
