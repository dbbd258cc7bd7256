"""One server's whole run: start, sanity, single-row load, bulk, prediction-log figures, stop."""

from __future__ import annotations

import argparse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.serving.bulk import BulkResult, run_bulk, sanity_labels
from bench.serving.console import fmt_cores, fmt_ms, fmt_num, log
from bench.serving.load import LoadResult, run_load
from bench.serving.mlserver import mlserver_server
from bench.serving.profiling import profiled
from bench.serving.servers import ServerFailedError, ServerProcess, mlflow_server, our_server
from bench.serving.store import Dataset, Store, registered_name
from bench.serving.wire import HOST, REQUEST_TIMEOUT, Payloads, build_payloads, labels_from

SERVER_KINDS = ("ours-nolog", "ours", "ours-2w", "mlflow", "mlserver")
"""ours-2w: ours with SERVING_WORKERS=2 and the prediction log on (``--workers-compare``);
mlserver: MLServer on the v2 protocol with adaptive batching (``--mlserver``)."""
"""``ours`` is our server with its prediction log on (its default), ``ours-nolog`` with it off."""
_SANITY_ROWS = 20


@dataclass
class PredictionLogFigures:
    """What our server's prediction log did in one run: rows in the Parquet parts on disk
    after the server stopped, and its dropped/failed counters scraped just before."""

    rows_on_disk: int = 0
    parts: int = 0
    dropped: float | None = None
    failed: float | None = None
    write_errors: float | None = None


@dataclass
class ServerRun:
    server: str
    model: str
    round: int = 1
    started: bool = False
    startup_s: float | None = None
    failure: str | None = None
    single: LoadResult | None = None
    bulk: BulkResult | None = None
    sanity_labels: list[Any] | None = None
    bulk_labels: list[Any] | None = None
    stop: dict[str, Any] = field(default_factory=dict)
    log_problems: list[str] = field(default_factory=list)
    prediction_log: PredictionLogFigures | None = None


@dataclass(frozen=True)
class _Plan:
    """What one server run sends, and what it is called in logs and file names."""

    kind: str
    key: str
    tag: str
    protocol: str
    payloads: Payloads
    bulk_protocol: str
    bulk_payloads: Payloads
    args: argparse.Namespace


def scrape_log_counters(port: int) -> dict[str, float]:
    """The prediction_log_* series of our server's /metrics, summed over labels."""
    request = urllib.request.Request(f"http://{HOST}:{port}/metrics")
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("prediction_log_"):
            name = line.split("{", 1)[0].split(" ", 1)[0]
            totals[name] = totals.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return totals


def count_logged_rows(log_dir: Path) -> tuple[int, int]:
    """Rows and parts of the prediction parts under ``log_dir`` (pyarrow reads only footers)."""
    import pyarrow.parquet as pq

    parts = sorted(log_dir.glob("*/predictions/part-*.parquet"))
    return sum(pq.read_metadata(p).num_rows for p in parts), len(parts)


def bench_server(
    kind: str,
    key: str,
    store: Store,
    data: Dataset,
    args: argparse.Namespace,
    workdir: Path,
    round_index: int = 0,
) -> ServerRun:
    """Start the server of ``kind`` for model ``key``, measure it, stop it."""
    plan = _plan(kind, key, data, args, round_index)
    run = ServerRun(server=kind, model=key, round=round_index + 1)
    server, log_dir = _server(plan, store, workdir)
    try:
        _measure(plan, server, run, log_dir)
    except ServerFailedError as exc:
        run.failure = str(exc)
        log(f"[{key}] FAILED: {exc}")
    finally:
        server.stop()
        run.stop = server.stop_info
        run.log_problems = server.log_problems()[:20]
    if log_dir is not None and run.prediction_log is not None:
        # After the stop: the server writes what it still holds at shutdown.
        _count_log(plan, run.prediction_log, log_dir)
    return run


def _plan(kind: str, key: str, data: Dataset, args: argparse.Namespace, round_index: int) -> _Plan:
    ours = kind.startswith("ours")
    peer = "v2" if kind == "mlserver" else "invocations"
    protocol = args.ours_protocol if ours else peer
    bulk_protocol = args.bulk_protocol if ours else peer
    return _Plan(
        kind=kind,
        key=key,
        tag=f"{key}-{kind}" + (f"-round{round_index + 1}" if args.rounds > 1 else ""),
        protocol=protocol,
        payloads=build_payloads(protocol, data, registered_name(key)),
        bulk_protocol=bulk_protocol,
        bulk_payloads=build_payloads(bulk_protocol, data, registered_name(key)),
        args=args,
    )


