"""``python -m bench.serving``: the arguments, and the order in which the servers run."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.serving.calibrate import calibrate, stub_main
from bench.serving.ceiling import ceiling_lines, ceiling_main, measure_shares
from bench.serving.console import log
from bench.serving.live import bench_live, live_lines
from bench.serving.load import GENERATORS
from bench.serving.machine import machine_facts, parallel_capacity
from bench.serving.measure import ServerRun, bench_server
from bench.serving.report import report, write_json
from bench.serving.servers import STARTUP_TIMEOUT, stop_all_servers
from bench.serving.store import MODEL_TITLES, Dataset, build_store, load_dataset

OURS_KINDS = {"on": ["ours"], "off": ["ours-nolog"], "both": ["ours-nolog", "ours"]}
# (full run, --quick) defaults of the options whose default depends on --quick.
_QUICK_DEFAULTS = {
    "duration": (15.0, 3.0),
    "warmup": (5.0, 1.0),
    "bulk_requests": (10, 2),
    "bulk_warmup": (2, 1),
    "live_requests": (10_000, 2_000),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description="Benchmark `python -m serving` against `mlflow models serve` on the same "
        "registered model versions (throwaway store in a temp dir).",
    )
    parser.add_argument("--duration", type=float, help="measured seconds per server (15)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before measuring (5)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop workers (32)")
    parser.add_argument("--bulk-rows", type=int, default=10_000, help="rows per bulk request")
    parser.add_argument("--bulk-requests", type=int, help="timed bulk requests per server (10)")
    parser.add_argument("--bulk-warmup", type=int, help="untimed bulk requests first (2)")
    parser.add_argument("--models", default="rf,lr", help="comma list of rf, lr (rf,lr)")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the ours-then-MLflow pair this many times per model and compare medians "
        "(for a machine with other load; 1)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short run to check it works: 3s + 1s warm-up, 2 bulk requests",
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--ours-only", action="store_true", help="benchmark only our server")
    only.add_argument("--mlflow-only", action="store_true", help="benchmark only MLflow's")
    parser.add_argument(
        "--generator",
        choices=GENERATORS,
        default="raw",
        help="load generator: raw asyncio streams (default), httpx.AsyncClient, or threads "
        "with http.client",
    )
    parser.add_argument(
        "--ours-protocol",
        choices=("predict", "invocations", "v2"),
        default="predict",
        help="what our server is sent: POST /predict with JSON records (default), or the same "
        "/invocations dataframe_split bytes as MLflow, or v2 infer with one FP64 tensor per "
        "column",
    )
    parser.add_argument(
        "--bulk-protocol",
        choices=("predict", "invocations", "v2"),
        default="invocations",
        help="what our server is sent in the bulk phase: the same /invocations dataframe_split "
        "bytes as MLflow (default: like for like), or /predict JSON records (3.4x larger body)",
    )
    parser.add_argument(
        "--prediction-log",
        choices=("on", "off", "both"),
        default="on",
        help="our server's prediction log: on (its default, row 'ours'), off (row "
        "'ours-nolog'), or both on the same model and load, alternating which goes first in "
        "each round, with the on/off throughput ratio (on)",
    )
    parser.add_argument(
        "--no-uvloop", action="store_true", help="use asyncio's default loop in the generator"
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="only measure each generator against a do-nothing stub server, then exit",
    )
    parser.add_argument(
        "--calibrate-generators", default="raw,httpx,threads", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--startup-timeout", type=float, default=STARTUP_TIMEOUT, help="seconds per server start"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="record each server with py-spy (if installed) during the measured single-row "
        "window and the bulk phase; writes raw stacks and a summary per phase to DIR. "
        "py-spy costs CPU: do not quote the figures of a profiled run",
    )
    parser.add_argument("--keep-store", action="store_true", help="keep the temp dir (and logs)")
    parser.add_argument("--json", type=Path, metavar="PATH", help="also write results as JSON")
    # The calibration stub is this package in a child process (see servers.stub_server).
    parser.add_argument("--stub-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--ceiling-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument(
        "--mlserver",
        action="store_true",
        help="also run MLServer (bench extra, installed into .venv-bench) with adaptive "
        "batching on the same version and v2 bodies; compare with --ours-protocol v2",
    )
    parser.add_argument(
        "--workers-compare",
        action="store_true",
        help="also run ours with SERVING_WORKERS=2 (row 'ours-2w') and print its throughput "
        "against one worker",
    )
    live = parser.add_mutually_exclusive_group()
    live.add_argument(
        "--live-only",
        action="store_true",
        help="only the champion-and-challenger figures (shadow cost, canary share, errors "
        "with a failing challenger): about 2 minutes",
    )
    live.add_argument(
        "--no-live", action="store_true", help="skip the champion-and-challenger figures"
    )
    parser.add_argument(
        "--live-requests",
        type=int,
        help="requests of the canary share measurement (10,000; --quick 2,000); the failing "
        "challenger gets a tenth of them, at least 200",
    )
    parser.add_argument(
        "--no-ceiling",
        action="store_true",
        help="skip the bare FastAPI /predict run that our single-row /predict is compared to",
    )
    parser.add_argument(
        "--ceiling-rounds",
        type=int,
        default=8,
        help="pairs of alternating windows, ours then the ceiling, per model (8); each window "
        "is half of --duration",
    )
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = _parser()
    args = parser.parse_args(argv)
    for name, (full, quick) in _QUICK_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODEL_TITLES]
    if unknown or not args.models:
        parser.error(f"--models takes a comma list of {', '.join(MODEL_TITLES)}")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.concurrency < 1 or args.duration < 0 or args.warmup < 0 or args.bulk_rows < 1:
        parser.error("--concurrency and --bulk-rows must be >= 1, durations >= 0")
    args.calibrate_generators = [g for g in args.calibrate_generators.split(",") if g]
    return args


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.stub_server is not None:
        return stub_main(args.stub_server)
    if args.ceiling_server is not None:
        return ceiling_main(args.ceiling_server)
    os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    atexit.register(stop_all_servers)
    facts = machine_facts()
    log(
        f"machine: {facts['nproc']} cores, {facts['cpu_model']}, Python {facts['python']}, "
        f"mlflow {facts['versions']['mlflow']}, scikit-learn {facts['versions']['scikit-learn']}"
    )
    if args.workers_compare:
        facts["parallel_capacity"] = parallel_capacity()
        log(f"two CPU-bound processes do {facts['parallel_capacity']:.2f}x the work of one here")
    X_train, y_train, data = load_dataset(args.bulk_rows)
    if args.calibrate:
        results = calibrate(args, data)
        if args.json:
            args.json.write_text(json.dumps({"machine": facts, "calibration": results}, indent=2))
        return 0
    if args.live_only:
        figures = bench_live(args, X_train, y_train, data)
        print("\n".join(live_lines(figures)), flush=True)
        if args.json:
            document = {"machine": facts, "live": figures.to_json()}
            args.json.write_text(json.dumps(document, indent=2))
        return 0 if figures.failing_client_errors == 0 else 1
    runs = _bench_all(args, X_train, y_train, data)
    print(report(facts, runs, args), flush=True)
    shares = (
        [] if args.mlflow_only or args.no_ceiling else measure_shares(args, X_train, y_train, data)
    )
    print("\n".join(ceiling_lines(shares)), flush=True)
    live = None if args.no_live or args.mlflow_only else bench_live(args, X_train, y_train, data)
    if live is not None:
        print("\n".join(live_lines(live)), flush=True)
    if args.json:
        write_json(args.json, facts, runs, args)
        if live is not None:
            document = json.loads(args.json.read_text())
            document["live"] = live.to_json()
            args.json.write_text(json.dumps(document, indent=2))
        if shares:
            document = json.loads(args.json.read_text())
            document["ceiling"] = [share.to_json() for share in shares]
            args.json.write_text(json.dumps(document, indent=2))
        log(f"wrote {args.json}")
    failed = [run for run in runs if not run.started or run.failure]
    return 1 if failed else 0


def _bench_all(
    args: argparse.Namespace, X_train: Any, y_train: Any, data: Dataset
) -> list[ServerRun]:
    """Every server of every model and round, one at a time, in a throwaway store."""
    runs: list[ServerRun] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    try:
        log(f"throwaway MLflow store in {tmp}")
        store = build_store(tmp, args.models, X_train, y_train)
        for key in args.models:
            for round_index in range(args.rounds):
                if args.rounds > 1:
                    log(f"[{key}] round {round_index + 1} of {args.rounds}")
                for kind in _order(args, round_index):
                    runs.append(bench_server(kind, key, store, data, args, tmp, round_index))
    finally:
        stop_all_servers()
        if args.keep_store:
            log(f"kept {tmp} (store and server logs)")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return runs


def _order(args: argparse.Namespace, round_index: int) -> list[str]:
    """The servers of one round, in the order they run."""
    ours_kinds = OURS_KINDS[args.prediction_log]
    if args.workers_compare:
        ours_kinds = [*ours_kinds, "ours-2w"]
    if args.mlserver:
        ours_kinds = [*ours_kinds, "mlserver"]
    if args.ours_only:
        kinds = list(ours_kinds)
    elif args.mlflow_only:
        kinds = ["mlflow"]
    else:
        kinds = [*ours_kinds, "mlflow"]
    # Log off and on take turns at going first, so a drift in the machine's other load over
    # a round does not always favour the same one.
    if round_index % 2 and len(ours_kinds) == 2:
        kinds[:2] = kinds[1::-1]
    return kinds


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        stop_all_servers()
        print("interrupted: servers stopped, temporary store removed", file=sys.stderr)
        sys.exit(130)
