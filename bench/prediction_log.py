"""Prediction-log benchmark: what a crash loses, and whether the writer keeps up.

    .venv/bin/python bench/prediction_log.py                     # both phases, ~1 minute
    .venv/bin/python bench/prediction_log.py --phase crash --crash-seconds 20

Both phases run our server (``python -m serving``, prediction log on, default settings unless
``--rotate-seconds`` says otherwise) on the serving benchmark's random forest (breast-cancer
data, 30 numeric features) in a throwaway store under a temporary directory.

1. **crash**: ``--concurrency`` keep-alive connections send single-row ``POST /predict``
   requests, each with its own ``X-Request-ID``, for ``--crash-seconds``; then the server's
   process group gets SIGKILL while the load is still running. Every request answered 200 is
   an acknowledged prediction. Afterwards every ``part-*.parquet`` is read whole (a part that
   does not read is reported), and the figures are: acknowledged, logged, lost (acknowledged,
   not in the log), duplicated rows, the loss in seconds at the measured rate, and how long
   before the kill the oldest lost answer was sent.
2. **throughput**: the serving benchmark's single-row load (``--duration`` seconds) and
   bulk load (``--bulk-requests`` requests of ``--bulk-rows`` rows), then the server's
   ``prediction_log_*`` counters from ``/metrics`` (dropped, failed, written) and, after a
   graceful stop, the rows and parts on disk.

The machine is shared: the load average is printed with each figure.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from bench.serving.bulk import run_bulk  # noqa: E402
from bench.serving.console import fmt_num, log  # noqa: E402
from bench.serving.load import run_async, run_load  # noqa: E402
from bench.serving.machine import machine_facts  # noqa: E402
from bench.serving.measure import count_logged_rows, scrape_log_counters  # noqa: E402
from bench.serving.servers import ServerProcess, our_server, stop_all_servers  # noqa: E402
from bench.serving.store import Store, build_store, load_dataset  # noqa: E402
from bench.serving.wire import HOST, RawConnection, build_payloads  # noqa: E402


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/prediction_log.py", description=__doc__)
    parser.add_argument("--phase", choices=("crash", "throughput", "both"), default="both")
    parser.add_argument("--model", choices=("rf", "lr"), default="rf")
    parser.add_argument("--concurrency", type=int, default=32, help="connections (32)")
    parser.add_argument("--crash-seconds", type=float, default=15.0, help="load before SIGKILL")
    parser.add_argument("--duration", type=float, default=10.0, help="single-row load seconds")
    parser.add_argument("--bulk-rows", type=int, default=10_000, help="rows per bulk request")
    parser.add_argument("--bulk-requests", type=int, default=20, help="bulk requests")
    parser.add_argument(
        "--rotate-seconds",
        type=float,
        help="SERVING_PREDICTION_LOG_ROTATE_SECONDS for the server (its default when omitted)",
    )
    return parser


@dataclass
class _Acks:
    """Answers of the crash phase: request id -> when the answer (200) arrived."""

    answered: dict[str, float] = field(default_factory=dict)
    errors: int = 0
    sent: int = 0


def _request(port: int, body: bytes, request_id: str) -> bytes:
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
        f"X-Request-ID: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _worker(index: int, port: int, bodies: list[bytes], stop_at: float, acks: _Acks) -> None:
    conn = RawConnection(port)
    sequence = 0
    try:
        while time.monotonic() < stop_at:
            request_id = f"w{index}-{sequence}"
            sequence += 1
            acks.sent += 1
            try:
                status, _ = await asyncio.wait_for(
                    conn.request(_request(port, bodies[sequence % len(bodies)], request_id)), 10
                )
            except (OSError, asyncio.IncompleteReadError, TimeoutError):
                acks.errors += 1
                await asyncio.sleep(0.01)  # the server is gone: do not spin
                continue
            if status == 200:
                acks.answered[request_id] = time.monotonic()
    finally:
        await conn.close()


async def _load_then_kill(
    server: ServerProcess, bodies: list[bytes], concurrency: int, seconds: float
) -> tuple[_Acks, float]:
    """Load for ``seconds``, SIGKILL the server's group under load; (answers, kill time)."""
    acks = _Acks()
    began = time.monotonic()
    workers = [
        asyncio.create_task(_worker(i, server.port, bodies, began + seconds + 1.0, acks))
        for i in range(concurrency)
    ]
    await asyncio.sleep(seconds)
    killed_at = time.monotonic()
    os.killpg(server.pgid, signal.SIGKILL)
    await asyncio.gather(*workers)
    return acks, killed_at