def _server(plan: _Plan, store: Store, workdir: Path) -> tuple[ServerProcess, Path | None]:
    """The server to run, and where its prediction log goes (None: off, or not ours)."""
    if plan.kind == "mlserver":
        return mlserver_server(store, plan.key, workdir), None
    if not plan.kind.startswith("ours"):
        return mlflow_server(store, plan.key, workdir), None
    # The default body limit (1 MB) is far below a 10,000-row request: raise it so the
    # bulk phase can run. Single-row requests are unaffected.
    biggest = max(len(plan.payloads.bulk), len(plan.bulk_payloads.bulk))
    limit = max(1_000_000, 2 * biggest) if plan.args.bulk_requests else None
    logged = plan.kind in ("ours", "ours-2w")
    log_dir = workdir / f"prediction-log-{plan.tag}" if logged else None
    workers = 2 if plan.kind == "ours-2w" else 1
    return our_server(store, plan.key, workdir, limit, log_dir, workers), log_dir


def _measure(plan: _Plan, server: ServerProcess, run: ServerRun, log_dir: Path | None) -> None:
    args, key = plan.args, plan.key
    log(f"[{key}] starting {server.label} on port {server.port}")
    server.start(args.startup_timeout)
    run.started = True
    run.startup_s = server.startup_seconds
    log(f"[{key}] {server.label} ready in {server.startup_seconds:.1f}s")
    run.sanity_labels = sanity_labels(
        plan.kind, plan.protocol, server.port, plan.payloads, _SANITY_ROWS
    )
    if args.duration > 0:
        run.single = _single(plan, server)
    if args.bulk_requests > 0:
        if not server.running():
            raise ServerFailedError(f"{server.label} exited during the single-row load")
        run.bulk, run.bulk_labels = _bulk(plan, server)
    if not server.running():
        raise ServerFailedError(f"{server.label} exited during the benchmark")
    if log_dir is not None:
        counters = scrape_log_counters(server.port)
        run.prediction_log = PredictionLogFigures(
            dropped=counters.get("prediction_log_records_dropped_total"),
            failed=counters.get("prediction_log_records_failed_total"),
            write_errors=counters.get("prediction_log_write_errors_total"),
        )


def _single(plan: _Plan, server: ServerProcess) -> LoadResult:
    args, key, kind = plan.args, plan.key, plan.kind
    log(
        f"[{key}] {kind}: single-row load, {args.generator} generator, concurrency "
        f"{args.concurrency}, {args.warmup:g}s warm-up + {args.duration:g}s"
    )
    with profiled(args.profile, f"{plan.tag}-single", server.pgid, args.warmup):
        s = run_load(
            args.generator,
            server.port,
            plan.payloads,
            args.concurrency,
            args.warmup,
            args.duration,
            server.pgid,
            not args.no_uvloop,
        )
    log(
        f"[{key}] {kind}: {s.req_per_s:.1f} req/s, p50 {fmt_ms(s.p50_ms)} ms, "
        f"p99 {fmt_ms(s.p99_ms)} ms, errors {s.errors}, server CPU "
        f"{fmt_cores(s.server_cpu_cores)}, generator CPU {fmt_cores(s.generator_cpu_cores)}"
        f", other processes {fmt_cores(s.other_cpu_cores)}"
    )
    return s


def _bulk(plan: _Plan, server: ServerProcess) -> tuple[BulkResult, list[Any] | None]:
    """The bulk figures, and the labels of the first successful bulk answer."""
    args, key, kind = plan.args, plan.key, plan.kind
    log(
        f"[{key}] {kind}: bulk, {args.bulk_rows}-row request "
        f"({len(plan.bulk_payloads.bulk) / 1e6:.1f} MB to {plan.bulk_payloads.path}) x "
        f"{args.bulk_requests} "
        f"after {args.bulk_warmup} warm-up"
    )
    with profiled(args.profile, f"{plan.tag}-bulk", server.pgid, 0.0):
        b, first = run_bulk(
            server.port,
            plan.bulk_payloads,
            args.bulk_rows,
            args.bulk_warmup,
            args.bulk_requests,
            server.pgid,
            not args.no_uvloop,
        )
    labels = labels_from(plan.bulk_protocol, first) if first is not None else None
    log(
        f"[{key}] {kind}: bulk {fmt_num(b.rows_per_s)} rows/s, median "
        f"{fmt_ms(b.median_ms)} ms per request, errors {b.errors}"
    )
    return b, labels


def _count_log(plan: _Plan, figures: PredictionLogFigures, log_dir: Path) -> None:
    figures.rows_on_disk, figures.parts = count_logged_rows(log_dir)
    log(
        f"[{plan.key}] {plan.kind}: prediction log wrote {figures.rows_on_disk:,} rows in "
        f"{figures.parts} parts; dropped {fmt_num(figures.dropped)}, lost to write errors "
        f"{fmt_num(figures.failed)}"
    )
