"""Two variants of our server, A and B, under the same single-row load in alternating windows.

This machine's single-row throughput drifts by tens of percent within minutes, more than most
changes to the server are worth, so two separate benchmark runs cannot compare them. Here both
servers run at once on the same registered model; each round loads A then B (or B then A,
alternating) for a short window, and each pair's ratio is taken within the round. The median
pair ratio is the figure.

    .venv/bin/python -m bench.serving.ab --model lr --rounds 6 --b SERVING_REQUEST_TIMEOUT_SECONDS=0
    .venv/bin/python -m bench.serving.ab --model rf --b-log off

B differs from A by environment variables (``--b NAME=VALUE``, any number) and/or by its
prediction log (``--b-log off``); the variable may be one the server reads or one a patched
checkout reads, to try a change before making it the default.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from bench.serving.console import log
from bench.serving.load import run_load
from bench.serving.servers import STARTUP_TIMEOUT, ServerProcess, our_server, stop_all_servers
from bench.serving.store import MODEL_TITLES, build_store, load_dataset
from bench.serving.wire import Payloads, build_payloads


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    variables = dict(_variable(text) for text in args.b)
    root = Path(tempfile.mkdtemp(prefix="bench-ab-"))
    try:
        X_train, y_train, data = load_dataset(1_000)
        store = build_store(root, [args.model], X_train, y_train)
        servers = {
            "A": our_server(store, args.model, root, None, root / "log-a"),
            "B": our_server(
                store, args.model, root, None, None if args.b_log == "off" else root / "log-b"
            ),
        }
        servers["B"].env.update(variables)
        for server in servers.values():
            server.start(STARTUP_TIMEOUT)
        payloads = build_payloads(args.protocol, data, store.registered[args.model])
        pairs = alternate(servers, payloads, args.rounds, args.window, args.concurrency)
    finally:
        stop_all_servers()
        shutil.rmtree(root, ignore_errors=True)
    ratios = [pair["B"] / pair["A"] for pair in pairs]
    changed = " ".join(args.b) + (" prediction log off" if args.b_log == "off" else "")
    print(
        f"{args.model} {args.protocol}: B ({changed or 'same as A'}) / A single-row req/s: "
        "median pair ratio "
        f"{statistics.median(ratios):.3f} over {len(ratios)} rounds "
        f"({', '.join(f'{r:.2f}' for r in ratios)}); medians A "
        f"{statistics.median(p['A'] for p in pairs):.0f}, B "
        f"{statistics.median(p['B'] for p in pairs):.0f}"
    )
    return 0


def alternate(
    servers: Mapping[str, ServerProcess],
    payloads: Payloads,
    rounds: int,
    window: float,
    concurrency: int,
    settle: float = 0.0,
) -> list[dict[str, float]]:
    """Single-row req/s of each server in ``rounds`` rounds of one ``window`` each, the
    servers' order reversed every other round (one second of warm-up before each window,
    after ``settle`` seconds of rest for what the previous one left to do in the background).
    """
    names = list(servers)
    pairs: list[dict[str, float]] = []
    for index in range(rounds):
        order = names if index % 2 == 0 else names[::-1]
        pair: dict[str, float] = {}
        for name in order:
            time.sleep(settle)
            pair[name] = _throughput(servers[name], payloads, window, concurrency)
        pairs.append(pair)
        log(f"round {index + 1}: " + ", ".join(f"{name} {pair[name]:.0f} req/s" for name in names))
    return pairs


def _throughput(
    server: ServerProcess, payloads: Payloads, window: float, concurrency: int
) -> float:
    result = run_load("raw", server.port, payloads, concurrency, 1.0, window, server.pgid, True)
    if result.errors:
        raise SystemExit(f"{server.label} answered {result.errors} errors: {result.error_sample}")
    return result.req_per_s


def _variable(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise SystemExit(f"--b takes NAME=VALUE, not {text!r}")
    return name, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.serving.ab", description=__doc__)
    parser.add_argument("--model", choices=sorted(MODEL_TITLES), default="lr")
    parser.add_argument(
        "--protocol",
        choices=("predict", "v2"),
        default="predict",
        help="single rows to our /predict (default) or as v2 infer, one FP64 tensor per column",
    )
    parser.add_argument("--rounds", type=int, default=6, help="A/B pairs (6)")
    parser.add_argument("--window", type=float, default=5.0, help="seconds per window (5)")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop workers (32)")
    parser.add_argument(
        "--b", action="append", default=[], metavar="NAME=VALUE", help="B's extra environment"
    )
    parser.add_argument("--b-log", choices=("on", "off"), default="on", help="B's prediction log")
    return parser


if __name__ == "__main__":
    sys.exit(main())
