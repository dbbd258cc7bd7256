"""Gate: promote the candidate only if it is good enough, better than a trivial baseline and
better than the champion.

Every model compared is scored with the same metric function on the same rows: the
candidate's held-out rows that no model compared ever trained on. Row identity does not depend
on dtypes (``features.row_hashes``), so a champion trained on a CSV of integers is recognised
in a retrain's data read back as floats. Without that restriction a champion trained on another
split (or on older data the new data contains) would be scored partly on its own training
rows, and the gate would favour it.

The baseline (``baseline.py``) is what a model that ignores the features scores; the gain over
it and over the champion each get a paired bootstrap interval.

Where a candidate that passes goes depends on ``gate.live``: without it, to Production (the
champion); with it, to Staging as the challenger (``gate.decision=staged``), which the server
runs beside the champion and ``python -m pipeline live-gate`` promotes or rejects on live
traffic. With ``gate.live`` the comparison with the champion only screens (a candidate shown
worse is rejected; live-gate asks for the significant gain); the threshold and the baseline
apply as always. The first model ever goes to Production either way: with no champion there
is nothing to judge it against live.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.tracking import MlflowClient
from sklearn.base import BaseEstimator
from sklearn.pipeline import Pipeline

from pipeline import artifacts, model_io
from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError, RegistryError
from pipeline.failpoints import failpoint
from pipeline.registry import production, schema, transaction
from pipeline.steps import baseline, bootstrap, evaluate, features
from pipeline.steps.features import Split

logger = logging.getLogger(__name__)

MIN_COMPARISON_ROWS = 10
# The bootstrap's rows are capped so its cost is bounded whatever the held-out size; the
# reason says so when the cap applies.
BOOTSTRAP_ROW_CAP = 250_000
# How often the gate judges again when Production changes under it before it gives up.
MAX_JUDGEMENTS = 3


@dataclass(frozen=True)
class GateDecision:
    name: str
    version: str
    decision: Literal["promoted", "staged", "rejected"]
    """promoted: to Production; staged: to Staging as the challenger (gate.live); rejected."""
    reason: str
    metric: str
    candidate_value: float
    champion_version: str | None
    champion_value: float | None
    comparison_rows: int
    rule: str
    gain: float | None = None
    ci_lower: float | None = None
    ci_upper: float | None = None
    ci_level: float | None = None
    resamples: int | None = None
    candidate_compared: float | None = None
    """The candidate's score on the comparison rows (``candidate_value`` is on all its
    held-out rows)."""
    baseline_value: float | None = None
    """The trivial baseline's score on the comparison rows."""
    baseline_ci_lower: float | None = None
    baseline_ci_upper: float | None = None

    @property
    def promoted(self) -> bool:
        """True when the candidate went to Production (a staged one is not the champion yet)."""
        return self.decision == "promoted"

    @property
    def stage(self) -> str | None:
        """Where the candidate went: Production, Staging (the challenger), or None (rejected)."""
        return _DESTINATIONS.get(self.decision)

    @property
    def destination(self) -> str:
        """Where the candidate went, in words for main's output."""
        if self.decision == "staged":
            return (
                f"{production.STAGING} (challenger): judge it on live traffic with "
                f"`{LIVE_GATE_COMMAND}`"
            )
        return production.PRODUCTION if self.promoted else "nowhere (rejected)"


_DESTINATIONS = {"promoted": production.PRODUCTION, "staged": production.STAGING}
LIVE_GATE_COMMAND = "python -m pipeline live-gate --config <config>"


@dataclass(frozen=True)
class _Comparison:
    """The candidate against one other model (the champion, or the baseline in `champion`)."""

    candidate: float | None
    champion: float | None
    rows: int
    problem: str | None
    interval: bootstrap.GainInterval | None = None
    mask: np.ndarray | None = None
    """Held-out rows the other model never trained on."""
    scored: _Scored | None = field(default=None, repr=False, compare=False)
    """Both models' answers on the compared rows, for the interval (`_with_intervals`)."""


