"""Model layer: the gate promotes only better models, and says why in the registry."""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import f1_score

from pipeline import model_io
from pipeline.config import load_config
from pipeline.errors import PipelineError, RegistryError
from pipeline.registry import production
from pipeline.steps import features, flow, gate, ingest
from tests.pipeline.factories import diabetes_config, fitted
from tests.pipeline.registry.invariants import violations

DUMMY = {"class_path": "sklearn.dummy.DummyClassifier", "params": {"strategy": "most_frequent"}}
WEAK = {"class_path": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.0005}}

COLUMNS = ["sepal_length_cm", "sepal_width_cm", "petal_length_cm", "petal_width_cm"]

RunConfig = Callable[..., flow.PipelineResult]


@pytest.fixture
def run_config(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> RunConfig:
    def run(force: bool = False, **sections: Any) -> flow.PipelineResult:
        return flow.run_all(load_config(write_config(iris_config(**sections))), force=force)

    return run


def _stage(name: str, version: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return str(MlflowClient().get_model_version(name, version).current_stage)


def test_the_first_model_is_promoted_when_it_meets_the_threshold(run_config: RunConfig) -> None:
    result = run_config()
    client = MlflowClient()
    assert result.decision.promoted
    assert "first model: no champion yet" in result.decision.reason
    assert _stage("iris-test", "1") == "Production"
    assert str(client.get_model_version_by_alias("iris-test", "champion").version) == "1"
    tags = client.get_model_version("iris-test", "1").tags
    assert tags["gate.decision"] == "promoted"
    assert tags["run_id"] == result.training.run_id
    assert tags["data.hash"] == result.data_hash
    assert float(tags["test_f1_macro"]) == pytest.approx(result.metrics["test_f1_macro"])


def test_the_held_out_metrics_are_logged_on_the_candidate_run(run_config: RunConfig) -> None:
    result = run_config()
    metrics = MlflowClient().get_run(result.training.run_id).data.metrics
    for name in ("test_accuracy", "test_f1_macro", "test_roc_auc", "test_log_loss"):
        assert name in metrics
    artifacts = {a.path for a in MlflowClient().list_artifacts(result.training.run_id, "plots")}
    # Multiclass: one-vs-rest ROC and precision-recall curves, one line per class.
    assert {
        "plots/confusion_matrix.png",
        "plots/feature_importance.png",
        "plots/roc_curve.png",
        "plots/precision_recall_curve.png",
    } <= artifacts


def test_a_first_model_below_the_threshold_is_registered_but_not_promoted(
    run_config: RunConfig,
) -> None:
    result = run_config(estimator=DUMMY)
    assert not result.decision.promoted
    assert result.decision.reason.startswith("test_f1_macro 0.")
    assert "< threshold 0.8000" in result.decision.reason
    assert _stage("iris-test", "1") == "None"
    assert production.production_version(MlflowClient(), "iris-test") is None


def test_a_worse_candidate_is_rejected_with_the_reason_in_words(run_config: RunConfig) -> None:
    run_config()
    worse = run_config(estimator=WEAK, gate={"metric": "test_f1_macro", "threshold": None})
    client = MlflowClient()
    tags = client.get_model_version("iris-test", "2").tags
    assert tags["gate.decision"] == "rejected"
    assert tags["gate.champion_version"] == "1"
    assert " < champion v1 " in tags["gate.reason"]
    assert "+ 0.0000; gain -" in tags["gate.reason"]
    assert worse.decision.reason == tags["gate.reason"]
    assert _stage("iris-test", "1") == "Production"
    assert str(client.get_model_version_by_alias("iris-test", "champion").version) == "1"


def test_a_better_candidate_replaces_the_champion_and_archives_it(run_config: RunConfig) -> None:
    run_config(estimator=WEAK, gate={"metric": "test_f1_macro", "threshold": None})
    better = run_config()
    assert better.decision.promoted
    assert better.decision.champion_version == "1"
    assert "beats champion v1" in better.decision.reason
    assert _stage("iris-test", "1") == "Archived"
    assert _stage("iris-test", "2") == "Production"
    assert str(MlflowClient().get_model_version_by_alias("iris-test", "champion").version) == "2"
    events = production.history(MlflowClient(), "iris-test")
    assert [(e.from_version, e.to_version, e.action) for e in events] == [
        ("1", "2", "gate"),
        (None, "1", "gate"),
    ]


def test_an_equal_candidate_does_not_replace_the_champion(run_config: RunConfig) -> None:
    run_config()
    again = run_config(force=True)
    assert not again.decision.promoted
    assert "equals champion v1" in again.decision.reason


def test_a_gain_below_the_minimum_improvement_is_rejected(run_config: RunConfig) -> None:
    gate = {"metric": "test_f1_macro", "threshold": None, "min_improvement": 0.5}
    run_config(estimator=WEAK, gate=gate)
    result = run_config(gate=gate)
    assert not result.decision.promoted
    assert "+ 0.5000; gain +" in result.decision.reason


def test_regression_gates_on_an_error_metric_where_lower_is_better(
    mlflow_store: str, write_config: Callable[..., Path]
) -> None:
    def config(estimator: dict[str, Any]) -> dict[str, Any]:
        return diabetes_config(
            estimator=estimator,
            split={"test_size": 0.25, "seed": 0, "stratify": False, "cv_folds": 2},
            gate={"metric": "test_rmse", "threshold": None},
        )

    first = flow.run_all(
        load_config(write_config(config({"class_path": "sklearn.linear_model.Ridge"})))
    )
    # Heavily regularised: better than the mean, clearly worse than the champion.
    sparse = {"class_path": "sklearn.linear_model.Lasso", "params": {"alpha": 30.0}}
    worse = flow.run_all(load_config(write_config(config(sparse))))
    assert first.decision.promoted
    assert set(first.metrics) == {"test_rmse", "test_mae", "test_r2"}
    assert not worse.decision.promoted
    assert worse.decision.reason.startswith("test_rmse ")
    assert " > champion v1 " in worse.decision.reason
    # A gain is oriented so that positive is better, whatever the metric's direction.
    assert worse.decision.gain is not None and worse.decision.gain < 0
    assert worse.decision.gain == pytest.approx(
        first.metrics["test_rmse"] - worse.metrics["test_rmse"]
    )
    lower, upper = worse.decision.ci_lower, worse.decision.ci_upper
    assert lower is not None and upper is not None and lower < worse.decision.gain < upper


FOREST = "sklearn.ensemble.RandomForestClassifier"
SIGNIFICANT = {
    "metric": "test_f1_macro",
    "threshold": None,
    "require_significant_gain": True,
    "bootstrap": {"resamples": 1000, "confidence": 0.95, "seed": 0},
}


def test_a_challenger_whose_gain_is_within_noise_is_rejected_when_significance_is_required(
    run_config: RunConfig,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    def forest(seed: int) -> dict[str, Any]:
        return {"class_path": FOREST, "params": {"n_estimators": 5, "random_state": seed}}

    champion = run_config(estimator=forest(3), gate=SIGNIFICANT)
    # The same model with another seed: find one that scores higher on the held-out rows by
    # luck alone, which is what the interval must see through.
    split = champion.training.split
    for seed in range(4, 40):
        config = load_config(write_config(iris_config(estimator=forest(seed), gate=SIGNIFICANT)))
        model = features.build_model(config, ingest.run(config))
        model.fit(split.X_train, split.y_train)
        lucky = f1_score(split.y_test, model.predict(split.X_test), average="macro")
        if lucky > champion.metrics["test_f1_macro"]:
            break
    else:
        pytest.fail("no seed beat the champion by luck; widen the search")
    challenger = run_config(estimator=forest(seed), gate=SIGNIFICANT)
    decision = challenger.decision
    assert not decision.promoted
    assert decision.gain is not None and decision.gain > 0
    assert decision.ci_lower is not None and decision.ci_lower <= 0 < decision.ci_upper
    assert "beats champion v1" in decision.reason
    assert "but the gain is within noise; gain +" in decision.reason
    assert "95% CI [" in decision.reason
    tags = MlflowClient().get_model_version("iris-test", "2").tags
    assert float(tags["gate.ci_lower"]) == pytest.approx(decision.ci_lower, rel=1e-5)
    assert tags["gate.resamples"] == "1000"
    assert "lower 95% confidence bound of the gain must be above 0" in tags["gate.rule"]
    assert _stage("iris-test", "1") == "Production"


def test_a_clearly_better_challenger_is_promoted_with_a_lower_bound_above_zero(
    run_config: RunConfig,
) -> None:
    run_config(estimator=DUMMY, gate={**SIGNIFICANT, "beat_baseline": False})
    better = run_config(gate=SIGNIFICANT)
    decision = better.decision
    assert decision.promoted
    assert decision.ci_lower is not None and decision.ci_lower > 0
    assert decision.ci_level == 0.95 and decision.resamples == 1000
    assert _stage("iris-test", "2") == "Production"


def test_the_interval_is_the_same_when_the_same_gate_runs_again(
    run_config: RunConfig,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    run_config(estimator=WEAK, gate=SIGNIFICANT)
    first = run_config(gate={**SIGNIFICANT, "threshold": 0.99}).decision
    again = flow.gate_version(
        load_config(write_config(iris_config(gate={**SIGNIFICANT, "threshold": 0.99}))), "2"
    )
    assert (again.ci_lower, again.ci_upper) == (first.ci_lower, first.ci_upper)


def test_a_champion_trained_on_another_split_is_scored_only_on_rows_it_never_saw(
    run_config: RunConfig,
) -> None:
    first = run_config()
    challenger = run_config(split={"test_size": 0.3, "seed": 7, "stratify": True, "cv_folds": 3})
    seen = set(
        features.row_hashes(
            first.training.split.X_train, first.training.split.y_train, sorted(COLUMNS)
        )
    )
    held_out = challenger.training.split
    candidate = features.row_hashes(held_out.X_test, held_out.y_test, sorted(COLUMNS))
    unseen = [h not in seen for h in candidate]
    assert 0 < sum(unseen) < len(candidate)
    assert challenger.decision.comparison_rows == sum(unseen)
    champion = model_io.load_model("models:/iris-test/1")
    mask = pd.Series(unseen, index=held_out.y_test.index)
    expected = f1_score(
        held_out.y_test[mask], champion.predict(held_out.X_test[mask]), average="macro"
    )
    assert challenger.decision.champion_value == pytest.approx(expected)


def test_gating_the_production_version_is_refused_and_keeps_its_tags(
    run_config: RunConfig,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    run_config()
    before = MlflowClient().get_model_version("iris-test", "1").tags
    with pytest.raises(RegistryError, match="already in Production"):
        flow.gate_version(load_config(write_config(iris_config())), "1")
    assert MlflowClient().get_model_version("iris-test", "1").tags == before


def test_a_config_for_another_task_cannot_reuse_a_registered_model_name(
    run_config: RunConfig, write_config: Callable[..., Path]
) -> None:
    run_config()
    regression = diabetes_config(experiment="iris-test", registered_model="iris-test")
    with pytest.raises(PipelineError, match="holds classification models but this config"):
        flow.run_all(load_config(write_config(regression)))
    assert len(MlflowClient().search_model_versions("name='iris-test'")) == 1


def test_a_champion_that_changes_while_the_gate_judges_is_judged_against_again(
    run_config: RunConfig,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    weak = {"metric": "test_f1_macro", "threshold": None}
    first = run_config(estimator=WEAK, gate=weak)
    client = MlflowClient()
    for _ in range(2):  # v2 and v3: copies of the weak champion
        client.create_model_version("iris-test", "models:/iris-test/1", run_id=first.run_id)
    config = load_config(write_config(iris_config(gate=weak)))
    good = fitted(config)
    outcome: list[object] = []

    def judge() -> None:
        outcome.append(gate.run(config, "3", good.model, good.split))

    with caplog.at_level(logging.INFO, logger="pipeline"):
        # Someone holds the lock; the gate computes its evidence meanwhile, then waits.
        with production.production_lock(client, "iris-test"):
            judging = threading.Thread(target=judge)
            judging.start()
            deadline = time.monotonic() + 120
            while "Waiting for the Production lock of 'iris-test'" not in caplog.text:
                assert time.monotonic() < deadline and judging.is_alive(), "the gate never waited"
                time.sleep(0.05)
            production.set_production(client, "iris-test", "2", action="promote", reason="other")
        judging.join(timeout=120)
    (decision,) = outcome
    assert isinstance(decision, gate.GateDecision)
    assert "changed from 1 to 2 while the gate judged version 3" in caplog.text
    assert decision.promoted and decision.champion_version == "2"
    assert "beats champion v2" in decision.reason
    assert _stage("iris-test", "3") == "Production"
    events = production.history(client, "iris-test")
    assert (events[0].action, events[0].from_version, events[0].to_version) == ("gate", "2", "3")


def test_a_majority_class_model_cannot_reach_production_on_an_imbalanced_set(
    mlflow_store: str, tmp_path: Path, write_config: Callable[..., Path]
) -> None:
    rng = np.random.default_rng(0)
    rows = 600
    frame = pd.DataFrame({"amount": rng.normal(size=rows), "age": rng.normal(size=rows)})
    frame["fraud"] = np.where(rng.random(rows) < 0.04, "yes", "no")
    frame.to_csv(tmp_path / "fraud.csv", index=False)
    config = {
        "experiment": "fraud-test",
        "registered_model": "fraud-test",
        "task": "classification",
        "data": {"path": str(tmp_path / "fraud.csv"), "target": "fraud"},
        "estimator": DUMMY,
        "split": {"test_size": 0.3, "cv_folds": 3},
        # The README's style of gate: accuracy against a bar a majority model clears (0.96).
        "gate": {"metric": "test_accuracy", "threshold": 0.8},
    }
    result = flow.run_all(load_config(write_config(config)))
    assert not result.decision.promoted
    assert result.decision.reason.startswith("not better than the trivial baseline: test_accuracy")
    assert "95% CI [+0.0000, +0.0000]" in result.decision.reason
    assert production.production_version(MlflowClient(), "fraud-test") is None
    tags = MlflowClient().get_model_version("fraud-test", "1").tags
    assert float(tags["gate.baseline_value"]) == pytest.approx(result.metrics["test_accuracy"])


def test_the_first_model_must_beat_the_baseline_and_the_reason_shows_by_how_much(
    run_config: RunConfig,
) -> None:
    decision = run_config().decision
    assert decision.promoted
    assert "beats the trivial baseline (0.1667) by +" in decision.reason
    assert decision.baseline_ci_lower is not None and decision.baseline_ci_lower > 0


def test_the_bootstrap_uses_a_capped_seeded_sample_and_the_reason_says_so(
    run_config: RunConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gate, "BOOTSTRAP_ROW_CAP", 20)
    run_config(estimator=DUMMY, gate={**SIGNIFICANT, "beat_baseline": False})
    decision = run_config(gate=SIGNIFICANT).decision
    assert decision.comparison_rows == 45
    assert "resamples of 20 held-out rows" in decision.reason
    assert "a seeded sample of 20 of the 45 rows (row cap 20)" in decision.reason


LIVE = {"metric": "test_f1_macro", "threshold": None, "min_improvement": 0.0, "live": True}


def test_with_gate_live_a_better_candidate_goes_to_staging_as_the_challenger_not_production(
    run_config: RunConfig,
) -> None:
    run_config(estimator=WEAK, gate={"metric": "test_f1_macro", "threshold": None})
    better = run_config(gate=LIVE).decision
    assert (better.decision, better.stage, better.promoted) == ("staged", "Staging", False)
    assert "vs champion v1" in better.reason and "better than the champion; gain +" in better.reason
    assert better.reason.endswith(
        "; sent to Staging (challenger) since gate.live is on: judge it on live traffic with "
        "`python -m pipeline live-gate --config <config>`"
    )
    assert better.destination.startswith("Staging (challenger): judge it on live traffic")
    assert (_stage("iris-test", "1"), _stage("iris-test", "2")) == ("Production", "Staging")
    client = MlflowClient()
    aliases = client.get_registered_model("iris-test").aliases
    assert {alias: str(version) for alias, version in aliases.items()} == {
        "champion": "1",
        "challenger": "2",
    }
    tags = client.get_model_version("iris-test", "2").tags
    assert (tags["gate.decision"], tags["gate.reason"]) == ("staged", better.reason)
    assert tags["gate.champion_version"] == "1" and "promoted.by" not in tags
    events = production.history(client, "iris-test")
    assert [(e.stage, e.action, e.to_version) for e in events] == [
        ("Staging", "gate", "2"),
        ("Production", "gate", "1"),
    ]
    assert violations(client, "iris-test") == []


def test_with_gate_live_a_candidate_tied_with_the_champion_offline_goes_on_to_live_traffic(
    run_config: RunConfig,
) -> None:
    """Two good models tie on 45 held-out rows: without gate.live the tie is rejected, with it
    the live traffic decides."""
    run_config(gate={"metric": "test_f1_macro", "threshold": None})
    equal = {"class_path": "sklearn.linear_model.LogisticRegression", "params": {"C": 0.9}}
    tied = run_config(estimator=equal, gate={**LIVE, "live": False}).decision
    assert tied.decision == "rejected" and "no improvement" in tied.reason
    staged = run_config(
        estimator={**equal, "params": {"C": 0.95}}, gate={**LIVE, "threshold": 0.8}
    ).decision
    assert staged.gain == 0 and staged.decision == "staged", staged.reason
    assert "not shown worse than the champion; gain +0.0000" in staged.reason


def test_with_gate_live_the_first_model_still_goes_straight_to_production(
    run_config: RunConfig,
) -> None:
    first = run_config(gate={**LIVE, "threshold": 0.8}).decision
    assert (first.decision, first.stage, first.destination) == (
        "promoted",
        "Production",
        "Production",
    )
    assert "first model: no champion yet" in first.reason
    assert "nothing to judge it against on live traffic" in first.reason
    assert _stage("iris-test", "1") == "Production"
    assert production.challenger_version(MlflowClient(), "iris-test") is None


def test_with_gate_live_a_worse_candidate_is_rejected_and_never_staged(
    run_config: RunConfig,
) -> None:
    run_config()
    worse = run_config(estimator=WEAK, gate=LIVE).decision
    assert (worse.decision, worse.stage, worse.destination) == (
        "rejected",
        None,
        "nowhere (rejected)",
    )
    assert "sent to Staging" not in worse.reason
    assert production.challenger_version(MlflowClient(), "iris-test") is None


def test_gating_the_challenger_again_with_gate_live_is_refused_pointing_to_live_gate(
    mlflow_store: str,
    write_config: Callable[..., Path],
    iris_config: Callable[..., dict[str, Any]],
) -> None:
    flow.run_all(
        load_config(write_config(iris_config(estimator=WEAK, gate={**LIVE, "live": False})))
    )
    live = load_config(write_config(iris_config(gate=LIVE)))
    assert flow.run_all(live).decision.stage == "Staging"
    with pytest.raises(
        RegistryError,
        match=r"version 2 of 'iris-test' is already in Staging \(the challenger\); judge it on "
        "live traffic with `python -m pipeline live-gate",
    ):
        flow.gate_version(live, "2")
    assert _stage("iris-test", "2") == "Staging"
