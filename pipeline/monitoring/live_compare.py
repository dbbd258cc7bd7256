"""live-compare: the champion (Production) and the challenger (Staging) on the same live requests.

Reads both versions' rows of the prediction log in a window (``PredictionLog.live_rows``, with
the window and version filters pushed down to pyarrow), and reports what each did: requests,
error rate and latency percentiles per version, how often they agree, how far apart their
predictions are (Jensen-Shannon distance), and, on the shared requests a label arrived for, the
gate metric of both with the paired bootstrap interval of the challenger's gain
(``live.compare``) and its gain over the trivial baseline. The findings are logged as a run of
the monitoring experiment (metrics, a JSON and an HTML report), recorded as ``live.*`` tags on
the challenger's version, and shown in a "Live evidence" section of its model card.

The baseline is what a model that ignores the features answers, read from the challenger's
training run: the class shares of its data (``data.class_balance`` tag; the majority class as
the prediction) for a classifier, the mean of its target (``data.target_summary``) for a
regressor. A run that recorded neither has no baseline, and the report says so.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow.entities import Metric, Param, RunTag
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import contracts
from pipeline.config import PipelineConfig
from pipeline.contracts import KEY_COLUMNS, PROBA_PREFIX
from pipeline.errors import DataValidationError, RegistryError
from pipeline.monitoring import live
from pipeline.monitoring.prediction_log import PredictionLog, describe_window, utc

# One monitoring experiment for every monitoring run, created the same race-safe way.
from pipeline.monitoring.record import monitoring_run
from pipeline.registry import production
from pipeline.steps import bootstrap

logger = logging.getLogger(__name__)

REPORT_HTML = "reports/live_report.html"
REPORT_JSON = "reports/live_report.json"
TAG_PREFIX = "live."
"""Version tags on the challenger that record its latest live evidence (the model card reads
them); ``contracts.CANARY_ROLLBACK_TAG`` shares the prefix and is the server's."""
CLASS_BALANCE_TAG = "data.class_balance"
TARGET_SUMMARY_TAG = "data.target_summary"
# The columns live comparison keeps of each row: everything else is dropped chunk by chunk.
_KEPT = [*KEY_COLUMNS, "served", "latency_ms", "error", "prediction"]


