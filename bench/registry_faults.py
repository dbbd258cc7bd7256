"""Registry crash benchmark: promote, rollback and gate processes killed at random moments.

Run from the repository root with the project's virtualenv:

    .venv/bin/python bench/registry_faults.py                  # 100 kills on SQLite
    .venv/bin/python bench/registry_faults.py --kills 20 --seed 3
    .venv/bin/python bench/registry_faults.py --postgres       # behind a PostgreSQL-backed server

Each round picks an operation (a hand promote of some other version, a rollback when the history
allows one, or a gate of the good candidate, which the weak champions lose to), starts the real
`python -m pipeline <op>` process, waits until it holds the Production lock and sends it SIGKILL
after a random delay over 0-1.2x that operation's measured lock-to-exit time (so the kills
land anywhere in its registry writes, and some after it finished), and then runs the *next
command* in this process: alternately `doctor --repair` and a hand promote. It counts the
registry states that break the invariant right after the kill and, the figure that matters,
after the next command: exactly one version in Production, the
`champion` alias on it, the history's last event pointing to it, no transaction intent and no
lock left, no `gate.decision=promoted` on a version that never held Production, and no history
event written twice. `violations` checks that with plain MLflow client calls, independently of
the code under test. The exit status is 1 when any registry was left inconsistent.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import yaml  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

NAME = "faults"
OPERATIONS = ("promote", "rollback", "gate")
WEAK = {"class_path": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.0005}}


def violations(client: MlflowClient, name: str) -> list[str]:
    """What breaks the Production invariant of `name`, read with plain MLflow calls."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        versions = client.search_model_versions(f"name = '{name}'")
        stages = {str(v.version): v.current_stage for v in versions}
    model = client.get_registered_model(name)
    events = [
        json.loads(value)
        for key, value in sorted(
            ((k, v) for k, v in model.tags.items() if k.startswith("history.")),
            key=lambda item: int(item[0].split(".", 1)[1]),
        )
    ]
    found = []
    in_production = sorted(v for v, stage in stages.items() if stage == "Production")
    if len(in_production) != 1:
        found.append(f"{len(in_production)} versions in Production: {in_production}")
    champion = (model.aliases or {}).get("champion")
    if in_production and str(champion) != in_production[-1]:
        found.append(f"champion on {champion}, Production {in_production}")
    # Staging and Archived events (the challenger's) say nothing about Production.
    production = [e for e in events if e.get("stage", "Production") == "Production"]
    if in_production and (not production or production[-1]["to_version"] != in_production[-1]):
        last = production[-1]["to_version"] if production else None
        found.append(f"last history event to {last}, Production {in_production}")
    txns = [event.get("txn") for event in events if event.get("txn")]
    if len(txns) != len(set(txns)):
        found.append("a transaction's history event was written twice")
    if "txn.intent" in model.tags:
        found.append("a transaction intent is left")
    if client.search_registered_models(f"name = '{name}.lock'"):
        found.append("the Production lock is left")
    reigned = {event["to_version"] for event in events} | set(in_production)
    found += [
        f"version {v.version} says gate.decision=promoted but never held Production"
        for v in versions
        if v.tags.get("gate.decision") == "promoted" and str(v.version) not in reigned
    ]
    return found


@dataclass
class Kill:
    operation: list[str]
    delay: float
    killed: bool
    """False when the process had finished before the kill."""
    broken_after_kill: list[str]
    next_command: list[str]
    next_seconds: float
    broken_after_next: list[str]


@dataclass
class Store:
    """A registry prepared for the benchmark: versions 1, 3, 4 weak, 2 good, 1 in Production."""

    uri: str
    workdir: Path
    weak_config: Path
    good_config: Path
    name: str = NAME
    windows: dict[str, float] = field(default_factory=dict)
    """Seconds from the lock's appearance to the exit of an unkilled run, per operation."""
    observed: dict[str, list[float]] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(
            MLFLOW_TRACKING_URI=self.uri,
            MLFLOW_REGISTRY_URI=self.uri,
            MLFLOW_DISABLE_TELEMETRY="true",
            MPLBACKEND="Agg",
            PYTHONPATH=str(REPO_ROOT),
            **extra,
        )
        return env

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)