@dataclass(frozen=True)
class _Scored:
    mask: np.ndarray
    y: np.ndarray
    candidate: evaluate.Answers
    other: evaluate.Answers


def run(
    config: PipelineConfig,
    version: str,
    model: Pipeline,
    data_split: Split,
    evaluated: evaluate.EvaluationResult | None = None,
) -> GateDecision:
    """Decide on `version`, tag it with the decision and reason, and promote it if it passed
    (to Staging as the challenger instead, when `gate.live` is on and a champion exists).

    The evidence (scores, bootstrap) is computed outside the Production lock against the
    champion of that moment. Under the lock the gate only reconciles, checks that the champion
    is still that one (judging again against the new one when it changed) and writes: a
    rejection as tags with `gate.decision` last; a promotion as one registry transaction whose
    outcome, written last, is the gate's tags. So two pipelines finishing together are judged
    one after the other, and a gate killed anywhere never leaves a false `promoted` (or
    `staged`).

    ``evaluated``: what evaluate made of the same model and split (its answers on every
    held-out row, the trivial baseline fitted on the training rows), used instead of asking
    the model and fitting the baseline again."""
    client = MlflowClient()
    name = config.registered_model
    metric = config.gate.metric
    # The candidate answers every held-out row once; each comparison reads its rows from that.
    answers = evaluated.answers if evaluated is not None else None
    if answers is None:
        answers = evaluate.Answers.of(config, model, data_split.X_test)
    trivial = evaluated.baseline if evaluated is not None else None
    if trivial is None:
        trivial = baseline.fit(config, data_split.X_train, data_split.y_train)
    held_out = evaluate.scores(config, data_split.y_test, answers)
    if metric not in held_out:
        raise PipelineError(
            f"gate.metric '{metric}' could not be computed on the held-out rows of version "
            f"{version}; choose another gate.metric"
        )
    transaction.ensure_consistent(client, name)
    champion = production.production_version(client, name)
    if config.gate.live:
        _refuse_the_challenger(client, name, str(version))
    for _ in range(MAX_JUDGEMENTS):
        _refuse_the_champion(name, version, champion)
        decision = _judge(
            config, client, str(version), champion, answers, trivial, data_split, held_out
        )
        with production.production_lock(client, name):
            transaction.reconcile(client, name)
            current = production.production_version(client, name)
            if _version_of(current) == _version_of(champion):
                _commit(client, decision)
                return decision
        logger.info(
            "Production of '%s' changed from %s to %s while the gate judged version %s; "
            "judging again against the new champion",
            name,
            _version_of(champion) or "none",
            _version_of(current) or "none",
            version,
        )
        champion = current
    raise RegistryError(
        f"Production of '{name}' changed {MAX_JUDGEMENTS} times while the gate judged version "
        f"{version}; run the gate again (python -m pipeline gate --version {version})"
    )


def _refuse_the_champion(name: str, version: str, champion: ModelVersion | None) -> None:
    if champion is not None and str(champion.version) == str(version):
        raise RegistryError(f"version {version} of '{name}' is already in Production")


def _refuse_the_challenger(client: MlflowClient, name: str, version: str) -> None:
    challenger = production.challenger_version(client, name)
    if challenger is not None and str(challenger.version) == version:
        raise RegistryError(
            f"version {version} of '{name}' is already in Staging (the challenger); judge it "
            f"on live traffic with `{LIVE_GATE_COMMAND}`"
        )


def _version_of(model_version: ModelVersion | None) -> str | None:
    return None if model_version is None else str(model_version.version)