@dataclass(frozen=True)
class LiveComparison:
    """What live-compare found; ``run_id`` is empty until the run is logged."""

    model_name: str
    champion: live.VersionTraffic
    challenger: live.VersionTraffic
    window_start: datetime | None
    window_end: datetime
    evidence: live.LiveEvidence
    drift: float | None
    """Jensen-Shannon distance between the two versions' predictions on the shared requests."""
    baseline: str | None
    """The trivial baseline, in words; None when the challenger's run recorded none."""
    rolled_back: str | None
    """The server's canary rollback tag on the challenger (when and why), or None."""
    run_id: str = ""

    def metrics(self) -> dict[str, float]:
        """The run's metrics; a figure that could not be computed is left out."""
        evidence = self.evidence
        values: dict[str, float | None] = {
            "live.shared": float(evidence.shared),
            "live.labelled": float(evidence.labelled),
            "live.agreement": evidence.agreement,
            "live.drift_js": self.drift,
            "live.challenger_score": evidence.challenger_score,
            "live.champion_score": evidence.champion_score,
            "live.rolled_back": float(self.rolled_back is not None),
        }
        if evidence.interval is not None:
            values.update(
                {
                    "live.gain": evidence.interval.gain,
                    "live.ci_lower": evidence.interval.lower,
                    "live.ci_upper": evidence.interval.upper,
                }
            )
        if evidence.baseline_interval is not None:
            values["live.baseline_gain"] = evidence.baseline_interval.gain
            values["live.baseline_ci_lower"] = evidence.baseline_interval.lower
            values["live.baseline_ci_upper"] = evidence.baseline_interval.upper
        for role, seen in (("champion", self.champion), ("challenger", self.challenger)):
            values[f"{role}.requests"] = float(seen.requests)
            values[f"{role}.rows"] = float(seen.rows)
            values[f"{role}.served"] = float(seen.served)
            values[f"{role}.errors"] = float(seen.errors)
            values[f"{role}.error_rate"] = seen.error_rate
            for percentile, value in seen.latency_ms.items():
                values[f"{role}.latency_p{percentile}_ms"] = value
        return {k: float(v) for k, v in values.items() if v is not None and np.isfinite(v)}

    def version_tags(self) -> dict[str, str]:
        """The ``live.*`` tags on the challenger's version: its latest live evidence."""
        evidence = self.evidence
        tags = {
            "live.compared_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "live.run_id": self.run_id or "none",
            "live.window": describe_window(self.window_start, self.window_end),
            "live.champion_version": self.champion.version,
            "live.metric": evidence.metric,
            "live.shared": str(evidence.shared),
            "live.labelled": str(evidence.labelled),
            "live.baseline": self.baseline or "none",
        }
        numbers = {k: v for k, v in self.metrics().items() if k.startswith(TAG_PREFIX)}
        numbers.pop("live.rolled_back", None)
        every = self.metrics()
        for role in ("champion", "challenger"):
            for key in ("error_rate", "latency_p50_ms", "latency_p99_ms"):
                value = every.get(f"{role}.{key}")
                if value is not None:
                    numbers[f"live.{role}_{key}"] = value
        tags.update({key: f"{value:.6g}" for key, value in numbers.items()})
        if evidence.interval is not None:
            tags["live.ci_level"] = f"{evidence.interval.level:g}"
            tags["live.resamples"] = str(evidence.interval.resamples)
        return tags

    def lines(self) -> list[str]:
        """The evidence in words, one finding per line, as the commands print it."""
        evidence = self.evidence

        def rate(value: float | None) -> str:
            return "-" if value is None else f"{value:.2%}"

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value:.2f}"

        lines = [
            f"window: {describe_window(self.window_start, self.window_end)}",
            f"shared requests: {evidence.shared} answered by both v{self.champion.version} "
            f"(champion) and v{self.challenger.version} (challenger); {evidence.labelled} "
            "labelled",
            f"agreement: {rate(evidence.agreement)}; prediction drift (Jensen-Shannon "
            f"distance): {'-' if self.drift is None else f'{self.drift:.4f}'}",
        ]
        for role, seen in (("champion", self.champion), ("challenger", self.challenger)):
            latency = ", ".join(f"p{p} {ms(v)}" for p, v in seen.latency_ms.items())
            lines.append(
                f"{role} v{seen.version}: {seen.requests} requests, {seen.served} rows served, "
                f"{seen.errors} failed ({rate(seen.error_rate)}); latency ms {latency}"
            )
        if evidence.interval is not None:
            lines.append(
                f"{evidence.metric} on the labelled shared requests: challenger "
                f"{evidence.challenger_score:.4f}, champion {evidence.champion_score:.4f}, "
                f"gain {live.describe(evidence.interval)}"
            )
        if evidence.baseline_interval is not None:
            lines.append(
                f"gain over the trivial baseline ({self.baseline}): "
                f"{live.describe(evidence.baseline_interval)}"
            )
        if self.rolled_back is not None:
            lines.append(f"canary rolled back by the server: {self.rolled_back}")
        return lines


@dataclass(frozen=True)
class Versions:
    """The two versions compared, as the registry holds them now."""

    champion: ModelVersion
    challenger: ModelVersion


def resolve_versions(client: MlflowClient, name: str) -> Versions:
    """The Production and the Staging version of `name`; RegistryError when one is missing."""
    challenger = production.challenger_version(client, name)
    if challenger is None:
        raise RegistryError(
            f"registered model '{name}' has no version in {contracts.CHALLENGER_STAGE} (alias "
            f"'{contracts.CHALLENGER_ALIAS}') to compare with Production: set gate.live: true "
            "and run the pipeline, or put a version there with `python -m pipeline promote "
            "--stage Staging`"
        )
    champion = production.production_version(client, name)
    if champion is None:
        raise RegistryError(
            f"registered model '{name}' has no version in {contracts.CHAMPION_STAGE} to "
            f"compare challenger v{challenger.version} with; promote one first"
        )
    return Versions(champion=champion, challenger=challenger)


