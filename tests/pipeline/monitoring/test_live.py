"""Code layer: live evidence pairs both versions' answers by request and judges them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.config import PipelineConfig, load_config
from pipeline.monitoring import live
from pipeline.steps import bootstrap

CLASSES = ["setosa", "versicolor", "virginica"]


@pytest.fixture
def config(
    write_config: Callable[..., Path], iris_config: Callable[..., dict[str, Any]]
) -> PipelineConfig:
    gate = {"metric": "test_accuracy", "live": True, "live_min_labels": 100}
    return load_config(write_config(iris_config(gate=gate)))


def _answers(truth: np.ndarray, right: float, seed: int) -> pd.DataFrame:
    """A version's logged answers: right on a share `right` of the requests."""
    rng = np.random.default_rng(seed)
    wrong = rng.random(len(truth)) > right
    shifted = np.array([CLASSES[(CLASSES.index(t) + 1) % 3] for t in truth], dtype=object)
    return pd.DataFrame(
        {
            "request_id": [f"r{i}" for i in range(len(truth))],
            "row": 0,
            "prediction": np.where(wrong, shifted, truth),
        }
    )


def _traffic(rows: int, labelled: int) -> tuple[np.ndarray, pd.DataFrame]:
    truth = np.random.default_rng(0).choice(CLASSES, size=rows).astype(object)
    labels = pd.DataFrame(
        {"request_id": [f"r{i}" for i in range(labelled)], "row": 0, "label": truth[:labelled]}
    )
    return truth, labels


def test_a_challenger_better_on_labelled_live_requests_is_promoted(config: PipelineConfig) -> None:
    truth, labels = _traffic(600, 400)
    evidence = live.compare(config, _answers(truth, 0.75, 1), _answers(truth, 0.95, 2), labels)
    assert (evidence.shared, evidence.labelled) == (600, 400)
    assert evidence.challenger_score is not None and evidence.champion_score is not None
    assert evidence.challenger_score > evidence.champion_score
    assert evidence.agreement is not None and 0.6 < evidence.agreement < 0.85
    decision = live.judge(config, evidence)
    assert decision.outcome == "promote" and decision.exit_code == 0
    assert "better than the champion on live traffic: test_accuracy on 400 labelled" in (
        decision.reason
    )


def test_a_challenger_worse_on_live_labels_is_rejected_quoting_the_paired_interval(
    config: PipelineConfig,
) -> None:
    truth, labels = _traffic(600, 400)
    evidence = live.compare(config, _answers(truth, 0.95, 1), _answers(truth, 0.75, 2), labels)
    decision = live.judge(config, evidence)
    assert decision.outcome == "reject" and decision.exit_code == 10
    assert decision.reason.startswith("worse than the champion on live traffic")
    assert "95% CI [-0." in decision.reason
    assert "1000 paired bootstrap resamples of 400 labelled live requests" in decision.reason


def test_too_few_labels_means_waiting_and_says_how_many_more(config: PipelineConfig) -> None:
    truth, labels = _traffic(600, 40)
    evidence = live.compare(config, _answers(truth, 0.75, 1), _answers(truth, 0.95, 2), labels)
    decision = live.judge(config, evidence)
    assert decision.outcome == "wait" and decision.exit_code == 20
    assert decision.reason.startswith("40 labelled requests both versions answered")
    assert "(60 more)" in decision.reason


def test_a_rolled_back_canary_is_rejected_whatever_the_labels_say(config: PipelineConfig) -> None:
    truth, labels = _traffic(600, 400)
    evidence = live.compare(config, _answers(truth, 0.75, 1), _answers(truth, 0.95, 2), labels)
    decision = live.judge(config, evidence, rolled_back="error rate 100% vs 0% over 200 requests")
    assert decision.outcome == "reject"
    assert decision.reason == "the canary was rolled back: error rate 100% vs 0% over 200 requests"


def test_an_undecided_interval_waits_and_estimates_the_labels_needed(
    config: PipelineConfig,
) -> None:
    truth, labels = _traffic(600, 150)
    evidence = live.compare(config, _answers(truth, 0.90, 1), _answers(truth, 0.91, 2), labels)
    decision = live.judge(config, evidence)
    assert decision.outcome == "wait"
    assert "the interval includes 0" in decision.reason


