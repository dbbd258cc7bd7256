"""Training at scale: `python -m pipeline main` against a plain scikit-learn script (issue 16).

Run from the repository root with the project's virtualenv (`make bench-pipeline`):

    .venv/bin/python -m bench.pipeline_scale                      # 100k, 1M and 5M rows
    .venv/bin/python -m bench.pipeline_scale --rows 100000        # a quick check (~2 min)
    .venv/bin/python -m bench.pipeline_scale --rows 1000000 --bootstrap-rows 0

What it does, for each size in `--rows`:

1. Writes a CSV shaped like `configs/data/customers.csv`: three numeric columns (two with
   gaps), three categorical ones (one with gaps) and a binary target, from a fixed seed.
2. Runs, each in a fresh interpreter, one after the other on the same file:
   - the plain scikit-learn script (`--child plain`): read the CSV (categoricals as
     `category`), stratified split, 5-fold CV, fit, predict, ROC AUC, with the `customers`
     config's HistGradientBoosting parameters and split;
   - `python -m pipeline main` on a copy of `configs/customers.yaml` pointing at the file, in a
     throwaway MLflow store (created before the clock starts: first use of a store is not a
     cost of scale). No champion exists, so this is the first model;
   - `main` again with `learning_rate` 0.06 (a new config, so no cache hit): a challenger
     judged against the champion, with the gate's paired bootstrap.
   Wall time is measured around each child (interpreter start and imports included, as a user
   pays them); peak RSS is the child's own high-water mark (VmHWM, read by the child as it
   exits: `ru_maxrss` would inherit this parent's peak across fork).
3. Prints time and peak-memory ratios against the plain script, with the issue's targets at
   1M rows and more: <= 1.3x time without a champion, <= 1.5x with one, <= 1.3x peak memory.
   The exit status is 1 when one is missed. Under each `main`, the seconds between its log
   lines: start to data validated (interpreter start, imports, reading), then split and
   training, evaluate, register, and gate with the model card, and the exit.

`--bootstrap-rows N` (default 1,000,000; 0 skips it) also times the gate's paired bootstrap of
ROC AUC, 1,000 resamples of N held-out rows, against the previous implementation (one sklearn
`roc_auc_score` call per resample and model), the latter extrapolated from a few resamples.

The machine is shared; the load average at start and end is printed with the figures, which
are only comparable between runs on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

NUMERIC = ["tenure_months", "monthly_charges", "support_calls"]
CATEGORICAL = ["contract", "payment_method", "senior"]
TARGET = "churned"
TIME_TARGET = 1.3
TIME_TARGET_CHAMPION = 1.5
MEMORY_TARGET = 1.3
# Targets apply from this size up: below it, interpreter start-up and MLflow's fixed costs
# dominate both sides.
TARGET_FROM_ROWS = 1_000_000
_CHUNK_ROWS = 500_000


# The log line that ends each step of `main`, by logger and start of its message.
_STEP_ENDS = (
    ("start to data validated", "pipeline.steps.ingest", "Validated"),
    ("split + train", "pipeline.steps.train", "Trained"),
    ("evaluate", "pipeline.steps.evaluate", "Held-out metrics"),
    ("register", "pipeline.steps.register", "Registered"),
    ("gate + model card", "pipeline.reports.model_card", "Logged the model card"),
)
_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \w+ (\S+): (.*)$")


@dataclass(frozen=True)
class Measure:
    seconds: float
    peak_rss_gb: float
    steps: tuple[tuple[str, float], ...] = ()
    """Seconds of each step of `main`, from its log lines."""


def main(argv: Sequence[str] | None = None) -> int:
    args = _arguments().parse_args(argv)
    if args.child:
        return _child(args.child, args.report, args.rest)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    print(f"machine: {os.cpu_count()} cores, load average {_load()} (shared with others)")
    missed = False
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for rows in args.rows:
            missed |= _bench_size(rows, Path(tmp) / f"rows_{rows}")
    if args.bootstrap_rows:
        _bench_bootstrap(args.bootstrap_rows)
    print(f"\nload average at the end: {_load()}")
    return 1 if missed else 0


def _bench_size(rows: int, workdir: Path) -> bool:
    """Runs the three sides on `rows` rows, prints them; True when a target is missed."""
    workdir.mkdir(parents=True)
    data = workdir / "customers.csv"
    started = time.perf_counter()
    _write_data(data, rows, seed=0)
    size_mb = data.stat().st_size / 1e6
    print(f"\n{rows:,} rows: {size_mb:.0f} MB CSV written in {time.perf_counter() - started:.0f} s")
    env = _store(workdir)
    plain = _measure("plain", [str(data)], workdir, env)
    first = _measure(
        "pipeline", ["main", "--config", str(_config(workdir, data, 0.05))], workdir, env
    )
    challenger = _measure(
        "pipeline", ["main", "--config", str(_config(workdir, data, 0.06))], workdir, env
    )
    print(f"{'':<34}{'seconds':>9}{'x time':>8}{'peak GB':>9}{'x memory':>10}")
    judged = rows >= TARGET_FROM_ROWS
    missed = False
    for label, measure, time_target in (
        ("plain scikit-learn", plain, None),
        ("pipeline main, first model", first, TIME_TARGET),
        ("pipeline main, with a champion", challenger, TIME_TARGET_CHAMPION),
    ):
        time_ratio = measure.seconds / plain.seconds
        memory_ratio = measure.peak_rss_gb / plain.peak_rss_gb
        verdict = ""
        if time_target is not None and judged:
            ok = time_ratio <= time_target and memory_ratio <= MEMORY_TARGET
            missed |= not ok
            verdict = (
                f"  {'met' if ok else 'MISSED'} (<= {time_target}x time, <= {MEMORY_TARGET}x"
                " memory)"
            )
        print(
            f"{label:<34}{measure.seconds:>9.1f}{time_ratio:>8.2f}{measure.peak_rss_gb:>9.2f}"
            f"{memory_ratio:>10.2f}{verdict}"
        )
        if measure.steps:
            print("    " + ", ".join(f"{step} {seconds:.1f}" for step, seconds in measure.steps))
    return missed


def _write_data(path: Path, rows: int, seed: int) -> None:
    """A customers-like CSV, written in chunks so this process stays small."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    for start in range(0, rows, _CHUNK_ROWS):
        n = min(_CHUNK_ROWS, rows - start)
        tenure = rng.integers(1, 73, n)
        charges = np.round(rng.uniform(18.0, 120.0, n), 2)
        calls = rng.poisson(1.5, n).clip(0, 6).astype(float)
        contract = rng.choice(["month-to-month", "one-year", "two-year"], n, p=[0.48, 0.31, 0.21])
        payment = rng.choice(["bank-transfer", "mailed-check", "card", "electronic-check"], n)
        senior = rng.choice(["no", "yes"], n, p=[0.82, 0.18])
        logit = (
            -0.8
            + 0.035 * (36 - tenure)
            + 0.012 * (charges - 70)
            + 0.35 * (calls - 1.5)
            + 1.1 * (contract == "month-to-month")
            + 0.4 * (payment == "electronic-check")
            + 0.3 * (senior == "yes")
        )
        churned = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
        frame = pd.DataFrame(
            {
                "tenure_months": tenure,
                "monthly_charges": np.where(rng.random(n) < 0.06, np.nan, charges),
                "support_calls": np.where(rng.random(n) < 0.05, np.nan, calls),
                "contract": contract,
                "payment_method": pd.Series(payment).mask(rng.random(n) < 0.075),
                "senior": senior,
                TARGET: churned,
            }
        )
        frame.to_csv(path, mode="a", header=start == 0, index=False)