def _judge(
    config: PipelineConfig,
    client: MlflowClient,
    version: str,
    champion: ModelVersion | None,
    answers: evaluate.Answers,
    trivial: baseline.Baseline,
    data_split: Split,
    held_out: dict[str, float],
) -> GateDecision:
    """The decision on `version` against `champion`: the slow part, run without the lock."""
    metric = config.gate.metric
    # Inputs first: a candidate Production's clients could not call is rejected for that
    # reason alone, and the champion is not scored on rows it may not even accept.
    schema_problem = schema.gate_rejection(
        client,
        config.registered_model,
        version,
        _version_of(champion),
        allow_schema_change=config.gate.allow_schema_change,
    )
    trained_on, compared = data_split.row_hashes()
    rows = ~features.seen_in(compared, trained_on)
    comparison = None
    if champion is not None and schema_problem is None:
        comparison = _compare(config, champion, answers, data_split, rows)
        rows = rows & comparison.mask if comparison.mask is not None else rows
    versus_baseline = _versus_baseline(config, answers, trivial, data_split, rows)
    comparison, versus_baseline = _with_intervals(config, comparison, versus_baseline)
    passed, reason = (
        (False, schema_problem)
        if schema_problem is not None
        else _decide(config, held_out[metric], champion, comparison, versus_baseline)
    )
    interval = comparison.interval if comparison else None
    over_baseline = versus_baseline.interval
    outcome, reason = _destination(config, passed, champion, reason)
    return GateDecision(
        name=config.registered_model,
        version=version,
        decision=outcome,
        reason=reason,
        metric=metric,
        candidate_value=held_out[metric],
        champion_version=_version_of(champion),
        champion_value=comparison.champion if comparison else None,
        comparison_rows=comparison.rows if comparison else versus_baseline.rows,
        rule=describe_rule(config),
        gain=interval.gain if interval else None,
        ci_lower=interval.lower if interval else None,
        ci_upper=interval.upper if interval else None,
        ci_level=interval.level if interval else over_baseline.level if over_baseline else None,
        resamples=interval.resamples if interval else None,
        candidate_compared=comparison.candidate if comparison else versus_baseline.candidate,
        baseline_value=versus_baseline.champion,
        baseline_ci_lower=over_baseline.lower if over_baseline else None,
        baseline_ci_upper=over_baseline.upper if over_baseline else None,
    )


def _destination(
    config: PipelineConfig, passed: bool, champion: ModelVersion | None, reason: str
) -> tuple[Literal["promoted", "staged", "rejected"], str]:
    """The decision a pass or a fail becomes, and the reason saying where the candidate goes."""
    if not passed:
        return "rejected", reason
    if not config.gate.live:
        return "promoted", reason
    if champion is None:
        return "promoted", (
            f"{reason}; straight to {production.PRODUCTION} although gate.live is on: with no "
            "champion there is nothing to judge it against on live traffic"
        )
    return "staged", (
        f"{reason}; sent to {production.STAGING} (challenger) since gate.live is on: judge it "
        f"on live traffic with `{LIVE_GATE_COMMAND}`"
    )


def _commit(client: MlflowClient, decision: GateDecision) -> None:
    """Write the decision under the lock; the `gate.decision` tag is always the last write."""
    tags = _tags(decision)
    if decision.stage is not None:
        # Production or Staging: one registry transaction whose outcome is the gate's tags.
        transaction.change_stage(
            client,
            decision.name,
            decision.version,
            stage=decision.stage,
            action="gate",
            reason=decision.reason,
            outcome_tags=tags,
        )
        return
    outcome = tags.pop(artifacts.GATE_DECISION)
    if artifacts.GATE_DECISION in client.get_model_version(decision.name, decision.version).tags:
        # An earlier gate's decision must not stand beside this gate's half-written reasons.
        client.delete_model_version_tag(decision.name, decision.version, artifacts.GATE_DECISION)
    for key, value in tags.items():
        client.set_model_version_tag(decision.name, decision.version, key, value)
    failpoint("gate.after_evidence_tags")
    client.set_model_version_tag(decision.name, decision.version, artifacts.GATE_DECISION, outcome)
    logger.info(
        "Gate rejected '%s' version %s: %s", decision.name, decision.version, decision.reason
    )