def test_a_challenger_no_better_than_the_baseline_is_rejected(config: PipelineConfig) -> None:
    truth, labels = _traffic(600, 400)
    champion = _answers(truth, 0.2, 1)
    challenger = _answers(truth, 0.34, 2)  # about what always answering one class scores
    majority = bootstrap.Predictions(np.array(["setosa"], dtype=object), None, tuple(CLASSES))
    evidence = live.compare(config, champion, challenger, labels, baseline=majority)
    decision = live.judge(config, evidence)
    assert decision.outcome == "reject"
    assert decision.reason.startswith("not better than the trivial baseline on live traffic")


def test_traffic_counts_latency_and_errors_per_request_not_per_row() -> None:
    rows = pd.DataFrame(
        {
            "request_id": ["a", "a", "a", "b", "c", "d"],  # request a: a batch of three rows
            "row": [0, 1, 2, 0, 0, 0],
            "served": [False] * 6,
            "latency_ms": [10.0, 10.0, 10.0, 20.0, 30.0, None],
            "error": [None, None, None, None, "TimeoutError", "ValueError: bad"],
        }
    )
    seen = live.traffic("7", rows)
    assert (seen.requests, seen.rows, seen.answered, seen.served, seen.errors) == (4, 6, 4, 0, 2)
    assert seen.error_rate == 0.5
    assert seen.latency_ms[50] == pytest.approx(20.0)  # of 10, 20, 30: request a counts once
    assert seen.latency_ms[99] == pytest.approx(29.8)


def test_a_version_that_logged_no_latency_has_no_percentiles() -> None:
    rows = pd.DataFrame(
        {"request_id": ["a"], "row": [0], "served": [True], "latency_ms": [None], "error": [None]}
    )
    assert live.traffic("1", rows).latency_ms == {50: None, 95: None, 99: None}


def test_prediction_drift_is_0_for_the_same_class_shares_and_1_for_disjoint_ones(
    config: PipelineConfig,
) -> None:
    same = pd.Series(["setosa", "virginica"] * 50)
    assert live.prediction_drift(config, same, same.iloc[::-1]) == pytest.approx(0.0)
    disjoint = live.prediction_drift(config, pd.Series(["setosa"] * 9), pd.Series(["virginica"]))
    assert disjoint == pytest.approx(1.0)
    shifted = live.prediction_drift(
        config, pd.Series(["setosa"] * 50 + ["virginica"] * 50), pd.Series(["setosa"] * 100)
    )
    assert shifted is not None and 0.3 < shifted < 0.7
    assert live.prediction_drift(config, pd.Series([], dtype=object), same) is None


def test_prediction_drift_of_a_regressor_compares_histograms_on_shared_bins(
    write_config: Callable[..., Path],
) -> None:
    from tests.pipeline.factories import diabetes_config

    regressor = load_config(write_config(diabetes_config()))
    values = pd.Series(np.linspace(0.0, 100.0, 200))
    assert live.prediction_drift(regressor, values, values) == pytest.approx(0.0)
    assert live.prediction_drift(regressor, values, values + 1000.0) == pytest.approx(1.0)


def test_answers_both_versions_gave_are_paired_by_request_and_row_only(
    config: PipelineConfig,
) -> None:
    truth, labels = _traffic(300, 200)
    champion = _answers(truth, 0.8, 1)
    challenger = _answers(truth, 0.8, 1).iloc[:150]  # a canary: half the requests
    evidence = live.compare(config, champion, challenger, labels)
    assert (evidence.shared, evidence.labelled, evidence.agreement) == (150, 150, 1.0)
    assert evidence.interval is not None and evidence.interval.gain == 0.0


def test_a_regressor_closer_to_the_live_labels_is_promoted_over_the_champion_and_the_mean(
    write_config: Callable[..., Path],
) -> None:
    from tests.pipeline.factories import diabetes_config

    gate = {"metric": "test_rmse", "live": True, "live_min_labels": 100}
    regressor = load_config(write_config(diabetes_config(gate=gate)))
    rng = np.random.default_rng(0)
    truth = rng.normal(150.0, 50.0, 400)
    keys = {"request_id": [f"r{i}" for i in range(400)], "row": 0}
    champion = pd.DataFrame({**keys, "prediction": truth + rng.normal(0, 40, 400)})
    challenger = pd.DataFrame({**keys, "prediction": truth + rng.normal(0, 10, 400)})
    labels = pd.DataFrame({**keys, "label": truth})
    mean = bootstrap.Predictions(np.array([150.0]), None, ())
    evidence = live.compare(regressor, champion, challenger, labels, baseline=mean)
    assert evidence.challenger_score is not None and evidence.champion_score is not None
    assert evidence.challenger_score < evidence.champion_score  # rmse: lower is better
    assert evidence.interval is not None and evidence.interval.lower > 0
    assert live.judge(regressor, evidence).outcome == "promote"
