"""Model card: one HTML and one Markdown page per registered version, logged on its run.

Everything on the card is read back from MLflow (the version's tags, the run's params,
metrics, tags and artifacts), never recomputed, so the card shows exactly what the registry
and the run recorded. Anything a run did not record is shown as "not recorded" rather than
guessed, which keeps cards of versions made by older code truthful too.

The HTML page is self-contained (inline CSS, plots as data URIs) because the MLflow UI shows
an `.html` artifact in an iframe where relative links to other artifacts do not resolve. The
Markdown page links the plots by their path relative to the card instead, for reading the
artifacts as files. This module gathers the card and turns it into rows of text; the
templates `model_card.html.j2` and `model_card.md.j2` lay them out.
"""

from __future__ import annotations

import base64
import json
import logging
import posixpath
import re
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import artifacts, contracts, metrics
from pipeline.errors import PipelineError, RegistryError
from pipeline.registry import production
from pipeline.reports.render import render

logger = logging.getLogger(__name__)

NOT_RECORDED = "not recorded"
CARD_DIR = "model_card"
CARD_TAG = "model_card"
HTML_FILE = "model_card.html"
MARKDOWN_FILE = "model_card.md"
# Where evaluate.py logs its figures.
PLOTS_DIR = "plots"
# Run tags the card reads when present; JSON values.
COLUMNS_TAG = "data.columns"  # {"numeric": [...], "categorical": [...]}
CLASS_BALANCE_TAG = "data.class_balance"  # {label: rows}
TARGET_SUMMARY_TAG = "data.target_summary"  # {"mean": .., "std": .., "min": .., "max": ..}
LIBRARIES_TAG = "lineage.libraries"  # {distribution: version}
# Params of a hyperparameter search on the parent (candidate) run, as train.py logs them.
SEARCH_PARAM_PREFIX = "search."
SEARCH_STRATEGY_PARAM = "search.strategy"
SEARCH_TRIALS_PARAM = "search.trials"
SEARCH_SCORING_PARAM = "search.scoring"
SEARCH_BEST_SCORE_PARAM = "search.best_score"

# Known plots in reading order; any other image under plots/ follows, by name.
_PLOT_TITLES = {
    "confusion_matrix.png": "Confusion matrix",
    "roc_curve.png": "ROC curve",
    "precision_recall_curve.png": "Precision-recall curve",
    "residuals.png": "Residuals vs predicted",
    "reliability_curve.png": "Reliability (calibration) curve",
    "feature_importance.png": "Permutation importance",
}
# The address `make ui` serves the MLflow UI at: a local store has no address of its own.
LOCAL_UI_URL = "http://127.0.0.1:5000"
_TARGET_STATISTICS = ("mean", "std", "min", "max")
_N = TypeVar("_N", int, float)


@dataclass(frozen=True)
class Plot:
    title: str
    artifact_path: str  # on the run, e.g. plots/confusion_matrix.png
    png: bytes


@dataclass(frozen=True)
class SearchSummary:
    strategy: str | None
    trials: int | None
    scoring: str | None
    best_cv_score: float | None
    nested_runs: int  # trial runs found under the candidate's run
    other: Mapping[str, str]  # further search.* params, shown as recorded


@dataclass(frozen=True)
class DataSection:
    source: str | None
    data_hash: str | None
    rows: int | None
    numeric_columns: tuple[str, ...] | None
    categorical_columns: tuple[str, ...] | None
    numeric_count: int | None
    categorical_count: int | None
    class_balance: Mapping[str, int] | None  # classifiers
    target_summary: Mapping[str, float] | None  # regressors: mean, std, min, max


@dataclass(frozen=True)
class GateSection:
    decision: str  # "promoted", "staged" (sent to Staging as the challenger) or "rejected"
    reason: str
    metric: str | None
    challenger_value: float | None
    champion_version: str | None
    champion_value: float | None
    difference: float | None  # the gain: positive when the challenger is better
    ci_lower: float | None
    ci_upper: float | None
    ci_level: float | None
    resamples: int | None
    rule: str | None
    comparison_rows: int | None
    challenger_compared: float | None = None  # this version on the compared rows
    baseline_value: float | None = None  # the trivial baseline on the compared rows
    baseline_ci_lower: float | None = None
    baseline_ci_upper: float | None = None
    champion_own: float | None = None  # the champion on its own held-out rows, when trained


