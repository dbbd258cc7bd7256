"""Code layer: labelled predictions per time window, judged against the reference band."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from pipeline.errors import ConfigError
from pipeline.monitoring.config import PerformanceMonitorConfig
from pipeline.monitoring.performance import (
    LabelledRows,
    MetricCheck,
    check_performance,
    check_window,
)
from pipeline.monitoring.profile import PerformanceReference

START = datetime(2025, 3, 1, tzinfo=UTC)
REFERENCE = PerformanceReference(
    metric_chunks={"accuracy": (0.9, 0.92, 0.88), "f1_macro": (0.9, 0.9, 0.9)}, chunk_rows=20
)


def _chunk(
    labels: list[str | None], predictions: list[str], *, start: datetime = START
) -> pd.DataFrame:
    """A log chunk as the prediction log hands it over, one row per hour."""
    return pd.DataFrame(
        {
            "timestamp": [start + timedelta(hours=i) for i in range(len(labels))],
            "prediction": predictions,
            "label": labels,
            "sepal_length_cm": 5.0,
        }
    )


def _check(value: float, *, lower_is_better: bool) -> MetricCheck:
    return MetricCheck(
        value=value,
        reference_mean=0.5,
        reference_std=0.1,
        lower=0.2,
        upper=0.8,
        lower_is_better=lower_is_better,
    )


def test_a_window_pandas_cannot_group_by_is_a_config_error_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"monitoring\.performance\.window 'fortnightly'"):
        check_window("fortnightly")
    check_window("6h")


def test_only_a_value_outside_the_band_on_the_worse_side_is_degraded() -> None:
    assert _check(0.1, lower_is_better=False).degraded
    assert not _check(0.9, lower_is_better=False).degraded
    assert _check(0.9, lower_is_better=True).degraded
    assert not _check(0.1, lower_is_better=True).degraded
    assert _check(0.9, lower_is_better=True).outside and _check(0.1, lower_is_better=True).outside


def test_labelled_rows_keep_only_rows_with_a_label_and_the_columns_performance_needs() -> None:
    rows = LabelledRows("classification")
    rows.update(_chunk(["a", None, "b"], ["a", "a", "a"]))
    rows.update(_chunk(["c"], ["c"], start=START + timedelta(hours=3)))
    frame = rows.frame()
    assert set(frame.columns) == {"timestamp", "prediction", "label"}
    assert frame["label"].tolist() == ["a", "b", "c"]
    # Categories that differ between chunks stay one categorical column.
    assert isinstance(frame["label"].dtype, pd.CategoricalDtype)


def test_each_window_judges_each_metric_against_mean_plus_or_minus_sigma_std() -> None:
    rows = LabelledRows("classification")
    rows.update(_chunk(["a"] * 24, ["a"] * 24))  # day 1: all right
    rows.update(_chunk(["a"] * 24, ["b"] * 24, start=START + timedelta(days=1)))  # day 2: wrong
    windows = check_performance(
        "classification", PerformanceMonitorConfig(sigma=2.0), REFERENCE, rows.frame()
    )
    assert [(w.start, w.end, w.rows) for w in windows] == [
        (START, START + timedelta(days=1), 24),
        (START + timedelta(days=1), START + timedelta(days=2), 24),
    ]
    good, bad = windows
    accuracy = good.metrics["accuracy"]
    assert (accuracy.value, accuracy.reference_mean) == (1.0, pytest.approx(0.9))
    # std 0.02 over chunks of 20 rows, scaled to 24 rows, plus the reference mean's own noise.
    half = 2.0 * 0.02 * math.sqrt(20 / 24 + 1 / 3)
    assert (accuracy.lower, accuracy.upper) == (
        pytest.approx(0.9 - half),
        pytest.approx(0.9 + half),
    )
    assert not good.degraded  # better than the band is no reason to act
    assert bad.degraded_metrics == ("accuracy",)


def test_a_metric_without_spread_in_the_reference_is_reported_but_not_judged() -> None:
    rows = LabelledRows("classification")
    rows.update(_chunk(["a", "b"], ["b", "a"]))
    (window,) = check_performance(
        "classification", PerformanceMonitorConfig(), REFERENCE, rows.frame()
    )
    f1 = window.metrics["f1_macro"]
    assert (f1.value, f1.judged, f1.degraded) == (0.0, False, False)


def test_no_labels_or_no_reference_performance_give_no_windows() -> None:
    rows = LabelledRows("classification")
    rows.update(_chunk(["a"], ["a"]))
    assert check_performance("classification", PerformanceMonitorConfig(), None, rows.frame()) == ()
    empty = LabelledRows("classification").frame()
    assert check_performance("classification", PerformanceMonitorConfig(), REFERENCE, empty) == ()


def test_the_band_is_clipped_to_the_values_the_metric_can_take() -> None:
    reference = PerformanceReference(
        metric_chunks={"accuracy": (0.6, 0.99, 0.95), "log_loss": (0.05, 0.6, 0.1)},
        chunk_rows=20,
    )
    rows = LabelledRows("classification")
    rows.update(_chunk(["a", "b"] * 10, ["a", "b"] * 10).assign(**{"proba.a": 0.9, "proba.b": 0.1}))
    (window,) = check_performance(
        "classification", PerformanceMonitorConfig(), reference, rows.frame()
    )
    assert window.metrics["accuracy"].upper == 1.0
    assert window.metrics["log_loss"].lower == 0.0
    assert window.metrics["accuracy"].lower > 0.0


def test_a_window_smaller_than_a_reference_chunk_gets_a_wider_band_than_a_larger_one() -> None:
    rows = LabelledRows("classification")
    rows.update(_chunk(["a"] * 5, ["a"] * 5))  # day 1: 5 rows
    rows.update(
        _chunk(["a"] * 200, ["a"] * 200, start=START + timedelta(days=1)).assign(
            timestamp=lambda f: START + timedelta(days=1, seconds=1)
        )
    )  # day 2: 200 rows
    small, large = check_performance(
        "classification", PerformanceMonitorConfig(), REFERENCE, rows.frame()
    )
    assert (small.rows, large.rows) == (5, 200)
    small_width = small.metrics["accuracy"].upper - small.metrics["accuracy"].lower
    large_width = large.metrics["accuracy"].upper - large.metrics["accuracy"].lower
    assert small.metrics["accuracy"].scale > 1 > large.metrics["accuracy"].scale
    assert small_width > 2 * large_width