def write_configs(workdir: Path, name: str = NAME) -> tuple[Path, Path]:
    """Two small iris configs with one registered model: a weak estimator and a good one."""
    base: dict[str, Any] = {
        "experiment": name,
        "registered_model": name,
        "task": "classification",
        "data": {"dataset": "iris", "target": "species"},
        "estimator": {
            "class_path": "sklearn.linear_model.LogisticRegression",
            "params": {"max_iter": 500},
        },
        "split": {"test_size": 0.3, "seed": 42, "stratify": True, "cv_folds": 2},
        "gate": {"metric": "test_f1_macro", "threshold": None, "min_improvement": 0.0},
    }
    weak, good = workdir / "weak.yaml", workdir / "good.yaml"
    weak.write_text(yaml.safe_dump({**base, "estimator": WEAK}, sort_keys=False))
    good.write_text(yaml.safe_dump(base, sort_keys=False))
    return weak, good


def prepare(uri: str, workdir: Path) -> Store:
    """Train the weak champion (v1) and the good candidate (v2) with the real CLI; copy v1 twice."""
    weak, good = write_configs(workdir)
    store = Store(uri=uri, workdir=workdir, weak_config=weak, good_config=good)
    _pipeline(store, "main", "--config", str(weak))
    out = _pipeline(store, "train", "--config", str(good))
    run_id = out.split("run_id=")[1].split()[0]
    _pipeline(store, "evaluate", "--config", str(good), "--run-id", run_id)
    _pipeline(store, "register", "--config", str(good), "--run-id", run_id)
    client = store.client()
    first = client.get_model_version(NAME, "1")
    for _ in range(2):
        client.create_model_version(NAME, f"models:/{NAME}/1", run_id=first.run_id)
    return store


def _pipeline(store: Store, *argv: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *argv],
        cwd=store.workdir,
        env=store.env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"pipeline {argv[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done.stdout


def choose(store: Store, rng: random.Random, operations: Sequence[str]) -> list[str]:
    """A command that changes Production in the registry's current state."""
    from pipeline.registry import commands, production

    client = store.client()
    current = production.production_version(client, store.name)
    now = str(current.version) if current else None
    versions = [str(v.version) for v in client.search_model_versions(f"name = '{store.name}'")]
    wanted = rng.choice(list(operations))
    stack = commands._production_stack(production.history(client, store.name))
    if wanted == "rollback" and len(stack) >= 2 and stack[-1] == now:
        return ["rollback", "--name", store.name, "--reason", "bench"]
    if wanted == "gate":
        candidate = "2" if now != "2" else rng.choice([v for v in versions if v != now])
        return ["gate", "--config", str(store.good_config), "--version", candidate]
    target = rng.choice([v for v in versions if v != now])
    return ["promote", "--name", store.name, "--version", target, "--reason", "bench"]


def calibrate(
    store: Store, operations: Sequence[str], rng: random.Random, runs: int = 3
) -> dict[str, dict[str, float]]:
    """Unkilled runs of each operation: how long the process takes, how long it holds the
    Production lock (the scope item 3 of issue 11 is about), and lock-to-exit, around which
    the kills are drawn. Medians of `runs` runs, per operation."""
    figures = {}
    for operation in operations:
        total, held, windows = [], [], []
        for _ in range(runs):
            command = choose(store, rng, [operation])
            started = time.perf_counter()
            process = _start(store, command)
            seen = _wait_for_lock(store, process)
            released = _wait_for_unlock(store, process) if seen is not None else None
            process.wait(timeout=600)
            ended = time.perf_counter()
            total.append(ended - started)
            if seen is not None and released is not None:
                held.append(released - seen)
                windows.append(max(ended - seen, 0.05))
        if windows:
            store.windows[operation] = statistics.median(windows)
        figures[operation] = {
            "process s": round(statistics.median(total), 2),
            "lock held s": round(statistics.median(held), 3) if held else float("nan"),
        }
    return figures


