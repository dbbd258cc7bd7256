"""The framework ceiling: a bare FastAPI ``POST /predict`` that decodes the body and answers a
constant, under the same uvicorn stack as ours (uvloop, httptools), loaded like ours.

Our single-row ``/predict`` is printed as a share of it: what our validation, batching,
model call, prediction log and metrics cost on top of the framework itself.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from bench.serving.console import log
from bench.serving.load import LoadResult, run_load
from bench.serving.servers import ServerProcess, _checkout_env
from bench.serving.store import Dataset
from bench.serving.wire import HOST, build_payloads, free_port

TARGET_SHARE = 0.65
"""Issue 13: single-row /predict at least 65% of the bare framework."""
_ANSWER = (
    b'{"model_name":"ceiling","model_version":"1","prediction":'
    b'{"label":"x","confidence":1.0,"probabilities":{"x":1.0}}}'
)


def ceiling_main(port: int) -> int:
    """The ceiling server's process (``--ceiling-server PORT``)."""
    with contextlib.suppress(Exception):  # stop when the benchmark is gone
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    app = FastAPI()

    @app.post("/predict")
    async def predict(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(_ANSWER, media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        return Response(b"{}", media_type="application/json")

    uvicorn.run(app, host=HOST, port=port, log_level="warning")
    return 0


def measure_ceiling(args: argparse.Namespace, data: Dataset) -> LoadResult | None:
    """The ceiling's single-row req/s under the benchmark's load; None if it fails."""
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-ceiling-"))
    port = free_port()
    server = ServerProcess(
        label="bare FastAPI ceiling",
        argv=[sys.executable, "-m", "bench.serving", "--ceiling-server", str(port)],
        env=_checkout_env(),
        port=port,
        ready_path="/health",
        log_path=workdir / "ceiling.log",
        cwd=workdir,
    )
    try:
        server.start(args.startup_timeout)
        log(f"ceiling: bare FastAPI on port {port}, same load as ours")
        result = run_load(
            args.generator,
            port,
            build_payloads("predict", data),
            args.concurrency,
            args.warmup,
            args.duration,
            server.pgid,
            not args.no_uvloop,
        )
    except Exception as exc:  # a benchmark side show: report it, never fail the run
        log(f"ceiling: failed ({exc})")
        return None
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    sample = f" (first: {result.error_sample})" if result.errors else ""
    log(f"ceiling: {result.req_per_s:.1f} req/s, errors {result.errors}{sample}")
    return result


def ceiling_lines(ours: list[tuple[str, float]], ceiling: LoadResult | None) -> list[str]:
    """The share lines: each of our single-row runs (label, req/s) against the ceiling."""
    if ceiling is None or not ceiling.req_per_s:
        return []
    lines = [
        "",
        f"Framework ceiling (bare FastAPI /predict, decode + constant answer): "
        f"{ceiling.req_per_s:,.0f} req/s",
    ]
    for label, req_per_s in ours:
        share = req_per_s / ceiling.req_per_s
        verdict = "met" if share >= TARGET_SHARE else "NOT met"
        lines.append(
            f"  {label}: {req_per_s:,.0f} req/s = {share:.0%} of the ceiling "
            f"(target >= {TARGET_SHARE:.0%}: {verdict})"
        )
    return lines