def _config(workdir: Path, data: Path, learning_rate: float) -> Path:
    import yaml

    config = yaml.safe_load((REPO_ROOT / "configs" / "customers.yaml").read_text())
    config.update(experiment="bench-scale", registered_model="bench-scale")
    config["data"]["path"] = str(data)
    config["estimator"]["params"]["learning_rate"] = learning_rate
    path = workdir / f"customers-{learning_rate}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _store(workdir: Path) -> dict[str, str]:
    """A throwaway SQLite store, created (migrated) now so no timed run pays for it."""
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}
    script = "from mlflow.tracking import MlflowClient; MlflowClient().search_experiments()"
    subprocess.run(
        [sys.executable, "-c", script],
        check=True,
        cwd=workdir,
        env=env,
        timeout=600,
        capture_output=True,
    )
    return env


def _measure(kind: str, rest: list[str], workdir: Path, env: dict[str, str]) -> Measure:
    report = workdir / "report.json"
    command = [sys.executable, "-m", "bench.pipeline_scale", "--child", kind]
    command += ["--report", str(report), "--", *rest]
    log = workdir / "children.log"
    offset = log.stat().st_size if log.exists() else 0
    started_at = time.time()
    started = time.perf_counter()
    with log.open("a") as output:
        completed = subprocess.run(
            command,
            cwd=workdir,
            env={**env, "PYTHONPATH": str(REPO_ROOT)},
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
        )
    seconds = time.perf_counter() - started
    if completed.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise SystemExit(f"{' '.join(command)} failed ({completed.returncode}):\n{tail}")
    peak_mb = json.loads(report.read_text())["peak_rss_mb"]
    with log.open() as output:
        output.seek(offset)
        steps = _steps(output.read(), started_at, started_at + seconds)
    return Measure(seconds=seconds, peak_rss_gb=peak_mb / 1024, steps=steps)


