"""Search: hyperparameter trials by cross-validation, each logged as a nested MLflow run.

Trials only ever see the training split; the held-out rows stay untouched for evaluation and
the gate, so the best trial's score is not what the candidate is judged by.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
from joblib import effective_n_jobs, parallel_config
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from scipy import stats
from sklearn.base import clone
from sklearn.model_selection import (
    BaseCrossValidator,
    GridSearchCV,
    KFold,
    ParameterGrid,
    ParameterSampler,
    StratifiedKFold,
)
from sklearn.pipeline import Pipeline

from pipeline.config import PipelineConfig, SearchConfig, SearchRange
from pipeline.errors import ConfigError, PipelineError
from pipeline.steps import progress
from pipeline.steps.features import Split

logger = logging.getLogger(__name__)

SCORE = "search_score"


@dataclass(frozen=True)
class Trial:
    number: int
    params: Mapping[str, Any]
    run_id: str
    score_mean: float | None
    score_std: float | None
    cv_metrics: Mapping[str, float]
    error: str | None


@dataclass(frozen=True)
class SearchResult:
    strategy: str
    scoring: str
    trials: tuple[Trial, ...]
    best: Trial

    @property
    def best_params(self) -> Mapping[str, Any]:
        return self.best.params


def run(
    config: PipelineConfig,
    model: Pipeline,
    data_split: Split,
    *,
    parent_run_id: str,
    experiment_id: str,
    cv_scoring: Mapping[str, str],
) -> SearchResult:
    """Cross-validate every setting of `config.search`; the best by its scoring wins.

    `cv_scoring` are the task's usual CV metrics, logged on every trial so that the parent run
    can report the best trial's `cv_*` like an unsearched candidate.
    """
    search = config.search
    if search is None:
        raise PipelineError("the config has no 'search' section")
    settings = candidate_settings(search, config.split.seed)
    scoring = config.search_scoring
    folds = search.cv_folds or config.split.cv_folds
    seed = config.split.seed if search.seed is None else search.seed
    cv: BaseCrossValidator = (
        StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
        if config.stratified
        else KFold(n_splits=folds, shuffle=True, random_state=seed)
    )
    # Scores only, no refit: the caller fits the best setting. A failed fit scores NaN.
    searcher = GridSearchCV(
        model,
        param_grid={},
        scoring={SCORE: scoring, **{f"cv_{k}": v for k, v in cv_scoring.items()}},
        n_jobs=search.n_jobs,
        refit=False,
        cv=cv,
    )
    logger.info(
        "Searching %d %s settings by %s with %d-fold CV (n_jobs=%d)",
        len(settings),
        search.strategy,
        scoring,
        folds,
        search.n_jobs,
    )
    started = time.monotonic()
    client = MlflowClient()
    parent_name = client.get_run(parent_run_id).info.run_name or "search"
    with _backend(search):
        trials = [
            _log_trial(client, experiment_id, parent_run_id, parent_name, number, params, outcome)
            for number, (params, outcome) in enumerate(
                progress.bar(
                    zip(settings, _outcomes(searcher, settings, data_split), strict=True),
                    total=len(settings),
                    desc="search",
                    unit="trial",
                )
            )
        ]
    finished = [t for t in trials if t.score_mean is not None]
    if not finished:
        raise PipelineError(
            f"all {len(trials)} search trials failed; the first error: {trials[0].error}. "
            "Fix search.space in the config"
        )
    # Ties go to the earliest trial, so the choice is deterministic for a given space and seed.
    best = max(finished, key=lambda t: (t.score_mean, -t.number))
    logger.info(
        "Search done in %.1f s: best trial %d (%s=%.4f) of %d (%d failed)",
        time.monotonic() - started,
        best.number,
        scoring,
        best.score_mean,
        len(trials),
        len(trials) - len(finished),
    )
    return SearchResult(strategy=search.strategy, scoring=scoring, trials=tuple(trials), best=best)


def _backend(search: SearchConfig) -> AbstractContextManager[None]:
    """Where the fits run: local worker processes, or Spark tasks (`search.backend`)."""
    if search.backend == "spark":
        from pipeline.steps.spark_search import trials_on_spark

        return trials_on_spark(search.n_jobs)
    return nullcontext()


def candidate_settings(search: SearchConfig, default_seed: int) -> list[dict[str, Any]]:
    """The parameter settings to try, in a fixed order for a given config."""
    if search.strategy == "grid":
        grid = list(ParameterGrid({k: list(v) for k, v in search.space.items()}))
        if search.trials is not None and len(grid) > search.trials:
            raise ConfigError(
                f"search: the grid has {len(grid)} settings but search.trials caps it at "
                f"{search.trials}; shrink search.space or raise search.trials"
            )
        return [dict(setting) for setting in grid]
    assert search.trials is not None  # the config requires it for random search
    seed = default_seed if search.seed is None else search.seed
    distributions = {k: _distribution(v) for k, v in search.space.items()}
    sampler = ParameterSampler(distributions, n_iter=search.trials, random_state=seed)
    return [{k: _plain(v) for k, v in setting.items()} for setting in sampler]


def _distribution(values: list[Any] | SearchRange) -> Any:
    if isinstance(values, list):
        return values
    if values.type == "int":
        low, high = math.ceil(values.low), math.floor(values.high)
        return _IntLogUniform(low, high) if values.log else stats.randint(low, high + 1)
    if values.log:
        return stats.loguniform(values.low, values.high)
    return stats.uniform(values.low, values.high - values.low)


class _IntLogUniform:
    """Integers from low to high inclusive, log-uniformly (e.g. n_estimators 10..1000)."""

    def __init__(self, low: int, high: int) -> None:
        self._continuous = stats.loguniform(low, high + 1)
        self._high = high

    def rvs(self, random_state: Any = None) -> int:
        return min(int(self._continuous.rvs(random_state=random_state)), self._high)


def _plain(value: Any) -> Any:
    # numpy scalars would be logged as "np.float64(0.3)" and break YAML round trips.
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class _Outcome:
    metrics: Mapping[str, float]  # the cv_* and search_score_* means and stds
    error: str | None


def _outcomes(
    searcher: GridSearchCV, settings: list[dict[str, Any]], data_split: Split
) -> Iterator[_Outcome]:
    # One setting per worker at a time keeps every worker busy, as a single search over all the
    # settings would, while trials are logged and the progress bar moves as the search goes.
    batch = effective_n_jobs(searcher.n_jobs)
    for start in range(0, len(settings), batch):
        chunk = settings[start : start + batch]
        try:
            scored = _scores(searcher, chunk, data_split)
        except ValueError:  # sklearn raises, rather than scoring NaN, when every fit failed
            scored = [{} for _ in chunk]
        for setting, metrics in zip(chunk, scored, strict=True):
            if math.isnan(metrics.get(f"{SCORE}_mean", math.nan)):
                yield _explain(searcher, setting, data_split)
            else:
                yield _Outcome(metrics=metrics, error=None)


def _explain(searcher: GridSearchCV, setting: dict[str, Any], data_split: Split) -> _Outcome:
    """A setting that scored NaN, again in this process and stopping at its first error."""
    # Raised in a worker, the error would kill the pool; here it costs the fits up to it.
    strict = clone(searcher).set_params(n_jobs=1, error_score="raise")
    try:
        with parallel_config(backend="sequential"):  # in this process, whatever the backend
            [metrics] = _scores(strict, [setting], data_split)
    except (ValueError, TypeError, ArithmeticError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return _Outcome(metrics={}, error=message)
    return _Outcome(metrics=metrics, error=None)  # no error: the scorer itself gave NaN


def _scores(
    searcher: GridSearchCV, settings: list[dict[str, Any]], data_split: Split
) -> list[dict[str, float]]:
    """Each setting's means and stds of every scorer, from the search's `cv_results_`."""
    # One grid per setting, so the candidates are exactly `settings`, in their order.
    grid = [{f"model__{k}": [v] for k, v in setting.items()} for setting in settings]
    with warnings.catch_warnings():
        # Convergence and rare-class warnings per fold would drown the progress bar.
        warnings.simplefilter("ignore")
        fitted = clone(searcher).set_params(param_grid=grid)
        results = fitted.fit(data_split.X_train, data_split.y_train).cv_results_
    scores: list[dict[str, float]] = [{} for _ in settings]
    for name, scorer in searcher.scoring.items():
        # sklearn negates errors to maximise them; the search score stays as it ranks.
        sign = -1.0 if name != SCORE and scorer.startswith("neg_") else 1.0
        for i, metrics in enumerate(scores):
            metrics[f"{name}_mean"] = sign * float(results[f"mean_test_{name}"][i])
            metrics[f"{name}_std"] = float(results[f"std_test_{name}"][i])
    return scores


def _log_trial(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    parent_name: str,
    number: int,
    params: Mapping[str, Any],
    outcome: _Outcome,
) -> Trial:
    run = client.create_run(
        experiment_id,
        run_name=f"{parent_name}-trial-{number:03d}",
        tags={MLFLOW_PARENT_RUN_ID: parent_run_id, "search.trial": str(number)},
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    tags = [] if outcome.error is None else [RunTag("search.error", outcome.error[:5000])]
    client.log_batch(
        run_id,
        metrics=[Metric(k, v, now, 0) for k, v in outcome.metrics.items()],
        params=[Param(f"model.{k}", str(v)[:250]) for k, v in params.items()],
        tags=[*tags, RunTag(MLFLOW_RUN_NAME, f"{parent_name}-trial-{number:03d}")],
    )
    client.set_terminated(run_id, "FAILED" if outcome.error else "FINISHED")
    return Trial(
        number=number,
        params=dict(params),
        run_id=run_id,
        score_mean=outcome.metrics.get(f"{SCORE}_mean"),
        score_std=outcome.metrics.get(f"{SCORE}_std"),
        cv_metrics={k: v for k, v in outcome.metrics.items() if k.startswith("cv_")},
        error=outcome.error,
    )
