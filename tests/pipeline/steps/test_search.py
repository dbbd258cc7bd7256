"""Search: declared trials become nested runs, and the best by the declared metric wins."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from pipeline import metrics
from pipeline.config import SearchConfig, load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.steps import features, flow, ingest, search
from tests.pipeline.factories import diabetes_config

GRID = {
    "strategy": "grid",
    "space": {"C": [0.001, 0.1, 10.0], "fit_intercept": [True, False]},
    "cv_folds": 3,
    "scoring": "accuracy",
}


def _trials(client: MlflowClient, parent_run_id: str) -> list[Any]:
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs(
        [experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent_run_id}'"
    )


def test_a_grid_search_logs_one_nested_run_per_setting_and_picks_the_best(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    result = flow.run_all(load_config(write_config(iris_config(search=GRID))))
    client = MlflowClient()
    trials = _trials(client, result.run_id)
    assert len(trials) == 6
    assert {(t.data.params["model.C"], t.data.params["model.fit_intercept"]) for t in trials} == {
        (str(c), str(f)) for c in (0.001, 0.1, 10.0) for f in (True, False)
    }
    assert all(t.info.status == "FINISHED" for t in trials)
    best = max(trials, key=lambda t: t.data.metrics["search_score_mean"])
    parent = client.get_run(result.run_id)
    assert parent.data.params["model.C"] == best.data.params["model.C"]
    assert parent.data.params["search.trials"] == "6"
    assert parent.data.params["search.scoring"] == "accuracy"
    assert float(parent.data.params["search.best_score"]) == pytest.approx(
        best.data.metrics["search_score_mean"], rel=1e-5
    )
    # The parent carries the best trial's CV metrics, so its row compares with other candidates.
    assert parent.data.metrics["cv_accuracy_mean"] == pytest.approx(
        best.data.metrics["cv_accuracy_mean"]
    )
    assert "test_f1_macro" in parent.data.metrics
    assert all(t.info.run_name.startswith(f"{parent.info.run_name}-trial-") for t in trials)
    # Only the parent is registered.
    versions = client.search_model_versions("name = 'iris-test'")
    assert [v.run_id for v in versions] == [result.run_id]


def test_a_random_search_samples_the_declared_number_of_trials_within_the_ranges(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    random_search = {
        "strategy": "random",
        "trials": 5,
        "cv_folds": 2,
        "space": {
            "C": {"low": 0.01, "high": 100.0, "log": True},
            "max_iter": {"low": 100, "high": 400, "type": "int"},
        },
    }
    result = flow.run_all(load_config(write_config(iris_config(search=random_search))))
    trials = _trials(MlflowClient(), result.run_id)
    assert len(trials) == 5
    for trial in trials:
        assert 0.01 <= float(trial.data.params["model.C"]) <= 100.0
        assert trial.data.params["model.max_iter"].isdigit()
        assert 100 <= int(trial.data.params["model.max_iter"]) <= 400


def test_random_settings_are_the_same_for_a_seed_and_differ_for_another() -> None:
    config = SearchConfig.model_validate(
        {
            "strategy": "random",
            "trials": 8,
            "space": {"C": {"low": 0.01, "high": 10.0, "log": True}, "penalty": ["l2", None]},
        }
    )
    first = search.candidate_settings(config, default_seed=1)
    assert first == search.candidate_settings(config, default_seed=1)
    assert first != search.candidate_settings(config, default_seed=2)
    assert all(type(setting["C"]) is float for setting in first)


def test_a_grid_larger_than_the_trial_cap_is_refused_by_name() -> None:
    config = SearchConfig.model_validate(
        {"strategy": "grid", "trials": 4, "space": {"C": [1, 2, 3], "max_iter": [100, 200]}}
    )
    with pytest.raises(ConfigError, match=r"the grid has 6 settings but search.trials caps it"):
        search.candidate_settings(config, default_seed=0)


def test_failing_trials_are_recorded_and_an_all_failing_search_stops_before_registering(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    # lbfgs cannot fit an l1 penalty: valid parameters one by one, a failure when fitted.
    failing = {"strategy": "grid", "space": {"penalty": ["l1"], "solver": ["lbfgs"]}}
    config = load_config(write_config(iris_config(search=failing)))
    with pytest.raises(PipelineError, match=r"all 1 search trials failed; the first error: "):
        flow.run_all(config)
    assert MlflowClient().search_model_versions("name = 'iris-test'") == []


def test_parallel_trials_that_fail_keep_their_own_error_and_spare_the_others(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    # Two workers take two settings at a time: the first pair half fails, the second fails whole.
    mixed = {
        "strategy": "grid",
        "n_jobs": 2,
        "space": {"penalty": ["l2", "l1"], "solver": ["lbfgs", "liblinear"]},
    }
    result = flow.run_all(load_config(write_config(iris_config(search=mixed))))
    client = MlflowClient()
    trials = _trials(client, result.run_id)
    key = [(t.data.params["model.penalty"], t.data.params["model.solver"]) for t in trials]
    error = {k: t.data.tags.get("search.error") for k, t in zip(key, trials, strict=True)}
    status = {k: t.info.status for k, t in zip(key, trials, strict=True)}
    assert (status.pop(("l2", "lbfgs")), error[("l2", "lbfgs")]) == ("FINISHED", None)
    assert set(status.values()) == {"FAILED"}
    assert "l1 penalty" in error[("l1", "lbfgs")]
    assert "multiclass" in error[("l2", "liblinear")]
    assert "multiclass" in error[("l1", "liblinear")]
    parent = client.get_run(result.run_id).data.params
    assert (parent["search.failed_trials"], parent["model.penalty"]) == ("3", "l2")


def test_a_regression_search_ranks_by_the_negated_error_and_logs_the_error_itself(
    mlflow_store: str, write_config: Callable[..., Path]
) -> None:
    ridge = {"strategy": "grid", "space": {"alpha": [0.01, 100.0]}}
    result = flow.run_all(load_config(write_config(diabetes_config(search=ridge))))
    trials = _trials(MlflowClient(), result.run_id)
    for trial in trials:
        metrics = trial.data.metrics
        assert metrics["cv_rmse_mean"] > 0
        # The gate's test_rmse is searched by sklearn's neg_root_mean_squared_error.
        assert metrics["search_score_mean"] == pytest.approx(-metrics["cv_rmse_mean"])
    best = min(trials, key=lambda t: t.data.metrics["cv_rmse_mean"])
    parent = MlflowClient().get_run(result.run_id).data.params
    assert parent["model.alpha"] == best.data.params["model.alpha"]


@pytest.mark.parametrize(
    ("section", "message"),
    [
        (
            {"strategy": "grid", "space": {"Cee": [1.0]}},
            r"search.space \['Cee'\] are not parameters of LogisticRegression",
        ),
        (
            {"strategy": "grid", "space": {"C": {"low": 0.1, "high": 1.0}}},
            r"space.C is a range, which grid search cannot enumerate",
        ),
        ({"strategy": "random", "space": {"C": [1.0]}}, r"random search needs 'trials'"),
        (
            {"strategy": "grid", "space": {"C": [1.0]}, "scoring": "f1_mucro"},
            r"search.scoring 'f1_mucro' is not a scikit-learn scorer",
        ),
        (
            {"strategy": "grid", "space": {"C": [1.0]}, "scoring": "r2"},
            r"search.scoring 'r2' is a regression scorer but task is 'classification'",
        ),
        (
            {"strategy": "grid", "space": {"C": [1.0, -1.0]}},
            r"search.space.C: value -1.0: The 'C' parameter",
        ),
        (
            {
                "strategy": "random",
                "trials": 3,
                "space": {"C": {"low": 0.0, "high": 1, "log": True}},
            },
            r"a log range needs low > 0",
        ),
        ({"strategy": "grid", "space": {"C": []}}, r"space.C is an empty list"),
        ({"strategy": "grid", "space": {"C": [1.0]}, "trails": 3}, r"unknown key 'search.trails'"),
    ],
)
def test_a_bad_search_section_is_refused_naming_the_key(
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    section: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write_config(iris_config(search=section)))


def test_every_shipped_search_config_loads_with_fifty_trials() -> None:
    config = load_config(Path(__file__).resolve().parents[3] / "configs" / "iris_search.yaml")
    assert config.search is not None
    assert config.search.trials == 50
    assert len(search.candidate_settings(config.search, config.split.seed)) == 50


def _search_on(
    backend: str, config_text: dict[str, Any], write_config: Callable[..., Path]
) -> tuple[search.SearchResult, list[Any]]:
    config = load_config(write_config(config_text))
    config = config.with_overrides(**{"search.backend": backend})
    dataset = ingest.run(config)
    data_split = features.split(config, dataset)
    scorers = metrics.cross_validated(config.task, config.gate.metric)
    mlflow.set_experiment(config.experiment)
    with mlflow.start_run(run_name=f"on-{backend}") as parent:
        result = search.run(
            config,
            features.build_model(config, dataset),
            data_split,
            parent_run_id=parent.info.run_id,
            experiment_id=parent.info.experiment_id,
            cv_scoring={m.name: m.scorer for m in scorers},
        )
    return result, _trials(MlflowClient(), parent.info.run_id)


@pytest.mark.spark
def test_a_search_on_spark_has_the_local_trials_scores_errors_and_best(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from pipeline.scoring.spark_engine import stop_spark

    caplog.set_level(logging.INFO, logger="pipeline.steps.spark_search")

    monkeypatch.setenv("SPARK_MASTER", "local[2]")
    grid = {
        "strategy": "grid",
        "n_jobs": 2,
        "cv_folds": 3,
        "space": {"C": [0.1, 1.0], "penalty": ["l2", "l1"], "solver": ["lbfgs", "liblinear"]},
    }
    text = iris_config(search=grid)
    local, local_runs = _search_on("local", text, write_config)
    try:
        spark, spark_runs = _search_on("spark", text, write_config)
    finally:
        stop_spark()

    def summary(trial: search.Trial) -> tuple[Any, ...]:
        return (trial.params, trial.score_mean, trial.score_std, trial.cv_metrics, trial.error)

    assert [summary(t) for t in spark.trials] == [summary(t) for t in local.trials]
    assert sum(t.error is not None for t in spark.trials) == 6  # l1 + lbfgs, liblinear
    assert spark.best.number == local.best.number
    assert "Search trials run on Spark (master local[2], 2 at a time)" in caplog.text
    assert len(spark_runs) == len(local_runs) == 8
    assert sorted(r.data.params["model.C"] for r in spark_runs) == sorted(
        r.data.params["model.C"] for r in local_runs
    )