def _read_log(log_dir: Path) -> tuple[list[str], int, int, list[str]]:
    """(request ids of every logged row, parts, hidden leftovers, unreadable parts)."""
    import pyarrow.parquet as pq

    ids: list[str] = []
    unreadable: list[str] = []
    parts = sorted(log_dir.glob("*/predictions/part-*.parquet"))
    for part in parts:
        try:
            ids += pq.read_table(part, columns=["request_id"]).column(0).to_pylist()
        except Exception as exc:  # any failure to read is the finding
            unreadable.append(f"{part.name}: {exc}")
    hidden = len(list(log_dir.glob("*/predictions/.*")))
    return ids, len(parts), hidden, unreadable


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _crash(store: Store, args: argparse.Namespace, workdir: Path, bodies: list[bytes]) -> None:
    log_dir = workdir / "crash-log"
    server = _server(store, args, workdir, log_dir)
    server.start(180)
    log(f"crash: {args.concurrency} connections for {args.crash_seconds:g}s, then SIGKILL")
    acks, killed_at = run_async(
        _load_then_kill(server, bodies, args.concurrency, args.crash_seconds), True
    )
    server.stop()  # reaps the killed group
    load = _loadavg()
    ids, parts, hidden, unreadable = _read_log(log_dir)
    logged = set(ids)
    answered = set(acks.answered)
    lost = answered - logged
    rate = len(answered) / args.crash_seconds
    oldest = max((killed_at - acks.answered[rid] for rid in lost), default=0.0)
    log(
        f"crash: acknowledged {fmt_num(len(answered))} predictions ({rate:,.0f}/s), logged "
        f"{fmt_num(len(ids))} rows in {parts} parts ({len(unreadable)} unreadable, {hidden} "
        f"hidden leftovers); duplicated rows {len(ids) - len(logged)}; logged but never "
        f"acknowledged (in flight at the kill) {len(logged - answered)}"
    )
    log(
        f"crash: LOST {fmt_num(len(lost))} acknowledged predictions = {len(lost) / rate:.2f}s "
        f"at the measured rate; the oldest lost answer came {oldest:.2f}s before the kill "
        f"(load average {load})"
    )
    for line in unreadable:
        log(f"crash: unreadable part {line}")


def _throughput(store: Store, args: argparse.Namespace, workdir: Path, data: object) -> None:
    log_dir = workdir / "throughput-log"
    server = _server(store, args, workdir, log_dir)
    server.start(180)
    payloads = build_payloads("predict", data)  # type: ignore[arg-type]
    try:
        log(f"throughput: single rows, {args.concurrency} connections, {args.duration:g}s")
        single = run_load("raw", server.port, payloads, args.concurrency, 2.0, args.duration,
                          server.pgid, True)  # fmt: skip
        after_single = scrape_log_counters(server.port)
        log(
            f"throughput: single rows {single.req_per_s:,.0f} req/s ({single.errors} errors); "
            f"dropped {fmt_num(after_single.get('prediction_log_records_dropped_total'))}, "
            f"failed {fmt_num(after_single.get('prediction_log_records_failed_total'))} "
            f"(load average {_loadavg()})"
        )
        # The serving benchmark's bulk load: dataframe_split bytes to /invocations.
        bulk_payloads = build_payloads("invocations", data)  # type: ignore[arg-type]
        log(f"throughput: bulk, {args.bulk_requests} x {args.bulk_rows:,}-row /invocations")
        bulk, _ = run_bulk(server.port, bulk_payloads, args.bulk_rows, 1, args.bulk_requests,
                           server.pgid, True)  # fmt: skip
        after_bulk = scrape_log_counters(server.port)
        log(
            f"throughput: bulk {fmt_num(bulk.rows_per_s)} rows/s ({bulk.errors} errors); "
            f"dropped {fmt_num(_increase(after_single, after_bulk, 'dropped'))}, failed "
            f"{fmt_num(_increase(after_single, after_bulk, 'failed'))}, queue now "
            f"{fmt_num(after_bulk.get('prediction_log_queue_records'))} "
            f"(load average {_loadavg()})"
        )
    finally:
        server.stop()
    rows, parts = count_logged_rows(log_dir)
    log(f"throughput: after a graceful stop, {rows:,} rows on disk in {parts} parts")


def _increase(before: dict[str, float], after: dict[str, float], counter: str) -> float:
    name = f"prediction_log_records_{counter}_total"
    return after.get(name, 0.0) - before.get(name, 0.0)


def _server(store: Store, args: argparse.Namespace, workdir: Path, log_dir: Path) -> ServerProcess:
    limit = 4 * args.bulk_rows * 1000  # a 10,000-row JSON body is about 7 MB
    server = our_server(store, args.model, workdir, limit, log_dir)
    if args.rotate_seconds is not None:
        server.env["SERVING_PREDICTION_LOG_ROTATE_SECONDS"] = str(args.rotate_seconds)
    return server


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    facts = machine_facts()
    log(
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {facts['nproc']} cores "
        f"({facts['cpu_model']}), load average {facts['loadavg_at_start']}; model {args.model}"
    )
    with tempfile.TemporaryDirectory(prefix="bench-prediction-log-") as tmp:
        workdir = Path(tmp)
        try:
            X_train, y_train, data = load_dataset(args.bulk_rows)
            store = build_store(workdir, [args.model], X_train, y_train)
            bodies = build_payloads("predict", data).single
            if args.phase in ("crash", "both"):
                _crash(store, args, workdir, bodies)
            if args.phase in ("throughput", "both"):
                _throughput(store, args, workdir, data)
        finally:
            stop_all_servers()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