@dataclass(frozen=True)
class LiveSection:
    """The version's evidence on live traffic, as live-compare and live-gate tagged it
    (``live.*`` version tags; the server's canary rollback tag)."""

    compared_at: str | None
    window: str | None
    champion_version: str | None
    metric: str | None
    shared: int | None
    labelled: int | None
    agreement: float | None
    drift: float | None
    challenger_score: float | None
    champion_score: float | None
    gain: float | None
    ci_lower: float | None
    ci_upper: float | None
    ci_level: float | None
    resamples: int | None
    baseline: str | None
    baseline_ci_lower: float | None
    baseline_ci_upper: float | None
    error_rates: tuple[float | None, float | None]  # champion, challenger
    latency_p99_ms: tuple[float | None, float | None]  # champion, challenger
    run_id: str | None
    decision: str | None
    reason: str | None
    rolled_back: str | None


@dataclass(frozen=True)
class Lineage:
    data_hash: str | None
    data_source: str | None
    git_commit: str | None
    git_dirty: str | None
    config_hash: str | None
    libraries: Mapping[str, str] | None
    run_link: str  # MLflow UI address of the run
    code_hash: str | None = None


@dataclass(frozen=True)
class ModelCardInput:
    name: str
    version: str
    run_id: str
    run_name: str | None
    task: str | None
    created: str  # when the version was registered, ISO 8601 UTC
    description: str | None
    estimator: str | None  # class path
    estimator_params: Mapping[str, str]  # the best params when a search chose them
    search: SearchSummary | None
    data: DataSection
    config_yaml: str | None
    metrics: Mapping[str, float]  # held-out test_* metrics
    cv_metrics: Mapping[str, float]
    baseline_metrics: Mapping[str, float]  # baseline_test_*: the trivial model, same rows
    plots: tuple[Plot, ...]
    gate: GateSection | None
    lineage: Lineage
    positive_class: str | None = None
    decision_threshold: str | None = None
    warning: str | None = None  # e.g. accuracy as the gate metric of a rare class
    live: LiveSection | None = None  # evidence on live traffic, once live-compare ran

    @property
    def card_dir(self) -> str:
        return f"{CARD_DIR}/v{self.version}"


@dataclass(frozen=True)
class ModelCardPaths:
    run_id: str
    html: str  # artifact paths on the run
    markdown: str


def log_model_card(client: MlflowClient, name: str, version: str) -> ModelCardPaths:
    """Render the card of `name` version `version`, log it on the version's run, tag the version.

    Only the two card files and the version's `model_card` tag are written.
    """
    card = build_model_card_input(client, name, version)
    paths = ModelCardPaths(
        run_id=card.run_id,
        html=f"{card.card_dir}/{HTML_FILE}",
        markdown=f"{card.card_dir}/{MARKDOWN_FILE}",
    )
    client.log_text(card.run_id, render_html(card), paths.html)
    client.log_text(card.run_id, render_markdown(card), paths.markdown)
    client.set_model_version_tag(name, card.version, CARD_TAG, paths.html)
    logger.info("Logged the model card of '%s' version %s at %s", name, card.version, paths.html)
    return paths