def recorded_decision(config: PipelineConfig, version: ModelVersion) -> GateDecision:
    """The decision an earlier gate recorded on `version`, read back from its tags."""
    tags = version.tags

    def number(key: str) -> float | None:
        value = tags.get(key)
        return None if value in (None, "none") else float(value)

    recorded = tags[artifacts.GATE_DECISION]
    decision: Literal["promoted", "staged", "rejected"] = (
        "promoted" if recorded == "promoted" else "staged" if recorded == "staged" else "rejected"
    )
    return GateDecision(
        name=str(version.name),
        version=str(version.version),
        decision=decision,
        reason=tags.get("gate.reason", ""),
        metric=tags.get("gate.metric", config.gate.metric),
        candidate_value=number("gate.candidate_value") or 0.0,
        champion_version=None
        if tags.get("gate.champion_version") in (None, "none")
        else tags["gate.champion_version"],
        champion_value=number("gate.champion_value"),
        comparison_rows=int(tags.get("gate.comparison_rows", "0")),
        rule=tags.get("gate.rule", describe_rule(config)),
        gain=number("gate.diff"),
        ci_lower=number("gate.ci_lower"),
        ci_upper=number("gate.ci_upper"),
        ci_level=number("gate.ci_level"),
        resamples=None if "gate.resamples" not in tags else int(tags["gate.resamples"]),
        candidate_compared=number("gate.candidate_compared_value"),
        baseline_value=number("gate.baseline_value"),
        baseline_ci_lower=number("gate.baseline_ci_lower"),
        baseline_ci_upper=number("gate.baseline_ci_upper"),
    )


def describe_rule(config: PipelineConfig) -> str:
    """The promotion rule in words, as the model card and the version tags show it."""
    gate = config.gate
    direction = "lower is better" if config.gate_lower_is_better() else "higher is better"
    parts = [f"{gate.metric} ({direction})"]
    if gate.threshold is not None:
        parts.append(f"must reach {gate.threshold:g}")
    level = f"{gate.bootstrap.confidence:.0%}"
    if gate.beat_baseline:
        parts.append(f"must beat the trivial baseline (lower {level} confidence bound above 0)")
    parts.append(f"must beat the champion by more than 0 and by at least {gate.min_improvement:g}")
    if gate.require_significant_gain:
        parts.append(f"the lower {level} confidence bound of the gain must be above 0")
    return "; ".join(parts)