def _wait_for_unlock(store: Store, process: subprocess.Popen[bytes]) -> float:
    """When the Production lock disappeared again (polled every 10 ms)."""
    client = store.client()
    lock = f"name = '{store.name}.lock'"
    while client.search_registered_models(lock) and process.poll() is None:
        time.sleep(0.01)
    return time.perf_counter()


def _start(store: Store, command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *command],
        cwd=store.workdir,
        env=store.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _wait_for_lock(store: Store, process: subprocess.Popen[bytes]) -> float | None:
    """When the process took the Production lock (perf_counter), None if it exited first."""
    client = store.client()
    lock = f"name = '{store.name}.lock'"
    while process.poll() is None:
        if client.search_registered_models(lock):
            return time.perf_counter()
        time.sleep(0.01)
    return None


def kill_at_random(store: Store, command: list[str], rng: random.Random) -> tuple[float, bool]:
    """Run `command`; once it holds the lock, SIGKILL it after a random delay.

    The delay is drawn over 0-1.2x the operation's measured lock window, so a kill lands
    anywhere from just after the lock was taken to after the process would have exited.
    Returns (delay, whether it was still running when killed).
    """
    process = _start(store, command)
    seen = _wait_for_lock(store, process)
    if seen is None:
        return 0.0, False
    operation = command[0]
    delay = rng.uniform(0.0, 1.2 * store.windows.get(operation, 0.5))
    try:
        process.wait(timeout=delay)
        # It finished first: the window was too long (the machine got faster); learn from it.
        store.observed.setdefault(operation, []).append(time.perf_counter() - seen)
        store.windows[operation] = statistics.median(store.observed[operation])
        return delay, False
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
        return delay, True


def next_command(store: Store, round_number: int, rng: random.Random) -> list[str]:
    if round_number % 2 == 0:
        return ["doctor", "--name", store.name, "--repair"]
    return choose(store, rng, ["promote"])


def run_kills(
    store: Store,
    kills: int,
    seed: int,
    operations: Sequence[str] = OPERATIONS,
    report: Callable[[int, Kill], None] | None = None,
) -> list[Kill]:
    """Rounds of: random operation, killed at a random moment, then the next command, until
    `kills` processes were killed mid-way (a process that finished first does not count).

    The next command runs in this process through the CLI's `main` (MLflow's URIs taken from
    the store), as a person's next command would, and the invariant is checked after it.
    """
    from pipeline.cli import main as pipeline_main

    rng = random.Random(seed)
    results: list[Kill] = []
    with _store_environment(store):
        round_number = 0
        while sum(r.killed for r in results) < kills and round_number < 3 * kills:
            command = choose(store, rng, operations)
            delay, killed = kill_at_random(store, command, rng)
            broken = violations(store.client(), store.name)
            follow = next_command(store, round_number, rng)
            started = time.perf_counter()
            with contextlib.redirect_stdout(io.StringIO()):
                pipeline_main(follow)
            seconds = time.perf_counter() - started
            kill = Kill(
                command, delay, killed, broken, follow, seconds,
                violations(store.client(), store.name),
            )  # fmt: skip
            results.append(kill)
            if report is not None:
                report(round_number, kill)
            round_number += 1
    return results


@contextmanager
def _store_environment(store: Store) -> Any:
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    os.environ["MLFLOW_TRACKING_URI"] = os.environ["MLFLOW_REGISTRY_URI"] = store.uri
    tracking_utils._tracking_uri = registry_utils._registry_uri = None
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        tracking_utils._tracking_uri = registry_utils._registry_uri = None