def build_model_card_input(client: MlflowClient, name: str, version: str) -> ModelCardInput:
    """Gather everything the card shows from the registry and the version's run."""
    model_version = production.get_version(client, name, version)
    run_id = model_version.run_id
    if not run_id:
        raise PipelineError(
            f"version {version} of '{name}' was registered without a run; a model card reads "
            "the training run, so register versions with the pipeline (python -m pipeline main)"
        )
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise PipelineError(
            f"the run {run_id} of version {version} of '{name}' cannot be read ({exc.message}); "
            "was it deleted? A model card needs the training run"
        ) from exc
    version_tags = dict(model_version.tags)
    params, run_metrics, tags = run.data.params, run.data.metrics, run.data.tags
    created = datetime.fromtimestamp(model_version.creation_timestamp / 1000, tz=UTC)
    data = _data_section(params, tags)
    return ModelCardInput(
        name=name,
        version=str(model_version.version),
        run_id=run_id,
        run_name=run.info.run_name or None,
        task=tags.get("task") or version_tags.get("task"),
        created=created.isoformat(timespec="seconds"),
        description=model_version.description or None,
        estimator=params.get("estimator") or version_tags.get("estimator"),
        estimator_params={
            key.removeprefix("model."): value
            for key, value in sorted(params.items())
            if key.startswith("model.")
        },
        search=_search_summary(client, run),
        data=data,
        config_yaml=_artifact_text(client, run_id, artifacts.RESOLVED_CONFIG),
        metrics=dict(sorted(metrics.held_out(run_metrics).items())),
        cv_metrics={k: v for k, v in sorted(run_metrics.items()) if k.startswith("cv_")},
        baseline_metrics={
            k: v for k, v in sorted(run_metrics.items()) if k.startswith("baseline_")
        },
        plots=_plots(client, run_id),
        gate=_gate_section(client, name, version_tags),
        live=_live_section(version_tags),
        positive_class=tags.get(artifacts.POSITIVE_CLASS),
        decision_threshold=params.get("decision_threshold"),
        warning=tags.get(artifacts.IMBALANCE_WARNING),
        lineage=Lineage(
            data_hash=data.data_hash,
            data_source=data.source,
            git_commit=tags.get("git.commit"),
            git_dirty=tags.get("git.dirty"),
            config_hash=tags.get("config.hash") or version_tags.get("config.hash"),
            libraries=_string_mapping(_json_tag(tags, LIBRARIES_TAG)),
            run_link=_run_link(client, run),
            code_hash=tags.get(artifacts.CODE_HASH),
        ),
    )


# --- gathering -------------------------------------------------------------------------------


def _data_section(params: Mapping[str, str], tags: Mapping[str, str]) -> DataSection:
    columns = _json_tag(tags, COLUMNS_TAG)
    numeric = categorical = None
    if isinstance(columns, dict):
        numeric = tuple(str(c) for c in columns.get("numeric", ()))
        categorical = tuple(str(c) for c in columns.get("categorical", ()))
    balance = _json_tag(tags, CLASS_BALANCE_TAG)
    summary = _json_tag(tags, TARGET_SUMMARY_TAG)
    return DataSection(
        source=tags.get("data.source"),
        data_hash=tags.get(artifacts.DATA_HASH),
        rows=_int(tags.get("data.rows")),
        numeric_columns=numeric,
        categorical_columns=categorical,
        numeric_count=_int(params.get("features.numeric")),
        categorical_count=_int(params.get("features.categorical")),
        class_balance=_numbers(CLASS_BALANCE_TAG, balance, int),
        target_summary=_numbers(
            TARGET_SUMMARY_TAG,
            {k: summary[k] for k in _TARGET_STATISTICS if k in summary}
            if isinstance(summary, dict)
            else None,
            float,
        ),
    )


def _numbers(key: str, value: Any, kind: Callable[[Any], _N]) -> Mapping[str, _N] | None:
    if not isinstance(value, dict):
        return None
    try:
        return {str(k): kind(v) for k, v in value.items()}
    except (TypeError, ValueError):
        logger.warning("Tag %s holds a non-number; the card shows it as not recorded", key)
        return None


def _search_summary(client: MlflowClient, run: Run) -> SearchSummary | None:
    params = run.data.params
    searched = {k: v for k, v in params.items() if k.startswith(SEARCH_PARAM_PREFIX)}
    nested = _count_nested_runs(client, run)
    if not searched and not nested:
        return None
    known = {
        SEARCH_STRATEGY_PARAM,
        SEARCH_TRIALS_PARAM,
        SEARCH_SCORING_PARAM,
        SEARCH_BEST_SCORE_PARAM,
    }
    return SearchSummary(
        strategy=searched.get(SEARCH_STRATEGY_PARAM),
        trials=_int(searched.get(SEARCH_TRIALS_PARAM)),
        scoring=searched.get(SEARCH_SCORING_PARAM),
        best_cv_score=_float(searched, SEARCH_BEST_SCORE_PARAM),
        nested_runs=nested,
        other={k: v for k, v in sorted(searched.items()) if k not in known},
    )