def _compare(
    config: PipelineConfig,
    champion: ModelVersion,
    answers: evaluate.Answers,
    data_split: Split,
    unseen_by_candidate: np.ndarray,
) -> _Comparison:
    try:
        champion_model = model_io.load_model(f"models:/{champion.name}/{champion.version}")
    except PipelineError as exc:
        return _Comparison(None, None, 0, f"it could not be loaded ({exc})")
    mask = unseen_by_candidate & _recorded_unseen_by(champion.run_id, data_split)
    X, y = data_split.X_test[mask], data_split.y_test[mask]
    rows = int(mask.sum())
    if rows < MIN_COMPARISON_ROWS or (config.task == "classification" and y.nunique() < 2):
        return _Comparison(
            None,
            None,
            rows,
            f"only {rows} held-out rows were unseen by both in training",
            mask=mask,
        )
    try:
        # The candidate already scored every held-out row: a failure here is the champion's.
        return _paired(config, answers, champion_model, X, y, mask)
    except (ValueError, KeyError, TypeError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.warning("Champion v%s cannot score these rows: %s", champion.version, first_line)
        return _Comparison(
            None, None, rows, f"it cannot score these rows ({first_line})", mask=mask
        )


def _versus_baseline(
    config: PipelineConfig,
    answers: evaluate.Answers,
    trivial: baseline.Baseline,
    data_split: Split,
    mask: np.ndarray,
) -> _Comparison:
    """The candidate against the trivial baseline on the comparison rows."""
    X, y = data_split.X_test[mask], data_split.y_test[mask]
    rows = int(mask.sum())
    if rows < MIN_COMPARISON_ROWS or (config.task == "classification" and y.nunique() < 2):
        return _Comparison(None, None, rows, f"only {rows} comparison rows", mask=mask)
    return _paired(config, answers, trivial.model, X, y, mask)


def _paired(
    config: PipelineConfig,
    candidate: evaluate.Answers,
    other: Pipeline | BaseEstimator,
    X: pd.DataFrame,
    y: pd.Series,
    mask: np.ndarray,
) -> _Comparison:
    """Both models' scores on the same rows; the interval of the gain is `_with_intervals`'.

    ``candidate`` holds the candidate's answers on every held-out row, ``mask`` picks the
    compared ones (``X``, ``y``); the other model answers them once."""
    metric = config.gate.metric
    ours_answers = candidate.take(mask)
    theirs_answers = evaluate.Answers.of(config, other, X)
    theirs = evaluate.scores(config, y, theirs_answers)
    ours = evaluate.scores(config, y, ours_answers)
    if metric not in theirs or metric not in ours:
        return _Comparison(
            None, None, len(y), f"'{metric}' cannot be computed on these rows", mask=mask
        )
    return _Comparison(
        ours[metric],
        theirs[metric],
        len(y),
        None,
        mask=mask,
        scored=_Scored(mask, np.asarray(y), ours_answers, theirs_answers),
    )


def _with_intervals(
    config: PipelineConfig, champion: _Comparison | None, trivial: _Comparison
) -> tuple[_Comparison | None, _Comparison]:
    """The comparisons with the paired interval of the candidate's gain. On the same rows (the
    usual case) the champion's and the baseline's share one bootstrap: the same resamples,
    drawn once, with the candidate's metric computed once on them."""
    ours = champion.scored if champion is not None else None
    theirs = trivial.scored
    if ours is not None and theirs is not None and np.array_equal(ours.mask, theirs.mask):
        assert champion is not None
        try:
            over_champion, over_trivial = _intervals(config, ours, [ours.other, theirs.other])
            return (
                replace(champion, interval=over_champion),
                replace(trivial, interval=over_trivial),
            )
        except (ValueError, KeyError, TypeError):
            pass  # the champion's answers may fail where the baseline's do not: see below
    return _with_champion_interval(config, champion), _with_interval(config, trivial)


def _with_interval(config: PipelineConfig, comparison: _Comparison) -> _Comparison:
    if comparison.scored is None:
        return comparison
    (interval,) = _intervals(config, comparison.scored, [comparison.scored.other])
    return replace(comparison, interval=interval)


def _with_champion_interval(
    config: PipelineConfig, comparison: _Comparison | None
) -> _Comparison | None:
    """As `_with_interval`; a failure is the champion's (the candidate's answers are fine)."""
    if comparison is None:
        return None
    try:
        return _with_interval(config, comparison)
    except (ValueError, KeyError, TypeError) as exc:
        first_line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        logger.warning("Champion answers cannot be bootstrapped: %s", first_line)
        return _Comparison(
            None,
            None,
            comparison.rows,
            f"it cannot score these rows ({first_line})",
            mask=comparison.mask,
        )


def _intervals(
    config: PipelineConfig, scored: _Scored, others: list[evaluate.Answers]
) -> tuple[bootstrap.GainInterval, ...]:
    """The candidate's gain over each of `others` on the rows of `scored`, one bootstrap."""
    chosen = _bootstrap_rows(len(scored.y), config.gate.bootstrap.seed)
    return bootstrap.paired_gain_intervals(
        config.gate.metric,
        scored.y if chosen is None else scored.y[chosen],
        challenger=_for_bootstrap(scored.candidate, chosen),
        others=[_for_bootstrap(other, chosen) for other in others],
        settings=config.gate.bootstrap,
        lower_is_better=config.gate_lower_is_better(),
    )


def _for_bootstrap(answers: evaluate.Answers, rows: np.ndarray | None) -> bootstrap.Predictions:
    chosen = answers if rows is None else answers.take(rows)
    return bootstrap.Predictions(
        predicted=chosen.predicted, proba=chosen.proba, classes=tuple(chosen.classes or ())
    )


def _bootstrap_rows(rows: int, seed: int) -> np.ndarray | None:
    """At most BOOTSTRAP_ROW_CAP rows (a seeded sample, as positions) for the interval, which
    costs resamples x rows (a few passes over rows x resamples); None: every row. The scores
    use every row."""
    if rows <= BOOTSTRAP_ROW_CAP:
        return None
    return np.sort(np.random.default_rng(seed).choice(rows, BOOTSTRAP_ROW_CAP, replace=False))


def _recorded_unseen_by(run_id: str | None, data_split: Split) -> np.ndarray:
    """Mask of held-out rows absent from the run's recorded training rows (all, if unrecorded).

    Runs recorded dtype-dependent fingerprints before row identity version 2 and do not say
    which version they wrote: a row matching either version counts as seen."""
    everything = np.ones(len(data_split.y_test), dtype=bool)
    if not run_id:
        return everything
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path=artifacts.TRAINING_ROWS,
                dst_path=tmp,
            )
        except Exception:  # any failure means the rows were not recorded
            logger.warning("Run %s recorded no training rows; comparing on all rows", run_id)
            return everything
        with np.load(Path(local), allow_pickle=False) as recorded:
            columns = [str(c) for c in recorded["columns"]]
            seen = recorded["hashes"]
    if not set(columns) <= set(data_split.X_test.columns):
        return everything
    X, y = data_split.X_test, data_split.y_test
    same_columns = columns == sorted(str(c) for c in X.columns)
    ours = data_split.row_hashes()[1] if same_columns else features.row_hashes(X, y, columns)
    current = features.seen_in(ours, seen)
    legacy = features.seen_in(features.row_hashes(X, y, columns, version=1), seen)
    return ~(current | legacy)