def gather(
    config: PipelineConfig,
    versions: Versions,
    since: datetime | None = None,
    until: datetime | None = None,
) -> LiveComparison:
    """Read both versions' rows in [since, until) and compute the comparison; writes nothing."""
    client = MlflowClient()
    name = config.registered_model
    until = utc(until) if until is not None else datetime.now(UTC)
    since = utc(since) if since is not None else None
    if since is not None and since >= until:
        raise DataValidationError(
            f"the window start {since.isoformat()} is not before its end {until.isoformat()}; "
            "pass --since earlier than --until"
        )
    champion_version = str(versions.champion.version)
    challenger_version = str(versions.challenger.version)
    log = PredictionLog(Path(config.monitoring.log_dir), name)
    rows, first = _read(log, config, [champion_version, challenger_version], since, until)
    if not log.parts():
        raise DataValidationError(
            f"no prediction log for {name} in {log.predictions_dir}: start the server with "
            "prediction logging on and a challenger (SERVING_CHALLENGER_MODE), or set "
            "monitoring.log_dir to the directory it logs to"
        )
    mine = {v: rows[rows["model_version"] == v] for v in (champion_version, challenger_version)}
    answered = {v: _answers(frame) for v, frame in mine.items()}
    shared = answered[champion_version].merge(
        answered[challenger_version][list(KEY_COLUMNS)], on=list(KEY_COLUMNS)
    )
    if shared.empty and versions.challenger.tags.get(contracts.CANARY_ROLLBACK_TAG) is None:
        raise _no_shared_requests(log, config, versions, since, until, mine)
    baseline, described = _baseline(client, config, versions.challenger)
    evidence = live.compare(
        config,
        answered[champion_version],
        answered[challenger_version],
        log.feedback(),
        baseline=baseline if config.gate.beat_baseline else None,
    )
    paired = answered[champion_version].merge(
        answered[challenger_version], on=list(KEY_COLUMNS), suffixes=("_a", "_b")
    )
    return LiveComparison(
        model_name=name,
        champion=live.traffic(champion_version, mine[champion_version]),
        challenger=live.traffic(challenger_version, mine[challenger_version]),
        window_start=since or (first.to_pydatetime() if first is not None else None),
        window_end=until,
        evidence=evidence,
        drift=live.prediction_drift(config, paired["prediction_a"], paired["prediction_b"]),
        baseline=described,
        rolled_back=versions.challenger.tags.get(contracts.CANARY_ROLLBACK_TAG),
    )


def run(
    config: PipelineConfig,
    since: datetime | None = None,
    until: datetime | None = None,
    *,
    run_id: str | None = None,
    card: bool = True,
) -> LiveComparison:
    """Compare champion and challenger on the live window, log the findings as a run of the
    monitoring experiment (into `run_id` when `mlflow run` made one), tag the challenger's
    version with them and, with `card`, log its model card with the "Live evidence" section."""
    client = MlflowClient()
    versions = resolve_versions(client, config.registered_model)
    found = gather(config, versions, since, until)
    found = replace(found, run_id=log_run(client, config, found, run_id=run_id))
    record_on_version(client, found)
    if card:
        log_card(client, config.registered_model, found.challenger.version)
    logger.info(
        "Compared %s v%s (challenger) with v%s (champion) on %d shared live requests "
        "(%d labelled): run %s",
        found.model_name,
        found.challenger.version,
        found.champion.version,
        found.evidence.shared,
        found.evidence.labelled,
        found.run_id,
    )
    return found


