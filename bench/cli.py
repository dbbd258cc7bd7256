"""CLI start-up benchmark: `python -m pipeline --help` against importing the heavy libraries.

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/cli.py              # 7 rounds: --help and every command's --help
    .venv/bin/python bench/cli.py --rounds 15 --commands main,score

Each measurement is a fresh interpreter (a subprocess), wall time from start to exit. The
baseline, `python -c "import mlflow, sklearn, pandas"`, is what a command that imports its
libraries eagerly pays before it can answer; it is timed in the same run, alternating with
the commands (each round: the baseline, then `--help`, then every command's `--help`), so a
busy moment of the shared machine hits both sides. Medians are printed with their ratio.
Issue 10's target: `python -m pipeline --help` (and, here, every command's) at most 0.3 x the
baseline; the exit status is 1 when one is missed.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pipeline.cli import _parser  # noqa: E402  (argparse only: no heavy import)

BASELINE = ("-c", "import mlflow, sklearn, pandas")
TARGET_RATIO = 0.3


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    commands = args.commands.split(",") if args.commands else _command_names()
    cases: dict[str, tuple[str, ...]] = {"python -m pipeline --help": ("-m", "pipeline", "--help")}
    cases |= {
        f"python -m pipeline {name} --help": ("-m", "pipeline", name, "--help") for name in commands
    }
    baseline = "python -c 'import mlflow, sklearn, pandas'"
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cores, load {_load()}")
    print(
        f"{args.rounds} rounds of: baseline, --help, each command's --help (fresh interpreters)\n"
    )
    times: dict[str, list[float]] = {baseline: [], **{label: [] for label in cases}}
    for _ in range(args.rounds):
        times[baseline].append(_run(BASELINE))
        for label, command in cases.items():
            times[label].append(_run(command))
    reference = statistics.median(times[baseline])
    width = max(len(label) for label in times)
    print(f"{'':<{width}}  {'median s':>8}  {'x baseline':>10}")
    for label, runs in times.items():
        median = statistics.median(runs)
        print(f"{label:<{width}}  {median:>8.3f}  {median / reference:>10.2f}")
    ratios = {label: statistics.median(times[label]) / reference for label in cases}
    help_ratio = ratios["python -m pipeline --help"]
    slowest = max(ratios, key=ratios.__getitem__)
    print(
        f"\n--help: {help_ratio:.2f} x baseline (target <= {TARGET_RATIO}); "
        f"slowest: {slowest} {ratios[slowest]:.2f} x; load {_load()}"
    )
    return 0 if max(ratios.values()) <= TARGET_RATIO else 1


def _run(arguments: Sequence[str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, *arguments],
        cwd=REPO_ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    return time.perf_counter() - start


def _command_names() -> list[str]:
    # argparse has no public way to list subcommands; its subparsers action holds them.
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    raise SystemExit("python -m pipeline declares no commands")


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7, help="runs per side and command")
    parser.add_argument("--commands", default="", help="comma-separated; default: all")
    return parser


if __name__ == "__main__":
    sys.exit(main())