def _decide(
    config: PipelineConfig,
    candidate: float,
    champion: ModelVersion | None,
    comparison: _Comparison | None,
    versus_baseline: _Comparison,
) -> tuple[bool, str]:
    """(passed, reason): the threshold, the baseline, then the first-model rule or the champion."""
    below = _below_threshold(config, candidate)
    if below is not None:
        return False, below
    trivial = _against_baseline(config, versus_baseline)
    if trivial is not None:
        return False, trivial
    if champion is None or comparison is None:
        threshold = config.gate.threshold
        bar = "" if threshold is None else f", meets threshold {threshold:.4f}"
        return True, (
            f"first model: no champion yet; {config.gate.metric} {candidate:.4f}{bar}"
            f"{_baseline_evidence(versus_baseline)}"
        )
    if comparison.problem is not None or comparison.candidate is None:
        return False, (
            f"cannot compare with champion v{champion.version}: {comparison.problem}; "
            "promote by hand with `python -m pipeline promote` if intended"
        )
    return _against_champion(config, str(champion.version), comparison)


def _against_baseline(config: PipelineConfig, versus: _Comparison) -> str | None:
    """Why the candidate is no better than a model that ignores the features, or None."""
    if not config.gate.beat_baseline:
        return None
    if versus.interval is None or versus.candidate is None or versus.champion is None:
        return (
            f"cannot show it beats the trivial baseline: {versus.problem}; add held-out rows, "
            "or set gate.beat_baseline: false"
        )
    if versus.interval.lower > 0:
        return None
    return (
        f"not better than the trivial baseline: {config.gate.metric} {versus.candidate:.4f} vs "
        f"baseline {versus.champion:.4f}; gain {versus.interval.describe()}"
    )


def _baseline_evidence(versus: _Comparison) -> str:
    if versus.interval is None or versus.champion is None:
        return ""
    return f"; beats the trivial baseline ({versus.champion:.4f}) by {versus.interval.describe()}"


def _below_threshold(config: PipelineConfig, candidate: float) -> str | None:
    threshold = config.gate.threshold
    if threshold is None:
        return None
    lower = config.gate_lower_is_better()
    fails = candidate > threshold if lower else candidate < threshold
    if not fails:
        return None
    op = ">" if lower else "<"
    return f"{config.gate.metric} {candidate:.4f} {op} threshold {threshold:.4f}"