def log_run(
    client: MlflowClient, config: PipelineConfig, found: LiveComparison, *, run_id: str | None
) -> str:
    """Log `found` into `run_id` or a new run of the monitoring experiment; returns its id.

    The run ends FINISHED, or FAILED when a write fails (the error is raised again).
    """
    from pipeline.reports import live_report

    run_name = (
        f"{found.model_name}-live-v{found.challenger.version}-vs-v{found.champion.version}-"
        f"{found.window_end:%Y%m%dT%H%M%SZ}"
    )
    with monitoring_run(client, config, run_name, run_id) as run_id:
        found = replace(found, run_id=run_id)
        now = int(datetime.now(UTC).timestamp() * 1000)
        client.log_batch(
            run_id,
            params=[
                Param("gate.metric", config.gate.metric),
                Param("gate.live_min_labels", str(config.gate.live_min_labels)),
                Param("bootstrap.resamples", str(config.gate.bootstrap.resamples)),
                Param("bootstrap.confidence", str(config.gate.bootstrap.confidence)),
                Param("log_dir", config.monitoring.log_dir),
            ],
            tags=[RunTag(k, v) for k, v in _run_tags(found).items()],
            metrics=[Metric(k, v, now, 0) for k, v in found.metrics().items()],
        )
        client.log_dict(run_id, live_report.as_json(found), REPORT_JSON)
        client.log_text(run_id, live_report.render_html(found), REPORT_HTML)
    return run_id


def record_on_version(client: MlflowClient, found: LiveComparison) -> None:
    """Write the evidence as ``live.*`` tags on the challenger's version (the card reads them).

    Tags of an earlier comparison this one did not compute (no interval yet, say) are
    deleted, so the version never shows one comparison's figures beside another's."""
    name, version = found.model_name, found.challenger.version
    tags = found.version_tags()
    current = production.get_version(client, name, version).tags
    stale = [
        key
        for key in current
        if key.startswith(TAG_PREFIX) and key not in tags and key in _EVIDENCE_TAGS
    ]
    for key in stale:
        client.delete_model_version_tag(name, version, key)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def log_card(client: MlflowClient, name: str, version: str) -> None:
    """The challenger's model card again, now with its live evidence; a card that cannot be
    written is a warning, not a failure: the evidence is on the run and the version."""
    from pipeline.errors import PipelineError
    from pipeline.reports import model_card

    try:
        model_card.log_model_card(client, name, version)
    except (PipelineError, MlflowException, OSError) as exc:
        logger.warning("Could not log the model card of '%s' version %s: %s", name, version, exc)


# Every live.* tag `version_tags` may write: the ones an older comparison left are cleared.
_EVIDENCE_TAGS = frozenset(
    {
        "live.compared_at",
        "live.run_id",
        "live.window",
        "live.champion_version",
        "live.metric",
        "live.shared",
        "live.labelled",
        "live.baseline",
        "live.agreement",
        "live.drift_js",
        "live.challenger_score",
        "live.champion_score",
        "live.gain",
        "live.ci_lower",
        "live.ci_upper",
        "live.ci_level",
        "live.resamples",
        "live.baseline_gain",
        "live.baseline_ci_lower",
        "live.baseline_ci_upper",
        *(
            f"live.{role}_{key}"
            for role in ("champion", "challenger")
            for key in ("error_rate", "latency_p50_ms", "latency_p99_ms")
        ),
    }
)


def _run_tags(found: LiveComparison) -> dict[str, str]:
    evidence = found.evidence
    if evidence.interval is not None:
        verdict = (
            f"gain {live.describe(evidence.interval)} on {evidence.labelled} labelled shared "
            "requests"
        )
    else:
        verdict = f"{evidence.labelled} labelled shared requests: no interval yet"
    return {
        "model.name": found.model_name,
        "model.version": found.challenger.version,
        "live.champion_version": found.champion.version,
        "live.challenger_version": found.challenger.version,
        "monitor.kind": "live-compare",
        "monitor.window_start": (
            "" if found.window_start is None else found.window_start.isoformat()
        ),
        "monitor.window_end": found.window_end.isoformat(),
        "mlflow.note.content": (
            f"Live comparison of {found.model_name} challenger v{found.challenger.version} with "
            f"champion v{found.champion.version} on {evidence.shared} shared requests: {verdict}."
        ),
    }


