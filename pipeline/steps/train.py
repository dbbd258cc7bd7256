"""Train: fit the preprocessing + estimator Pipeline and log one candidate run."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import logging
import math
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import skops.io
from sklearn.model_selection import KFold, StratifiedKFold, cross_validate
from sklearn.pipeline import Pipeline
from threadpoolctl import threadpool_limits

from pipeline import artifacts, metrics
from pipeline.config import PipelineConfig
from pipeline.steps import evaluate, features, search, signature
from pipeline.steps.ingest import Dataset
from pipeline.tracking import code_hash, git_state, library_versions, publish_runs_table_view

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    experiment_id: str
    model_uri: str
    model: Pipeline
    split: features.Split
    cv_metrics: Mapping[str, float]
    search: search.SearchResult | None = None


def run(config: PipelineConfig, dataset: Dataset, run_id: str | None = None) -> TrainResult:
    """Fit on the training split and log params, CV metrics, lineage, data and the model.

    With a `search` section, the trials run first as nested runs and the best setting is the
    one fitted here. `run_id` resumes an existing run (the one `mlflow run` created).
    """
    data_split = features.split(config, dataset)
    model = features.build_model(config, dataset)
    experiment = mlflow.set_experiment(config.experiment)
    estimator_name = type(model.named_steps["model"]).__name__
    run_name = f"{config.name}-{estimator_name}-{dataset.data_hash[:8]}"
    with mlflow.start_run(
        run_id=run_id,
        experiment_id=None if run_id else experiment.experiment_id,
        run_name=None if run_id else run_name,
    ) as active:
        if run_id:
            # A run created by `mlflow run` has a generated name; give it the readable one.
            mlflow.set_tag("mlflow.runName", run_name)
        mlflow.set_tags(_lineage_tags(config, dataset, data_split, estimator_name))
        searched = None
        if config.search is not None:
            searched = search.run(
                config,
                model,
                data_split,
                parent_run_id=active.info.run_id,
                experiment_id=active.info.experiment_id,
                cv_scoring={
                    m.name: m.scorer
                    for m in metrics.cross_validated(config.task, config.gate.metric)
                },
            )
            model.set_params(**{f"model__{k}": v for k, v in searched.best_params.items()})
            mlflow.log_params(_search_params(searched))
        mlflow.log_params(_params(config, model, dataset, data_split))
        with warnings.catch_warnings():
            # MLflow registers the local source type twice and warns that it is ambiguous.
            warnings.simplefilter("ignore", UserWarning)
            data_input = signature.dataset_input(
                dataset.frame,
                source=_dataset_source(config),
                targets=dataset.target,
                name=config.registered_model,
                digest=dataset.data_hash[:12],
            )
            mlflow.log_input(data_input, context="training")
        mlflow.log_dict(config.model_dump(mode="json"), artifacts.RESOLVED_CONFIG)
        # The best trial was cross-validated on the same folds already; do not pay twice.
        cv_metrics = (
            dict(searched.best.cv_metrics)
            if searched is not None
            and config.search is not None
            and (config.search.cv_folds or config.split.cv_folds) == config.split.cv_folds
            else _cross_validate(config, model, data_split)
        )
        mlflow.log_metrics(dict(cv_metrics))
        publish_runs_table_view(
            active.info.experiment_id,
            params=_headline_params(config),
            metrics=[
                *(m.held_out for m in metrics.for_task(config.task)),
                *(k for k in cv_metrics if k.endswith("_mean")),
            ],
        )
        model.fit(data_split.X_train, data_split.y_train)
        model_uri = _log_model(model, data_split, dataset)
        _log_training_rows(data_split)
        logger.info(
            "Trained %s in run %s (%s)",
            estimator_name,
            active.info.run_id,
            ", ".join(f"{k}={v:.4f}" for k, v in cv_metrics.items()),
        )
        return TrainResult(
            run_id=active.info.run_id,
            experiment_id=active.info.experiment_id,
            model_uri=model_uri,
            model=model,
            split=data_split,
            cv_metrics=cv_metrics,
            search=searched,
        )


def cache_key(config: PipelineConfig, dataset: Dataset) -> str:
    """Same key, same trained model: config, full data content, pipeline code and libraries."""
    parts = {
        "config": config.config_hash(),
        "data": dataset.data_hash,
        "code": code_hash(),
        "libraries": library_versions(),
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _lineage_tags(
    config: PipelineConfig, dataset: Dataset, data_split: features.Split, estimator: str
) -> dict[str, str]:
    commit, dirty = git_state()
    tags = {
        artifacts.DATA_HASH: dataset.data_hash,
        "data.rows": str(dataset.rows),
        "data.source": dataset.source,
        "data.columns": json.dumps(
            {
                "numeric": list(dataset.numeric_features),
                "categorical": list(dataset.categorical_features),
            }
        ),
        artifacts.GIT_COMMIT: commit,
        artifacts.GIT_DIRTY: dirty,
        "config.hash": config.config_hash(),
        artifacts.CONFIG_NAME: config.name,
        # Where a relative data.path resolves from, so `reproduce` finds the same file.
        artifacts.CONFIG_DIR: str(config.base_dir),
        artifacts.CODE_HASH: code_hash(),
        artifacts.LIBRARIES: json.dumps(library_versions(), sort_keys=True),
        artifacts.CACHE_KEY: cache_key(config, dataset),
        "task": config.task,
        "estimator": estimator,
        "registered_model": config.registered_model,
    }
    if config.task == "classification":
        counts = dataset.y.astype(str).value_counts().sort_index()
        tags["data.class_balance"] = json.dumps({str(k): int(v) for k, v in counts.items()})
    else:
        target = dataset.y.astype(float)
        tags["data.target_summary"] = json.dumps(
            {
                "mean": float(target.mean()),
                "std": float(target.std()),
                "min": float(target.min()),
                "max": float(target.max()),
            }
        )
    return tags


def _search_params(searched: search.SearchResult) -> dict[str, Any]:
    failed = sum(1 for trial in searched.trials if trial.error is not None)
    return {
        "search.strategy": searched.strategy,
        "search.scoring": searched.scoring,
        "search.trials": len(searched.trials),
        "search.failed_trials": failed,
        "search.best_trial": searched.best.number,
        "search.best_score": f"{searched.best.score_mean:.6g}",
    }


def _params(
    config: PipelineConfig, model: Pipeline, dataset: Dataset, data_split: features.Split
) -> dict[str, Any]:
    estimator = model.named_steps["model"]
    params: dict[str, Any] = {
        "estimator": config.estimator.class_path,
        "features.numeric": len(dataset.numeric_features),
        "features.categorical": len(dataset.categorical_features),
        "split.test_size": config.split.test_size,
        "split.seed": config.split.seed,
        "split.stratify": config.stratified,
        "split.train_rows": len(data_split.X_train),
        "split.test_rows": len(data_split.X_test),
        "cv.folds": config.split.cv_folds,
        "preprocessing.scaling": config.preprocessing.scaling,
        "preprocessing.numeric_imputation": config.preprocessing.numeric_imputation,
        "preprocessing.categorical_imputation": config.preprocessing.categorical_imputation,
    }
    # Every constructor parameter, not only the configured ones, so runs compare on defaults too.
    for name, value in estimator.get_params(deep=False).items():
        params[f"model.{name}"] = str(value)[:250]
    return params


def _headline_params(config: PipelineConfig) -> list[str]:
    searched = list(config.search.space) if config.search is not None else []
    names = dict.fromkeys([*config.estimator.params, *searched])
    return ["estimator", *(f"model.{name}" for name in names), "split.seed"]


def _dataset_source(config: PipelineConfig) -> str:
    if config.data_path is not None:
        return str(config.data_path)
    return f"sklearn.datasets.load_{config.data.dataset}"


def _cross_validate(
    config: PipelineConfig, model: Pipeline, data_split: features.Split
) -> dict[str, float]:
    folds = config.split.cv_folds
    cv = (
        StratifiedKFold(n_splits=folds, shuffle=True, random_state=config.split.seed)
        if config.task == "classification"
        else KFold(n_splits=folds, shuffle=True, random_state=config.split.seed)
    )
    chosen = metrics.cross_validated(config.task, config.gate.metric)
    with warnings.catch_warnings():
        # A fold may miss a rare class; the held-out evaluation is what the gate trusts.
        warnings.simplefilter("ignore", UserWarning)
        scores = cross_validate(
            model,
            data_split.X_train,
            data_split.y_train,
            cv=cv,
            scoring=_fold_scorer(config, chosen),
            n_jobs=1,
            error_score="raise",
        )
    result: dict[str, float] = {}
    for metric in chosen:
        # cross_validate names each score of a fold test_<name>: its prefix, not ours.
        values = np.asarray(scores[f"test_{metric.name}"], dtype=float)
        result[f"cv_{metric.name}_mean"] = float(values.mean())
        result[f"cv_{metric.name}_std"] = float(values.std())
    return result


def _fold_scorer(
    config: PipelineConfig, chosen: tuple[metrics.Metric, ...]
) -> Callable[[Pipeline, pd.DataFrame, pd.Series], dict[str, float]]:
    """Every metric of a fold from one set of the model's answers, computed as evaluate does.

    scikit-learn's scorers each ask the model again (labels, then probabilities) and compare
    text labels in Python: on a million rows, scoring the five folds took a third as long as
    fitting them. A metric a fold cannot give (one class among its rows) is NaN."""
    needs_proba = any(m.needs_proba for m in chosen)

    def score(model: Pipeline, X: pd.DataFrame, y: pd.Series) -> dict[str, float]:
        if needs_proba:
            answers = evaluate.Answers.of(config, model, X)
            predicted, proba, classes = answers.predicted, answers.proba, answers.classes
        else:
            predicted, proba = np.asarray(model.predict(X)), None
            classes = list(model.classes_) if config.task == "classification" else None
        values = metrics.prediction_metrics(config.task, y, predicted, proba, classes)
        return {m.name: values.get(m.name, math.nan) for m in chosen}

    return score


def _log_training_rows(data_split: features.Split) -> None:
    # Row fingerprints (not the rows) let a later gate score this model only on rows it
    # never saw, even when the challenger was trained on newer or re-split data.
    columns = sorted(str(c) for c in data_split.X_train.columns)
    hashes, _ = data_split.row_hashes()
    artifact = PurePosixPath(artifacts.TRAINING_ROWS)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / artifact.name
        np.savez_compressed(path, hashes=hashes, columns=np.array(columns, dtype=str))
        mlflow.log_artifact(str(path), artifact_path=str(artifact.parent))


def _log_model(model: Pipeline, data_split: features.Split, dataset: Dataset) -> str:
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    # The whole data set, not only the training rows, so a column whose gaps all fell into the
    # held-out part is still optional.
    model_signature = signature.model_signature(dataset.X, model)
    # MLflow checks the input example by predicting its 5 rows: starting the model's OpenMP
    # threads for that costs more than the prediction, and on a busy machine seconds.
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="openmp"):
        # The input example's integer columns draw the same hint; the signature already
        # followed its advice (see pipeline.steps.signature).
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=model_signature,
            input_example=data_split.X_train.head(5),
            serialization_format="skops",
            skops_trusted_types=trusted,
            pip_requirements=_pinned_requirements(),
        )
    return str(info.model_uri)


def _pinned_requirements() -> list[str]:
    # Pinned from this environment: exact, and it spares MLflow's requirement inference,
    # which re-imports the model in a subprocess and costs seconds per candidate.
    return [
        f"{package}=={importlib.metadata.version(package)}"
        for package in ("mlflow", "scikit-learn", "skops", "numpy", "scipy", "pandas")
    ]