def _steps(log: str, started_at: float, ended_at: float) -> tuple[tuple[str, float], ...]:
    """Seconds between the log lines that end the steps of `main` (none for the plain side).

    The log's timestamps are local time to the millisecond, as `started_at` and `ended_at`
    (`time.time()`) are once converted."""
    ends: dict[str, float] = {}
    for line in log.splitlines():
        match = _LOG_LINE.match(line)
        if match is None:
            continue
        stamp, name, message = match.groups()
        for step, logger_name, start in _STEP_ENDS:
            if name == logger_name and message.startswith(start) and step not in ends:
                at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
                ends[step] = at
    if len(ends) < len(_STEP_ENDS):
        return ()
    steps, previous = [], started_at
    for step, _, _ in _STEP_ENDS:
        steps.append((step, ends[step] - previous))
        previous = ends[step]
    steps.append(("exit", ended_at - previous))
    return tuple(steps)


def _child(kind: str, report: str, rest: list[str]) -> int:
    """One measured side, in this fresh interpreter; writes its peak RSS to `report` at exit."""
    import atexit

    atexit.register(lambda: Path(report).write_text(json.dumps({"peak_rss_mb": _peak_rss_mb()})))
    if kind == "plain":
        _plain(Path(rest[0]))
        return 0
    from pipeline.cli import run

    run(rest)  # `python -m pipeline` itself: it ends the process, after the atexit handlers


def _plain(path: Path) -> float:
    """What a data scientist writes by hand for the same model: the baseline side."""
    import pandas as pd
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_validate, train_test_split

    frame = pd.read_csv(path, dtype={column: "category" for column in CATEGORICAL})
    X, y = frame[NUMERIC + CATEGORICAL], frame[TARGET]
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=42, stratify=y
    )
    model = HistGradientBoostingClassifier(
        max_iter=100,
        learning_rate=0.05,
        max_depth=3,
        categorical_features="from_dtype",
        random_state=42,
    )
    cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=42)
    cross_validate(model, X_train, y_train, cv=cv, scoring="roc_auc")
    model.fit(X_train, y_train)
    auc = float(roc_auc_score(y_test == "yes", model.predict_proba(X_test)[:, 1]))
    print(f"plain scikit-learn: held-out ROC AUC {auc:.4f}")
    return auc


def _bench_bootstrap(rows: int, resamples: int = 1000, reference_resamples: int = 3) -> None:
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from pipeline.config import BootstrapConfig
    from pipeline.steps import bootstrap

    rng = np.random.default_rng(0)
    y = rng.choice(np.array(["no", "yes"], dtype=object), rows)

    def model(skill: float) -> bootstrap.Predictions:
        # Four decimals: scores tie as a tree ensemble's do.
        score = np.round(np.clip((y == "yes") * skill + rng.random(rows) * (1 - skill), 0, 1), 4)
        predicted = np.where(score > 0.5, "yes", "no")
        return bootstrap.Predictions(predicted, np.column_stack([1 - score, score]), ("no", "yes"))

    challenger, champion = model(0.5), model(0.4)
    started = time.perf_counter()
    interval = bootstrap.paired_gain_interval(
        "test_roc_auc",
        y,
        challenger=challenger,
        champion=champion,
        settings=BootstrapConfig(resamples=resamples),
        lower_is_better=False,
    )
    ours = time.perf_counter() - started
    started = time.perf_counter()
    positive = (y == "yes").astype(int)
    for counts in next(bootstrap._resample_counts(rng, rows, reference_resamples)):
        for predictions in (challenger, champion):
            assert predictions.proba is not None
            roc_auc_score(positive, predictions.proba[:, 1], sample_weight=counts)
    before = (time.perf_counter() - started) / reference_resamples * resamples
    print(
        f"\nbootstrap, ROC AUC, {resamples:,} paired resamples of {rows:,} rows: {ours:.1f} s "
        f"(one sklearn call per resample and model: ~{before:.0f} s, extrapolated from "
        f"{reference_resamples}; {before / ours:.0f}x)\n  {interval.describe()}"
    )


def _peak_rss_mb() -> float:
    """Peak resident memory of this process's own address space (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise SystemExit("no VmHWM in /proc/self/status: this benchmark needs Linux")


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def _sizes(text: str) -> list[int]:
    return [int(float(part)) for part in text.split(",") if part.strip()]


def _arguments() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows",
        type=_sizes,
        default=[100_000, 1_000_000, 5_000_000],
        help="comma-separated data set sizes (default 100000,1000000,5000000; 1e6 works)",
    )
    parser.add_argument(
        "--bootstrap-rows",
        type=int,
        default=1_000_000,
        help="held-out rows for the bootstrap timing; 0 skips it",
    )
    parser.add_argument("--child", choices=["plain", "pipeline"], help=argparse.SUPPRESS)
    parser.add_argument("--report", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
