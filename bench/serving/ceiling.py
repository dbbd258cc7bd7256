"""The framework ceiling: a bare FastAPI ``POST /predict`` that decodes the body and answers a
constant, under the same uvicorn stack as ours (uvloop, httptools), loaded like ours.

Our single-row ``/predict`` is printed as a share of it: what our validation, batching,
model call, prediction log and metrics cost on top of the framework itself. The share is
measured in alternating windows (:func:`measure_shares`).
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import uvicorn
from fastapi import FastAPI, Request, Response

from bench.serving.ab import alternate
from bench.serving.console import log
from bench.serving.servers import ServerProcess, _checkout_env, our_server
from bench.serving.store import Dataset, build_store
from bench.serving.wire import HOST, build_payloads, free_port

TARGET_SHARE = 0.65
"""Issue 13: single-row /predict at least 65% of the bare framework."""
_SETTLE = 3.0
"""Seconds of rest before each window: our prediction log writes the last rows of a window
within its rotate_seconds (2 s), and that work must not land in the ceiling's window."""
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


@dataclass(frozen=True)
class Share:
    """Our single-row ``/predict`` on one model and the ceiling, in alternating windows."""

    model: str
    pairs: list[dict[str, float]]
    """Each round's req/s, ``{"ours": ..., "ceiling": ...}``."""

    @property
    def ratios(self) -> list[float]:
        return [pair["ours"] / pair["ceiling"] for pair in self.pairs]

    @property
    def median(self) -> float:
        return statistics.median(self.ratios)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "pairs": self.pairs, "median_share": self.median}


def measure_shares(
    args: argparse.Namespace, X_train: Any, y_train: Any, data: Dataset
) -> list[Share]:
    """Our share of the ceiling for each model, from ``args.ceiling_rounds`` pairs of windows.

    This machine's speed drifts by tens of percent within minutes, more than the share's
    margin, so one window of each, minutes apart, cannot compare them. Both servers run at
    once (one idle while the other is loaded), windows alternate, and each pair's ratio is
    taken within its round; the median of those is the share. Our prediction log is on.
    """
    workdir = Path(tempfile.mkdtemp(prefix="bench-serving-ceiling-"))
    port = free_port()
    ceiling = ServerProcess(
        label="bare FastAPI ceiling",
        argv=[sys.executable, "-m", "bench.serving", "--ceiling-server", str(port)],
        env=_checkout_env(),
        port=port,
        ready_path="/health",
        log_path=workdir / "ceiling.log",
        cwd=workdir,
    )
    window = max(args.duration / 2, 2.0)
    payloads = build_payloads("predict", data)
    shares: list[Share] = []
    try:
        store = build_store(workdir, args.models, X_train, y_train)
        ceiling.start(args.startup_timeout)
        log(f"ceiling: bare FastAPI on port {port}; {args.ceiling_rounds} rounds of {window:g}s")
        for key in args.models:
            ours = our_server(store, key, workdir, None, workdir / f"log-{key}")
            ours.start(args.startup_timeout)
            try:
                servers = {"ours": ours, "ceiling": ceiling}
                pairs = alternate(
                    servers, payloads, args.ceiling_rounds, window, args.concurrency, _SETTLE
                )
            finally:
                ours.stop()
            shares.append(Share(key, pairs))
            log(f"ceiling: ours ({key}) median share {shares[-1].median:.0%}")
    except (Exception, SystemExit) as exc:  # a benchmark side show: report it, never fail the run
        log(f"ceiling: failed ({exc})")
    finally:
        ceiling.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return shares


def ceiling_lines(shares: list[Share]) -> list[str]:
    """The share lines: our single-row /predict against the ceiling, per model."""
    if not shares:
        return []
    lines = [
        "",
        "Framework ceiling (bare FastAPI /predict, decode + constant answer), in alternating "
        "windows with ours (prediction log on):",
    ]
    for share in shares:
        verdict = "met" if share.median >= TARGET_SHARE else "NOT met"
        ours = statistics.median(pair["ours"] for pair in share.pairs)
        bare = statistics.median(pair["ceiling"] for pair in share.pairs)
        lines.append(
            f"  ours ({share.model}, predict): median share {share.median:.0%} over "
            f"{len(share.pairs)} pairs ({', '.join(f'{r:.0%}' for r in share.ratios)}); "
            f"medians {ours:,.0f} vs {bare:,.0f} req/s (target >= {TARGET_SHARE:.0%}: {verdict})"
        )
    return lines
