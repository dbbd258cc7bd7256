"""`python -m pipeline <step>`: the command surface that `mlflow run`, make and the tests share."""

# Each command imports the modules it needs when it runs: MLflow, scikit-learn and pandas take
# seconds to import, and `--help` or a mistyped argument should answer at once.
from __future__ import annotations

import argparse
import gc
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from pipeline.errors import ConfigError, PipelineError

if TYPE_CHECKING:
    from pipeline.config import PipelineConfig

logger = logging.getLogger("pipeline")

DEFAULT_CONFIG = "configs/iris.yaml"


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """`python -m pipeline`: `main` in a process of its own, which then exits with its status."""
    status = main(argv, own_process=True)
    # Everything is committed by now: runs, registry writes and artifacts are written before
    # `main` returns, and atexit handlers still run. What remains is the interpreter's teardown,
    # which runs the cycle collector over every object MLflow and scikit-learn created (some
    # 450,000 after a training run, about 1.2 s) only to free memory the OS takes back anyway.
    # Frozen objects are outside the collector's sight.
    gc.freeze()
    sys.exit(status)


def main(argv: Sequence[str] | None = None, *, own_process: bool = False) -> int:
    """Runs one command; `own_process`: this process ends after it (`run`)."""
    args = _parser().parse_args(argv)
    args.own_process = own_process
    _configure_logging(args.verbose)
    # `mlflow run` names its own run in MLFLOW_RUN_ID, and MLflow resumes that run in every
    # `start_run` of this process whatever experiment it targets: a command decides itself
    # whether to log into it (`_adopt`), so the variable must not leak into any step.
    args.launcher_run_id = os.environ.pop("MLFLOW_RUN_ID", None) or None
    _say_what_it_waits_on(args.step)
    from mlflow.exceptions import MlflowException

    from pipeline.tracking import configure_tracking

    # Plots are written to files; never try to open a window.
    os.environ.setdefault("MPLBACKEND", "Agg")
    # MLflow's own download bars would interleave with our log lines on every artifact read.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        configure_tracking()
        return int(args.handler(args))
    except PipelineError as exc:
        logger.error("%s", exc)
        return exc.exit_code
    except MlflowException as exc:
        # MLflow quotes the URL it called, credentials and all.
        message = re.sub(r"(\w+://)[^/@\s]+@", r"\1", str(exc.message))
        logger.error("MLflow refused the operation: %s", message)
        return 1


def _say_what_it_waits_on(step: str) -> None:
    """One line before the seconds of importing MLflow, when the store is not a local file.

    A remote store answers every registry read over the network; a command that sits silent
    meanwhile looks hung, so say where it is talking to.
    """
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri and not uri.startswith(("sqlite:", "file:", "/", ".")):
        from pipeline.contracts import store_id  # the URI without credentials

        logger.info("%s: loading MLflow, then waiting on the store %s", step, store_id(uri))