def summarise(label: str, results: list[Kill]) -> dict[str, Any]:
    killed = [r for r in results if r.killed]
    by_operation = {
        op: sum(1 for r in killed if r.operation[0] == op)
        for op in sorted({r.operation[0] for r in results})
    }
    follow = [r.next_seconds for r in results]
    return {
        "store": label,
        "rounds": len(results),
        "killed mid-way": len(killed),
        "killed by operation": by_operation,
        "finished before the kill": len(results) - len(killed),
        "inconsistent right after the kill": sum(1 for r in results if r.broken_after_kill),
        "inconsistent after the next command": sum(1 for r in results if r.broken_after_next),
        "next command median s": round(statistics.median(follow), 2) if follow else None,
        "next command max s": round(max(follow), 2) if follow else None,
    }


def _print_round(number: int, kill: Kill) -> None:
    state = "killed" if kill.killed else "finished"
    after = "; ".join(kill.broken_after_kill) or "consistent"
    bad = "; ".join(kill.broken_after_next) or "consistent"
    print(
        f"{number + 1:>4} {kill.operation[0]:<8} {state:<8} after {kill.delay:5.2f}s | after the "
        f"kill: {after} | {kill.next_command[0]} ({kill.next_seconds:.1f}s): {bad}",
        flush=True,
    )


def bench(uri: str, label: str, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    print(f"== {label}: preparing the registry (training the weak champion and a candidate)")
    store = prepare(uri, workdir)
    rng = random.Random(args.seed)
    figures = calibrate(store, OPERATIONS, rng)
    for operation, figure in figures.items():
        print(
            f"unkilled {operation:<8}: process {figure['process s']:.2f} s, Production lock held "
            f"{figure['lock held s']:.3f} s (medians of 3; lock polled every 10 ms)"
        )
    results = run_kills(store, args.kills, args.seed, report=_print_round)
    summary = {**summarise(label, results), "unkilled": figures}
    print(json.dumps(summary, indent=2))
    return {"summary": summary, "rounds": [asdict(r) for r in results]}


@contextmanager
def _postgres_server(workdir: Path) -> Any:
    """A fresh PostgreSQL database behind `deploy/tracking-server.sh`, torn down afterwards."""
    import socket
    import urllib.request
    import uuid

    import psycopg2

    admin = {"host": "127.0.0.1", "port": 5432, "user": "postgres", "dbname": "postgres"}
    database = f"bench_faults_{uuid.uuid4().hex[:8]}"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(
        MLFLOW_BACKEND_STORE_URI=f"postgresql://postgres@127.0.0.1:5432/{database}",
        MLFLOW_ARTIFACTS_DESTINATION=str(workdir / "artifacts"),
        MLFLOW_HOST="127.0.0.1",
        MLFLOW_PORT=str(port),
        MLFLOW_WORKERS="2",
        PYTHON=sys.executable,
        MLFLOW=str(Path(sys.executable).parent / "mlflow"),
    )
    log = (workdir / "server.log").open("wb")
    server = subprocess.Popen(
        ["bash", str(REPO_ROOT / "deploy" / "tracking-server.sh")],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"no tracking server; see {workdir}/server.log") from None
                time.sleep(0.5)
        yield uri
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        log.close()
        connection = psycopg2.connect(**admin)
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        connection.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kills", type=int, default=100, help="processes killed mid-way per store (default 100)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--postgres", action="store_true", help="also behind a PostgreSQL server")
    parser.add_argument("--sqlite", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--json", type=Path, help="also write every round as JSON")
    args = parser.parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ["MLOPS_BENCH"] = "registry_faults"
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="registry-faults-") as tmp:
        if args.sqlite:
            workdir = Path(tmp) / "sqlite"
            workdir.mkdir()
            uri = f"sqlite:///{workdir / 'mlflow.db'}"
            outcomes.append(bench(uri, "sqlite", workdir, args))
        if args.postgres:
            workdir = Path(tmp) / "postgres"
            workdir.mkdir()
            with _postgres_server(workdir) as uri:
                outcomes.append(bench(uri, "postgres", workdir, args))
    if args.json:
        args.json.write_text(json.dumps(outcomes, indent=2))
    bad = sum(o["summary"]["inconsistent after the next command"] for o in outcomes)
    print(f"registries left inconsistent after the next command: {bad}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
