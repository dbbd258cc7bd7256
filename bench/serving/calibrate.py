"""Calibration: how fast each load generator goes against a stub server that does nothing."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.serving.console import fmt_cores, fmt_ms, log
from bench.serving.load import run_async, run_load
from bench.serving.servers import stub_server
from bench.serving.store import Dataset
from bench.serving.wire import HOST, build_payloads

_STUB_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


async def _stub_serve(port: int) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length:
                    await reader.readexactly(length)
                writer.write(_STUB_RESPONSE)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, port)
    async with server:
        await server.serve_forever()


def stub_main(port: int) -> int:
    """The stub server's process (``--stub-server PORT``): answers ``{}`` until stopped."""
    # Stops when its parent (the benchmark) is gone, in case cleanup never ran.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    run_async(_stub_serve(port), use_uvloop=True)
    return 0


def calibrate(args: argparse.Namespace, data: Dataset) -> dict[str, Any]:
    """How many requests/s each generator reaches against a server that does nothing."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-stub-"))
    stub = stub_server(workdir)
    results: dict[str, Any] = {}
    try:
        stub.start(timeout=30.0)  # the stub answers 200 to any request, GET / included
        payloads = build_payloads("predict", data)
        for generator in args.calibrate_generators:
            result = run_load(
                generator,
                stub.port,
                payloads,
                args.concurrency,
                args.warmup,
                args.duration,
                stub.pgid,
                not args.no_uvloop,
            )
            results[generator] = asdict(result)
            log(
                f"calibration {generator:8s}: {result.req_per_s:9.0f} req/s  "
                f"p50 {fmt_ms(result.p50_ms)} ms  p99 {fmt_ms(result.p99_ms)} ms  "
                f"generator CPU {result.generator_cpu_cores:.2f} cores, "
                f"stub CPU {result.server_cpu_cores or 0:.2f} cores, other processes "
                f"{fmt_cores(result.other_cpu_cores)} cores, errors {result.errors}"
            )
    finally:
        stub.stop()
        with contextlib.suppress(OSError):
            for path in workdir.iterdir():
                path.unlink()
            workdir.rmdir()
    return results