def _read(
    log: PredictionLog,
    config: PipelineConfig,
    versions: list[str],
    since: datetime | None,
    until: datetime,
) -> tuple[pd.DataFrame, pd.Timestamp | None]:
    """Both versions' rows, only the columns the comparison needs, and the first timestamp."""
    frames = []
    first: pd.Timestamp | None = None
    for chunk in log.live_rows(
        versions, chunk_rows=config.monitoring.chunk_rows, since=since, until=until
    ):
        chunk_first = chunk["timestamp"].min()
        first = chunk_first if first is None else min(first, chunk_first)
        kept = [c for c in chunk.columns if c in _KEPT or c.startswith(PROBA_PREFIX)]
        frames.append(chunk[[*kept, "model_version"]])
    if not frames:
        columns = [*_KEPT, "model_version"]
        return pd.DataFrame({c: pd.Series(dtype="object") for c in columns}), None
    return pd.concat(frames, ignore_index=True), first


def _answers(rows: pd.DataFrame) -> pd.DataFrame:
    """One version's answers (rows without an error), one per key, the latest logged winning
    (a client that reuses a request id must not pair one answer with several)."""
    answered = rows[rows["error"].isna()]
    columns = [
        *KEY_COLUMNS,
        "prediction",
        *(c for c in rows.columns if c.startswith(PROBA_PREFIX) and rows[c].notna().any()),
    ]
    return answered[columns].drop_duplicates(list(KEY_COLUMNS), keep="last")


def _baseline(
    client: MlflowClient, config: PipelineConfig, challenger: ModelVersion
) -> tuple[bootstrap.Predictions | None, str | None]:
    """The trivial model's answer for any row, from the challenger's training run's tags."""
    try:
        tags: Mapping[str, str] = client.get_run(str(challenger.run_id)).data.tags
    except MlflowException:
        return None, None
    try:
        if config.task == "classification":
            balance = json.loads(tags[CLASS_BALANCE_TAG])
            classes = tuple(sorted(str(k) for k in balance))
            counts = np.array([float(balance[c]) for c in classes])
            majority = classes[int(np.argmax(counts))]
            return (
                bootstrap.Predictions(
                    np.array([majority], dtype=object), (counts / counts.sum())[None, :], classes
                ),
                f"always '{majority}', with the class shares of v{challenger.version}'s data",
            )
        mean = float(json.loads(tags[TARGET_SUMMARY_TAG])["mean"])
        return (
            bootstrap.Predictions(np.array([mean]), None, ()),
            f"always {mean:.4g}, the target mean of v{challenger.version}'s data",
        )
    except (KeyError, ValueError, TypeError, ZeroDivisionError):
        logger.warning(
            "The run of version %s records no %s: live-compare shows no trivial baseline",
            challenger.version,
            CLASS_BALANCE_TAG if config.task == "classification" else TARGET_SUMMARY_TAG,
        )
        return None, None


def _no_shared_requests(
    log: PredictionLog,
    config: PipelineConfig,
    versions: Versions,
    since: datetime | None,
    until: datetime,
    mine: dict[str, pd.DataFrame],
) -> DataValidationError:
    name = config.registered_model
    champion, challenger = str(versions.champion.version), str(versions.challenger.version)
    window = describe_window(since, until)
    counts = ", ".join(
        f"v{v}: {len(frame)} rows ({int(frame['error'].notna().sum())} failed)"
        for v, frame in mine.items()
    )
    found = log.versions(since=since, until=until)
    others = ", ".join(f"v{v} ({n} rows)" for v, n in found.items()) or "none"
    return DataValidationError(
        f"no request of {name} {window} was answered by both champion v{champion} and "
        f"challenger v{challenger} ({counts}; versions in the log: {others}): serve with "
        "SERVING_CHALLENGER_MODE=shadow (or canary) so both answer the same requests, or widen "
        "the window with --since/--until"
    )