def _against_champion(
    config: PipelineConfig, champion: str, comparison: _Comparison
) -> tuple[bool, str]:
    """The candidate must gain more than 0 and at least min_improvement (and be significant);
    with ``gate.live``, only not be shown worse (live-gate then asks for the significant gain)."""
    gate = config.gate
    ours, theirs = comparison.candidate, comparison.champion
    assert ours is not None and theirs is not None  # _decide handled the incomplete ones
    lower = config.gate_lower_is_better()
    gain = theirs - ours if lower else ours - theirs
    op, sign = (">", "-") if lower else ("<", "+")
    evidence = _evidence(comparison)
    scores = f"{gate.metric} {ours:.4f} {{}} champion v{champion} {theirs:.4f}"
    if gate.live:
        return _screen_for_live(comparison, gain, scores.format("vs"), evidence)
    if gain == 0 and gate.min_improvement == 0:
        return False, f"{scores.format('equals')}: no improvement{evidence}"
    if not (gain > 0 and gain >= gate.min_improvement):
        return False, f"{scores.format(op)} {sign} {gate.min_improvement:.4f}{evidence}"
    beats = f"{scores.format('beats')} {sign} {gate.min_improvement:.4f}"
    interval = comparison.interval
    if gate.require_significant_gain and (interval is None or interval.lower <= 0):
        return False, f"{beats}, but the gain is within noise{evidence}"
    return True, f"{beats}{evidence}"


def _screen_for_live(
    comparison: _Comparison, gain: float, scores: str, evidence: str
) -> tuple[bool, str]:
    """With ``gate.live`` the held-out rows only screen: a candidate the interval shows worse
    than the champion stays off live traffic; one that may be as good or better goes on to be
    judged on production requests, where live-gate asks for a gain whose interval excludes 0.
    Asking for a significant gain offline too would keep from live traffic the challengers
    the past's rows cannot tell apart from the champion, which are the ones live evidence is
    for (two good models on a small held-out set tie)."""
    interval = comparison.interval
    worse = interval.upper < 0 if interval is not None else gain < 0
    if worse:
        return False, f"{scores}: worse than the champion, not worth live traffic{evidence}"
    if interval is not None and interval.lower > 0:
        return True, f"{scores}: better than the champion{evidence}"
    return True, f"{scores}: not shown worse than the champion{evidence}"


def _evidence(comparison: _Comparison) -> str:
    if comparison.interval is not None:
        capped = ""
        if comparison.interval.rows < comparison.rows:
            capped = (
                f"; the interval is from a seeded sample of {comparison.interval.rows} of the "
                f"{comparison.rows} rows (row cap {BOOTSTRAP_ROW_CAP})"
            )
        return f"; gain {comparison.interval.describe()}{capped}"
    return f" (on {comparison.rows} held-out rows unseen by both)"


def _tags(decision: GateDecision) -> dict[str, str]:
    """The version tags that record a decision, `gate.decision` last (it is written last)."""
    tags = {
        "gate.reason": decision.reason,
        "gate.metric": decision.metric,
        "gate.candidate_value": f"{decision.candidate_value:.6g}",
        "gate.champion_version": decision.champion_version or "none",
        "gate.champion_value": (
            "none" if decision.champion_value is None else f"{decision.champion_value:.6g}"
        ),
        "gate.comparison_rows": str(decision.comparison_rows),
        "gate.rule": decision.rule,
    }
    optional = {
        "gate.candidate_compared_value": decision.candidate_compared,
        "gate.baseline_value": decision.baseline_value,
        "gate.baseline_ci_lower": decision.baseline_ci_lower,
        "gate.baseline_ci_upper": decision.baseline_ci_upper,
    }
    tags.update({key: f"{value:.6g}" for key, value in optional.items() if value is not None})
    if decision.gain is not None:
        tags["gate.diff"] = f"{decision.gain:.6g}"
    if decision.ci_lower is not None and decision.ci_upper is not None:
        tags["gate.ci_lower"] = f"{decision.ci_lower:.6g}"
        tags["gate.ci_upper"] = f"{decision.ci_upper:.6g}"
        tags["gate.ci_level"] = f"{decision.ci_level:g}"
        tags["gate.resamples"] = str(decision.resamples)
    tags[artifacts.GATE_DECISION] = decision.decision
    return tags