def _imported(args: argparse.Namespace) -> None:
    """Called once a long command has imported what it needs. In a process of its own, those
    modules live until exit: frozen, the cycle collector stops walking their 450,000 objects
    again and again (about 0.7 s of a million-row training). Not in a caller's process (the
    tests): garbage present at a freeze is never collected."""
    if args.own_process:
        gc.freeze()


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.steps import ingest

    dataset = ingest.run(_config(args))
    print(
        f"OK: {dataset.source}: {dataset.rows} rows; numeric {list(dataset.numeric_features)}; "
        f"categorical {list(dataset.categorical_features)}; data hash {dataset.data_hash}"
    )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from pipeline.steps import ingest, train
    from pipeline.tracking import launcher_run_in, point_launcher_to

    _imported(args)
    config = _config(args)
    dataset = ingest.run(config)
    result = train.run(
        config, dataset, run_id=launcher_run_in(args.launcher_run_id, config.experiment)
    )
    point_launcher_to(args.launcher_run_id, result.run_id)
    print(f"run_id={result.run_id}\nmodel_uri={result.model_uri}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pipeline.steps import flow

    result = flow.evaluate_run(_config(args), args.run_id)
    print("\n".join(f"{name}={value:.6g}" for name, value in result.metrics.items()))
    return 0


def _cmd_register(args: argparse.Namespace) -> int:
    from pipeline.steps import flow

    result = flow.register_run(_config(args), args.run_id)
    print(f"registered {result.name} version {result.version}")
    return 0


def _cmd_gate(args: argparse.Namespace) -> int:
    from pipeline.steps import flow

    decision = flow.gate_version(_config(args), args.version)
    print(f"{decision.name} v{decision.version} {decision.decision}: {decision.reason}")
    return 0


def _cmd_main(args: argparse.Namespace) -> int:
    from pipeline.steps import flow
    from pipeline.tracking import launcher_run_in, point_launcher_to

    _imported(args)
    config = _config(args)
    result = flow.run_all(
        config, run_id=launcher_run_in(args.launcher_run_id, config.experiment), force=args.force
    )
    decision = result.decision
    if not result.cached_from:  # a cache hit leaves its own note on the launcher run
        point_launcher_to(args.launcher_run_id, result.run_id)
    if result.cached_from:
        print(
            f"cache hit: run {result.cached_from} has the same config, data and code; "
            "training and evaluation skipped (--force re-runs them)"
        )
    # A reused version's recorded decision is old news: report what the registry says now.
    gate_line = (
        f"not run again (cache hit): {result.registry_state}"
        if result.registry_state
        else f"{decision.decision}: {decision.reason}"
    )
    print(
        f"run_id={result.run_id}\n"
        f"registered {decision.name} version {decision.version}\n"
        f"gate: {gate_line}"
    )
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from pipeline.steps import reproduce
    from pipeline.tracking import point_launcher_to

    result = reproduce.run(args.name, args.version, launcher_run_id=args.launcher_run_id)
    point_launcher_to(args.launcher_run_id, result.run_id)
    print(
        f"reproduced {result.name} v{result.version} (run {result.original_run_id}) in run "
        f"{result.run_id}; data hash {result.data_hash[:12]} matches"
    )
    for change in result.code_changes:
        print(f"note: {change}")
    rows = [("metric", "recorded", "reproduced", "match")] + [
        (
            check.name,
            f"{check.recorded:.6g}",
            "-" if check.reproduced is None else f"{check.reproduced:.6g}",
            "yes" if check.matches else "NO",
        )
        for check in result.metrics
    ]
    _print_table(rows)
    if not result.matches:
        print("the reproduced held-out metrics differ from the recorded ones")
        return 1
    print("all held-out metrics match exactly")
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from pipeline.registry import commands

    event = commands.promote(
        args.name,
        args.version,
        args.reason,
        stage=args.stage,
        allow_schema_change=args.allow_schema_change == "true",
    )
    role = "" if args.stage == "Production" else " (the challenger)"
    print(
        f"{args.name}: {args.stage} is now version {event.to_version}{role} "
        f"(was {event.from_version or 'none'})"
    )
    return 0


def _cmd_rollback(args: argparse.Namespace) -> int:
    from pipeline.registry import commands

    event = commands.rollback(args.name, args.reason)
    print(f"{args.name}: rolled back to version {event.to_version} (was {event.from_version})")
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from pipeline.registry import commands, production

    events = production.history(MlflowClient(), args.name)
    if not events:
        print(f"{args.name}: Production and Staging have never changed")
        return 0
    _print_table(commands.history_rows(events))
    return 0


def _cmd_doctor(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from pipeline.registry import doctor

    report = doctor.run(MlflowClient(), args.name, repair=args.repair)
    print("\n".join(report.lines(repair=args.repair)))
    # Like monitor's: not an error, a state a scheduler can branch on (`doctor || page`).
    return 0 if report.consistent else NEEDS_ACTION_EXIT


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    """Left-aligned columns; the last column is free text and is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        padded = (cell.ljust(width) for cell, width in zip(row, widths, strict=False))
        print("  ".join([*padded, row[-1]]))


NEEDS_ACTION_EXIT = 10


def _cmd_monitor(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.monitoring import monitor
    from pipeline.tracking import launcher_run_in, point_launcher_to

    config = load_config(args.config)
    launcher_id = launcher_run_in(args.launcher_run_id, config.monitoring_experiment)
    result = monitor.run(
        config, version=args.version or None, since=args.since, until=args.until, run_id=launcher_id
    )
    if launcher_id is None:
        point_launcher_to(args.launcher_run_id, result.run_id)
    print(result.summary())
    # A distinct status, not an error: schedulers branch on it (`monitor || retrain`).
    return NEEDS_ACTION_EXIT if result.needs_action else 0


# live-gate's statuses: a scheduler branches on them (`live-gate; case $? in ...`).
LIVE_EXIT_HELP = (
    "exit 0: promoted to Production; 10: rejected (archived); 20: not enough evidence yet "
    "(nothing changed); 1-4: errors (1 pipeline/MLflow, 2 config, 3 log, 4 registry)"
)


def _cmd_live_compare(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.monitoring import live_compare
    from pipeline.tracking import launcher_run_in, point_launcher_to

    config = load_config(args.config)
    launcher_id = launcher_run_in(args.launcher_run_id, config.monitoring_experiment)
    found = live_compare.run(config, since=args.since, until=args.until, run_id=launcher_id)
    if launcher_id is None:
        point_launcher_to(args.launcher_run_id, found.run_id)
    print(
        f"live-compare {found.model_name}: challenger v{found.challenger.version} vs champion "
        f"v{found.champion.version}"
    )
    print("\n".join([*found.lines(), f"run_id={found.run_id}"]))
    return 0


def _cmd_live_gate(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.monitoring import live_gate
    from pipeline.tracking import launcher_run_in, point_launcher_to

    config = load_config(args.config)
    launcher_id = launcher_run_in(args.launcher_run_id, config.monitoring_experiment)
    result = live_gate.run(config, since=args.since, until=args.until, run_id=launcher_id)
    if launcher_id is None and result.comparison is not None:
        point_launcher_to(args.launcher_run_id, result.comparison.run_id)
    print("\n".join(result.lines()))
    return result.exit_code


def _cmd_replay(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.monitoring import replay

    settings = replay.ReplaySettings(
        url=args.url,
        rows=args.rows,
        concurrency=args.concurrency,
        api_key=os.environ.get("SERVING_API_KEY") or None,
    )
    result = replay.run(load_config(args.config), settings)
    print("\n".join(replay.describe(result)))
    return 0


def _cmd_feedback(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.monitoring import feedback

    result = feedback.run(load_config(args.config), args.file)
    print(f"{result.model_name}: {result.rows} labels written to {result.path}")
    return 0


def _cmd_retrain(args: argparse.Namespace) -> int:
    from pipeline.config import load_config
    from pipeline.monitoring import retrain
    from pipeline.tracking import point_launcher_to

    _imported(args)
    result = retrain.run(load_config(args.config), force=args.force, since=args.since)
    point_launcher_to(
        args.launcher_run_id, result.pipeline.run_id if result.pipeline else result.monitor_run_id
    )
    if result.pipeline is None:
        print(f"retrain: not retrained: {result.reason}")
        # Drift without labels still needs someone to act: say so in the status too.
        return 0 if result.status == "not_needed" else NEEDS_ACTION_EXIT
    decision = result.pipeline.decision
    print(
        f"retrain: {result.reason}; trained on the configured data plus "
        f"{result.labelled_rows} labelled production rows ({result.data_path})\n"
        f"run_id={result.pipeline.run_id}\n"
        f"registered {decision.name} version {decision.version}\n"
        f"gate: {decision.decision}: {decision.reason}"
    )
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from pipeline.scoring import score

    if not (args.model_uri or args.name):
        raise ConfigError("give --name (its Production version is used) or --model-uri")
    result = score.run(
        score.ScoreRequest(
            input_path=Path(args.input),
            output_path=Path(args.output),
            # An explicit URI wins over the name, which MLproject always passes.
            model_uri=args.model_uri or None,
            name=None if args.model_uri else args.name,
            engine=args.engine,
            chunk_rows=args.chunk_rows or score.DEFAULT_CHUNK_ROWS,
        )
    )
    version = f" v{result.model_version}" if result.model_version else ""
    print(
        f"scored {result.rows} rows with {result.model_uri}{version} ({result.engine}) in "
        f"{result.seconds:.1f} s -> {result.output_path}"
    )
    return 0


def _cmd_ui_url(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from pipeline.config import load_config
    from pipeline.tracking import runs_table_url

    config = load_config(args.config)
    experiment = MlflowClient().get_experiment_by_name(config.experiment)
    if experiment is None:
        raise PipelineError(
            f"experiment '{config.experiment}' does not exist yet; run the pipeline first"
        )
    print(runs_table_url(args.base_url, experiment.experiment_id))
    return 0


def _cmd_model_name(args: argparse.Namespace) -> int:
    from pipeline.config import load_config

    print(load_config(args.config).registered_model)
    return 0


def _cmd_experiment_name(args: argparse.Namespace) -> int:
    from pipeline.config import load_config

    print(load_config(args.config).experiment)
    return 0


def _config(args: argparse.Namespace) -> PipelineConfig:
    from pipeline.config import load_config

    config = load_config(args.config)
    return config.with_overrides(
        **{
            "split.test_size": getattr(args, "test_size", None),
            "split.seed": getattr(args, "seed", None),
            "split.cv_folds": getattr(args, "cv_folds", None),
        }
    )


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("mlflow", "alembic", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _optional(kind: type[int] | type[float]) -> Callable[[str], int | float | None]:
    def parse(text: str) -> int | float | None:
        if text.strip() == "":
            return None
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None

    parse.__name__ = kind.__name__
    return parse


def _moment(text: str) -> datetime | None:
    if text.strip() == "":
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected an ISO 8601 time such as 2026-11-26T08:00:00+00:00, got {text!r}"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _flag(text: str) -> bool:
    # MLproject passes every parameter as text, so `--force false` must mean no.
    value = text.strip().lower()
    if value in {"true", "1", "yes"}:
        return True
    if value in {"false", "0", "no", ""}:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    steps = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def step(
        name: str, handler: object, help_text: str, config: bool = True
    ) -> argparse.ArgumentParser:
        sub = steps.add_parser(name, help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        if config:
            sub.add_argument("--config", default=DEFAULT_CONFIG, help="YAML config path")
        return sub

    def window_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--since", type=_moment, default=None, help="ISO time, inclusive")
        sub.add_argument("--until", type=_moment, default=None, help="ISO time, exclusive")

    def overrides(sub: argparse.ArgumentParser) -> None:
        # Empty means "use the config": MLproject passes every declared parameter.
        sub.add_argument("--test-size", type=_optional(float), help="override split.test_size")
        sub.add_argument("--seed", type=_optional(int), help="override split.seed")
        sub.add_argument("--cv-folds", type=_optional(int), help="override split.cv_folds")

    step("validate", _cmd_validate, "load the data and check it against the config")
    overrides(step("train", _cmd_train, "fit the model and log a candidate run"))
    step("evaluate", _cmd_evaluate, "log held-out metrics and plots on a run").add_argument(
        "--run-id", required=True
    )
    step("register", _cmd_register, "register the model of an evaluated run").add_argument(
        "--run-id", required=True
    )
    step("gate", _cmd_gate, "promote a version if it beats the champion").add_argument(
        "--version", required=True
    )
    main_cmd = step("main", _cmd_main, "the whole chain: validate, train ... gate")
    overrides(main_cmd)
    main_cmd.add_argument(
        "--force",
        nargs="?",
        const=True,
        default=False,
        type=_flag,
        help="train even when a run with the same config, data and code exists",
    )
    promote_cmd = step("promote", _cmd_promote, "put a version in Production by hand", False)
    promote_cmd.add_argument("--name", required=True, help="registered model name")
    promote_cmd.add_argument("--version", required=True)
    promote_cmd.add_argument("--reason", help="why, for the promotion history")
    promote_cmd.add_argument(
        "--stage",
        choices=("Production", "Staging"),
        default="Production",
        help="Production (the champion, default) or Staging (the challenger live-gate judges)",
    )
    promote_cmd.add_argument(
        "--allow-schema-change",
        nargs="?",
        const="true",
        default="false",
        choices=("true", "false"),
        help="promote even if its input signature breaks requests Production accepts",
    )
    rollback_cmd = step("rollback", _cmd_rollback, "return to the previous Production", False)
    rollback_cmd.add_argument("--name", required=True, help="registered model name")
    rollback_cmd.add_argument("--reason", help="why, for the promotion history")
    step("history", _cmd_history, "list the changes of Production and Staging", False).add_argument(
        "--name", required=True, help="registered model name"
    )
    doctor_cmd = step(
        "doctor",
        _cmd_doctor,
        "check Production's stage, alias, history, lock and gate tags; exit 10 if inconsistent",
        False,
    )
    doctor_cmd.add_argument("--name", required=True, help="registered model name")
    doctor_cmd.add_argument(
        "--repair",
        nargs="?",
        const=True,
        default=False,
        type=_flag,
        help="finish or undo an interrupted change and repair the rest (takes the lock)",
    )
    reproduce_cmd = step(
        "reproduce", _cmd_reproduce, "re-train a version from its record; compare metrics", False
    )
    reproduce_cmd.add_argument("--name", required=True, help="registered model name")
    reproduce_cmd.add_argument("--version", required=True)
    monitor_cmd = step(
        "monitor", _cmd_monitor, "drift and performance of a served version; exit 10 if found"
    )
    monitor_cmd.add_argument("--version", default=None, help="default: the Production version")
    window_args(monitor_cmd)
    window_args(
        step(
            "live-compare",
            _cmd_live_compare,
            "compare the challenger (Staging) with the champion (Production) on the same live "
            "requests of the prediction log; log a run and the challenger's live evidence",
        )
    )
    live_gate_cmd = step(
        "live-gate",
        _cmd_live_gate,
        "promote the challenger to Production or retire it on live evidence; " + LIVE_EXIT_HELP,
    )
    window_args(live_gate_cmd)
    replay_cmd = step(
        "replay",
        _cmd_replay,
        "send the config's held-out rows to a running server, one request each, then their "
        "labels: a rehearsal of live-compare and live-gate before real traffic",
    )
    replay_cmd.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the server's base URL (make serve's)"
    )
    replay_cmd.add_argument("--rows", type=_optional(int), default=None, help="at most N rows")
    replay_cmd.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    feedback_cmd = step("feedback", _cmd_feedback, "append late labels to the prediction log")
    feedback_cmd.add_argument(
        "--file", required=True, help="CSV or Parquet with request_id, row (optional), label"
    )
    retrain_cmd = step(
        "retrain", _cmd_retrain, "monitor, and on drift retrain with production labels and gate"
    )
    retrain_cmd.add_argument(
        "--force", nargs="?", const=True, default=False, type=_flag, help="retrain without drift"
    )
    retrain_cmd.add_argument(
        "--since", type=_moment, default=None, help="ISO time: monitor and learn from here on"
    )
    score_cmd = step("score", _cmd_score, "batch-score a CSV or Parquet file", False)
    score_cmd.add_argument("--input", required=True, help="CSV or Parquet file to score")
    score_cmd.add_argument("--output", required=True, help="Parquet file to write")
    score_cmd.add_argument("--model-uri", default="", help="any MLflow model URI")
    score_cmd.add_argument("--name", default="", help="registered model: its Production version")
    score_cmd.add_argument("--engine", choices=["pandas", "spark"], default="pandas")
    score_cmd.add_argument(
        "--chunk-rows",
        type=_positive_int,
        help="rows per chunk (pandas engine); default: the scorer's",
    )
    step("ui-url", _cmd_ui_url, "print the MLflow UI link to the experiment's runs").add_argument(
        "--base-url", default="http://127.0.0.1:5000", help="where `make ui` serves the UI"
    )
    step("model-name", _cmd_model_name, "print the registered model name of a config")
    step("experiment-name", _cmd_experiment_name, "print the experiment name of a config")
    return parser