def _count_nested_runs(client: MlflowClient, run: Run) -> int:
    count, token = 0, None
    while True:
        page = client.search_runs(
            [run.info.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{run.info.run_id}'",
            max_results=1000,
            page_token=token,
        )
        count += len(page)
        token = page.token
        if not token:
            return count


def _run_link(client: MlflowClient, run: Run) -> str:
    path = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    uri = str(client.tracking_uri)
    # Against a tracking server the UI lives at the same address; a local store is browsed
    # with `make ui`, which serves it at LOCAL_UI_URL.
    base = uri if uri.startswith(("http://", "https://")) else LOCAL_UI_URL
    return f"{base.rstrip('/')}/{path}"


def _artifact_text(client: MlflowClient, run_id: str, path: str) -> str | None:
    listed = {a.path for a in client.list_artifacts(run_id, posixpath.dirname(path) or None)}
    if path not in listed:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        return Path(client.download_artifacts(run_id, path, tmp)).read_text(encoding="utf-8")


def _plots(client: MlflowClient, run_id: str) -> tuple[Plot, ...]:
    listed = [
        a.path
        for a in client.list_artifacts(run_id, PLOTS_DIR)
        if not a.is_dir and a.path.endswith(".png")
    ]
    order = list(_PLOT_TITLES)

    def rank(path: str) -> tuple[int, str]:
        file = posixpath.basename(path)
        return (order.index(file) if file in order else len(order), file)

    if not listed:
        return ()
    plots = []
    with tempfile.TemporaryDirectory() as tmp:
        # One download of the folder rather than one per file: each download is a round trip
        # to the artifact store (and draws MLflow's progress bar).
        local = Path(client.download_artifacts(run_id, PLOTS_DIR, tmp))
        for path in sorted(listed, key=rank):
            file = posixpath.basename(path)
            title = _PLOT_TITLES.get(file) or file.removesuffix(".png").replace("_", " ").title()
            png = (local / file).read_bytes()
            plots.append(Plot(title=title, artifact_path=path, png=png))
    return tuple(plots)


def _gate_section(client: MlflowClient, name: str, tags: Mapping[str, str]) -> GateSection | None:
    decision = tags.get(artifacts.GATE_DECISION)
    if decision is None:
        return None
    champion = _none_if_unset(tags.get("gate.champion_version"))
    metric = tags.get("gate.metric")
    champion_own = None
    if champion is not None and metric is not None:
        try:
            champion_tags = production.get_version(client, name, champion).tags
        except (PipelineError, RegistryError, MlflowException):
            champion_tags = {}
        champion_own = _float(champion_tags, metric)
    return GateSection(
        decision=decision,
        reason=tags.get("gate.reason", NOT_RECORDED),
        metric=tags.get("gate.metric"),
        challenger_value=_float(tags, "gate.candidate_value"),
        champion_version=_none_if_unset(tags.get("gate.champion_version")),
        champion_value=_float(tags, "gate.champion_value"),
        difference=_float(tags, "gate.diff"),
        ci_lower=_float(tags, "gate.ci_lower"),
        ci_upper=_float(tags, "gate.ci_upper"),
        ci_level=_float(tags, "gate.ci_level"),
        resamples=_int(tags.get("gate.resamples")),
        rule=_none_if_unset(tags.get("gate.rule")),
        comparison_rows=_int(tags.get("gate.comparison_rows")),
        challenger_compared=_float(tags, "gate.candidate_compared_value"),
        baseline_value=_float(tags, "gate.baseline_value"),
        baseline_ci_lower=_float(tags, "gate.baseline_ci_lower"),
        baseline_ci_upper=_float(tags, "gate.baseline_ci_upper"),
        champion_own=champion_own,
    )


def _live_section(tags: Mapping[str, str]) -> LiveSection | None:
    rolled_back = tags.get(contracts.CANARY_ROLLBACK_TAG)
    if "live.compared_at" not in tags and rolled_back is None:
        return None
    return LiveSection(
        compared_at=tags.get("live.compared_at"),
        window=tags.get("live.window"),
        champion_version=_none_if_unset(tags.get("live.champion_version")),
        metric=tags.get("live.metric"),
        shared=_int(tags.get("live.shared")),
        labelled=_int(tags.get("live.labelled")),
        agreement=_float(tags, "live.agreement"),
        drift=_float(tags, "live.drift_js"),
        challenger_score=_float(tags, "live.challenger_score"),
        champion_score=_float(tags, "live.champion_score"),
        gain=_float(tags, "live.gain"),
        ci_lower=_float(tags, "live.ci_lower"),
        ci_upper=_float(tags, "live.ci_upper"),
        ci_level=_float(tags, "live.ci_level"),
        resamples=_int(tags.get("live.resamples")),
        baseline=_none_if_unset(tags.get("live.baseline")),
        baseline_ci_lower=_float(tags, "live.baseline_ci_lower"),
        baseline_ci_upper=_float(tags, "live.baseline_ci_upper"),
        error_rates=(
            _float(tags, "live.champion_error_rate"),
            _float(tags, "live.challenger_error_rate"),
        ),
        latency_p99_ms=(
            _float(tags, "live.champion_latency_p99_ms"),
            _float(tags, "live.challenger_latency_p99_ms"),
        ),
        run_id=_none_if_unset(tags.get("live.run_id")),
        decision=tags.get("live.decision"),
        reason=tags.get("live.reason"),
        rolled_back=rolled_back,
    )


def _none_if_unset(value: str | None) -> str | None:
    # The gate writes "none" where there was nothing to record (e.g. no champion yet).
    return None if value is None or value.lower() == "none" else value


def _float(tags: Mapping[str, str], key: str) -> float | None:
    value = _none_if_unset(tags.get(key))
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        logger.warning("Tag %s=%r is not a number; the card shows it as not recorded", key, value)
        return None


def _int(value: str | None) -> int | None:
    value = _none_if_unset(value)
    try:
        return None if value is None else int(value)
    except ValueError:
        return None


def _json_tag(tags: Mapping[str, str], key: str) -> Any:
    raw = tags.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        logger.warning("Tag %s is not valid JSON; the card shows it as not recorded", key)
        return None


def _string_mapping(value: Any) -> Mapping[str, str] | None:
    if not isinstance(value, dict):
        return None
    return {str(k): str(v) for k, v in sorted(value.items())}


# --- formatting shared by both renderings -----------------------------------------------------


def _number(value: float | None) -> str:
    return NOT_RECORDED if value is None else f"{value:.4f}"


def _level(value: float | None) -> str:
    return NOT_RECORDED if value is None else f"{value * 100:g}%"


def _text(value: object | None) -> str:
    return NOT_RECORDED if value is None or value == "" else str(value)


def _title(card: ModelCardInput) -> str:
    return f"Model card: {card.name} version {card.version}"


def _summary_rows(card: ModelCardInput) -> list[tuple[str, str]]:
    return [
        ("Registered model", card.name),
        ("Version", card.version),
        ("Task", _text(card.task)),
        ("Estimator", _text(card.estimator)),
        ("Registered at", card.created),
        ("Run", f"{card.run_name} ({card.run_id})" if card.run_name else card.run_id),
        ("Description", _text(card.description)),
        *_classification_rows(card),
    ]


def _classification_rows(card: ModelCardInput) -> list[tuple[str, str]]:
    rows = []
    if card.positive_class is not None:
        rows.append(("Positive class (binary metrics)", card.positive_class))
    if card.decision_threshold is not None:
        rows.append(("Decision threshold (tuned)", card.decision_threshold))
    if card.warning is not None:
        rows.append(("Warning", card.warning))
    return rows


def _gate_rows(gate: GateSection) -> list[tuple[str, str]]:
    """The decision, then every model's score on the same compared rows, then each model's
    score on its own held-out rows, each labelled: the two must never share a column."""
    compared = _text(gate.comparison_rows)
    rows = [
        ("Decision", gate.decision),
        ("Reason", gate.reason),
        ("Rule", _text(gate.rule)),
        ("Metric", _text(gate.metric)),
        ("Rows compared (held-out, unseen by every model compared)", compared),
        ("This version, on the compared rows", _number(gate.challenger_compared)),
    ]
    if gate.champion_version is not None:
        rows.append(
            (
                f"Champion v{gate.champion_version}, on the compared rows",
                _number(gate.champion_value),
            )
        )
    rows += [
        ("Trivial baseline, on the compared rows", _number(gate.baseline_value)),
        (
            "Gain over the baseline (positive: better), confidence interval",
            _interval(gate.baseline_ci_lower, gate.baseline_ci_upper),
        ),
    ]
    if gate.champion_version is None:
        rows.append(("Champion", "none (first model)"))
    else:
        rows += [
            ("Gain over the champion (positive: better)", _number(gate.difference)),
            ("Confidence interval of the gain", _interval(gate.ci_lower, gate.ci_upper)),
            ("Bootstrap resamples", _text(gate.resamples)),
        ]
    rows.append(("Confidence level", _level(gate.ci_level)))
    rows.append(("This version, on all its own held-out rows", _number(gate.challenger_value)))
    if gate.champion_version is not None:
        rows.append(
            (
                f"Champion v{gate.champion_version}, on its own held-out rows (when trained)",
                _number(gate.champion_own),
            )
        )
    return rows


def _live_rows(live: LiveSection) -> list[tuple[str, str]]:
    """Both versions on the same live requests: what the last live-compare found, and the
    live-gate decision when one was taken."""
    champion = f"champion v{live.champion_version}" if live.champion_version else "champion"
    rows = []
    if live.decision is not None:
        rows += [("live-gate decision", live.decision), ("Reason", _text(live.reason))]
    if live.rolled_back is not None:
        rows.append(("Canary rolled back by the server", live.rolled_back))
    if live.compared_at is None:
        return rows
    rows += [
        ("Compared with", champion),
        ("Window", _text(live.window)),
        ("Shared requests (answered by both)", _text(live.shared)),
        ("Labelled shared requests", _text(live.labelled)),
        ("Agreement", NOT_RECORDED if live.agreement is None else f"{live.agreement:.2%}"),
        ("Prediction drift (Jensen-Shannon distance)", _number(live.drift)),
        (
            f"This version, {_text(live.metric)} on the labelled requests",
            _number(live.challenger_score),
        ),
        (f"{champion.capitalize()}, on the same requests", _number(live.champion_score)),
        ("Gain over the champion (positive: better)", _number(live.gain)),
        ("Confidence interval of the gain", _interval(live.ci_lower, live.ci_upper)),
        ("Confidence level", _level(live.ci_level)),
        ("Bootstrap resamples", _text(live.resamples)),
        ("Trivial baseline", _text(live.baseline)),
        (
            "Gain over the baseline, confidence interval",
            _interval(live.baseline_ci_lower, live.baseline_ci_upper),
        ),
        (
            "Error rate: champion / this version",
            " / ".join(
                NOT_RECORDED if rate is None else f"{rate:.2%}" for rate in live.error_rates
            ),
        ),
        (
            "p99 latency (ms): champion / this version",
            " / ".join(NOT_RECORDED if ms is None else f"{ms:.2f}" for ms in live.latency_p99_ms),
        ),
        ("Compared at", live.compared_at),
        ("live-compare run", _text(live.run_id)),
    ]
    return rows


def _interval(lower: float | None, upper: float | None) -> str:
    if lower is None or upper is None:
        return NOT_RECORDED
    return f"[{_number(lower)}, {_number(upper)}]"


def _data_rows(data: DataSection) -> list[tuple[str, str]]:
    def names(columns: tuple[str, ...] | None, count: int | None) -> str:
        if columns is not None:
            return ", ".join(columns) if columns else "none"
        return NOT_RECORDED if count is None else f"{count} ({NOT_RECORDED} by name)"

    return [
        ("Source", _text(data.source)),
        ("Data hash (SHA-256 of the full content)", _text(data.data_hash)),
        ("Rows", _text(data.rows)),
        ("Numeric columns", names(data.numeric_columns, data.numeric_count)),
        ("Categorical columns", names(data.categorical_columns, data.categorical_count)),
    ]


def _target_rows(
    card: ModelCardInput,
) -> tuple[str, tuple[str, str], list[tuple[str, str]] | None]:
    """Class balance for classifiers, the target's summary for regressors."""
    data = card.data
    regression = card.task == "regression" or (
        card.task is None and data.class_balance is None and data.target_summary is not None
    )
    if regression:
        rows = (
            None
            if data.target_summary is None
            else [(k, _number(v)) for k, v in data.target_summary.items()]
        )
        return "Target summary", ("Statistic", "Value"), rows
    if data.class_balance is None:
        return "Class balance", ("Class", "Rows"), None
    total = sum(data.class_balance.values()) or 1
    return (
        "Class balance",
        ("Class", "Rows"),
        [(label, f"{count} ({count / total:.1%})") for label, count in data.class_balance.items()],
    )


def _search_rows(search: SearchSummary) -> list[tuple[str, str]]:
    return [
        ("Strategy", _text(search.strategy)),
        ("Trials", _text(search.trials)),
        ("Nested trial runs", str(search.nested_runs)),
        ("Scoring", _text(search.scoring)),
        ("Best CV score", _number(search.best_cv_score)),
        *search.other.items(),
    ]


def _lineage_rows(lineage: Lineage) -> list[tuple[str, str]]:
    return [
        ("Data hash", _text(lineage.data_hash)),
        ("Data source", _text(lineage.data_source)),
        ("Git commit", _text(lineage.git_commit)),
        ("Uncommitted changes (git dirty)", _text(lineage.git_dirty)),
        ("Config hash", _text(lineage.config_hash)),
        ("Code hash", _text(lineage.code_hash)),
    ]


def _metric_rows(metrics: Mapping[str, float]) -> list[tuple[str, str]]:
    return [(name, _number(value)) for name, value in metrics.items()]


# --- rendering --------------------------------------------------------------------------------


def render_markdown(card: ModelCardInput) -> str:
    """The card as Markdown; plots are linked by their path relative to the card's folder."""
    plots = [
        {"title": plot.title, "link": posixpath.relpath(plot.artifact_path, start=card.card_dir)}
        for plot in card.plots
    ]
    config_yaml = None if card.config_yaml is None else card.config_yaml.rstrip("\n")
    # A fence longer than any run of backticks in the YAML cannot be closed by it.
    longest = max((len(run) for run in re.findall(r"`+", config_yaml or "")), default=0)
    return render(
        "model_card.md.j2",
        **_context(card),
        plots=plots,
        config_yaml=config_yaml,
        fence="`" * max(3, longest + 1),
    )


def render_html(card: ModelCardInput) -> str:
    """The card as one self-contained HTML page; every recorded string is escaped."""
    plots = [
        {
            "title": plot.title,
            "path": plot.artifact_path,
            "data": base64.b64encode(plot.png).decode("ascii"),
        }
        for plot in card.plots
    ]
    return render("model_card.html.j2", **_context(card), plots=plots, config_yaml=card.config_yaml)


def _context(card: ModelCardInput) -> dict[str, Any]:
    """What both renderings show, as (field, value) rows of text."""
    heading, header, rows = _target_rows(card)
    return {
        "not_recorded": NOT_RECORDED,
        "title": _title(card),
        "summary": _summary_rows(card),
        "gate": None if card.gate is None else _gate_rows(card.gate),
        "decision": None if card.gate is None else card.gate.decision,
        "live": None if card.live is None else _live_rows(card.live),
        "metrics": _metric_rows(card.metrics),
        "cv_metrics": _metric_rows(card.cv_metrics),
        "baseline_metrics": _metric_rows(card.baseline_metrics),
        "data": _data_rows(card.data),
        "target_heading": heading,
        "target_header": header,
        "target_rows": rows,
        "estimator": [("Class", _text(card.estimator))],
        "search": None if card.search is None else _search_rows(card.search),
        "params_title": "Best parameters (chosen by the search)" if card.search else "Parameters",
        "params": list(card.estimator_params.items()),
        "lineage": _lineage_rows(card.lineage),
        "run_link": card.lineage.run_link,
        "libraries": list(card.lineage.libraries.items()) if card.lineage.libraries else None,
    }
