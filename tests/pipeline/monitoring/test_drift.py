"""Code layer: drift statistics on seeded synthetic data, streaming, and bad windows.

The synthetic set is the one of issue 5: 5,000 reference and 5,000 current rows with a stable
normal column, a mean shift of 0.5 std, a scale change x1.5, a log-normal shifted by 0.5 in
log space, a stable categorical, a categorical going from [.5, .3, .2] to [.3, .3, .4], and a
binary column going from 0.3 to 0.5 (once as a 0/1 number, once as a category).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pipeline.errors import DataValidationError
from pipeline.monitoring.config import DriftConfig
from pipeline.monitoring.drift import (
    DriftAccumulator,
    DriftReport,
    detect_drift,
    important_features,
)
from pipeline.monitoring.profile import PREDICTION, ReferenceProfile, build_reference_profile

NUMERIC = ["stable", "mean_shift", "scale", "lognormal", "binary"]
CATEGORICAL = ["stable_category", "shifted_category", "binary_category"]
SHIFTED = ["mean_shift", "scale", "lognormal", "binary", "shifted_category", "binary_category"]
STABLE = ["stable", "stable_category", PREDICTION]
LETTERS = ["a", "b", "c"]


def _window(
    rng: np.random.Generator, rows: int, *, shifted: bool, as_category: bool = False
) -> pd.DataFrame:
    """Rows as the monitor hands them over: feature names plus `prediction`.

    `as_category` gives the text columns a pandas categorical dtype (as a Parquet reader with
    dictionary columns would), which is also much cheaper to build than strings.
    """

    def text(codes: np.ndarray, labels: list[str]) -> pd.Categorical | np.ndarray:
        if as_category:
            return pd.Categorical.from_codes(codes, categories=labels)
        return np.asarray(labels)[codes]

    share = 0.5 if shifted else 0.3
    return pd.DataFrame(
        {
            "stable": rng.normal(0.0, 1.0, rows),
            "mean_shift": rng.normal(0.5 if shifted else 0.0, 1.0, rows),
            "scale": rng.normal(0.0, 1.5 if shifted else 1.0, rows),
            "lognormal": rng.lognormal(0.5 if shifted else 0.0, 1.0, rows),
            "binary": (rng.random(rows) < share).astype(np.float64),
            "stable_category": text(rng.choice(3, rows, p=[0.5, 0.3, 0.2]), LETTERS),
            "shifted_category": text(
                rng.choice(3, rows, p=[0.3, 0.3, 0.4] if shifted else [0.5, 0.3, 0.2]), LETTERS
            ),
            "binary_category": text((rng.random(rows) < share).astype(int), ["no", "yes"]),
            PREDICTION: text(rng.integers(0, 2, rows), ["setosa", "versicolor"]),
        }
    )


def _profile_of(frame: pd.DataFrame) -> ReferenceProfile:
    return build_reference_profile(
        frame.drop(columns=PREDICTION),
        frame[PREDICTION],
        numeric=NUMERIC,
        categorical=CATEGORICAL,
        task="classification",
    )


@pytest.fixture(scope="module")
def reference() -> pd.DataFrame:
    return _window(np.random.default_rng(0), 5000, shifted=False)


@pytest.fixture(scope="module")
def profile(reference: pd.DataFrame) -> ReferenceProfile:
    return _profile_of(reference)


@pytest.fixture(scope="module")
def shifted() -> pd.DataFrame:
    return _window(np.random.default_rng(1), 5000, shifted=True)


@pytest.fixture(scope="module")
def shifted_report(profile: ReferenceProfile, shifted: pd.DataFrame) -> DriftReport:
    return detect_drift(profile, shifted, DriftConfig())


@pytest.mark.parametrize("column", SHIFTED)
def test_a_shifted_column_is_flagged(shifted_report: DriftReport, column: str) -> None:
    drift = shifted_report.columns[column]
    assert drift.drifted
    assert drift.test == ("wasserstein" if column in NUMERIC else "js")


@pytest.mark.parametrize("column", STABLE)
def test_a_stable_column_is_not_flagged(shifted_report: DriftReport, column: str) -> None:
    drift = shifted_report.columns[column]
    assert not drift.drifted
    assert drift.psi_band == "stable"


def test_the_shifted_window_is_data_set_drift(shifted_report: DriftReport) -> None:
    assert set(shifted_report.drifted_columns) == set(SHIFTED)
    assert shifted_report.drifted_share == pytest.approx(6 / 9)
    assert shifted_report.dataset_drift
    assert shifted_report.rows == 5000


def test_the_data_set_verdict_uses_the_configured_share(
    profile: ReferenceProfile, shifted: pd.DataFrame
) -> None:
    # Without the important-feature rule, which fires here on its own (see below).
    report = detect_drift(
        profile, shifted, DriftConfig(dataset_drift_share=0.7, important_p_value=0)
    )
    assert report.drifted_share == pytest.approx(6 / 9)
    assert not report.dataset_drift


def test_a_fresh_batch_from_the_reference_distribution_gives_no_data_set_drift(
    profile: ReferenceProfile,
) -> None:
    report = detect_drift(
        profile, _window(np.random.default_rng(2), 5000, shifted=False), DriftConfig()
    )
    assert report.drifted_columns == ()
    assert report.drifted_share == 0.0
    assert not report.dataset_drift


def test_the_thresholds_come_from_the_config(
    profile: ReferenceProfile, shifted: pd.DataFrame
) -> None:
    lenient = DriftConfig(wasserstein=1.0, js=0.5, psi_moderate=0.5, psi_major=0.9)
    report = detect_drift(profile, shifted, lenient)
    assert report.drifted_columns == ()
    assert {column.psi_band for column in report.columns.values()} == {"stable"}


def test_psi_bands_are_stable_moderate_and_major(shifted_report: DriftReport) -> None:
    # A mean shift of 0.5 std moves about 0.2 PSI: moderate with the default bands.
    mean_shift = shifted_report.columns["mean_shift"]
    assert mean_shift.psi is not None
    assert 0.1 <= mean_shift.psi < 0.25
    assert mean_shift.psi_band == "moderate"
    assert shifted_report.columns["stable"].psi_band == "stable"
    profile = build_reference_profile(
        pd.DataFrame({"x": np.arange(1000.0)}),
        ["a"] * 1000,
        numeric=["x"],
        categorical=[],
        task="classification",
    )
    beyond = pd.DataFrame({"x": np.arange(2000.0, 3000.0), PREDICTION: ["a"] * 1000})
    drift = detect_drift(profile, beyond, DriftConfig()).columns["x"]
    assert drift.psi_band == "major"
    assert drift.psi is not None
    assert math.isfinite(drift.psi)  # the nine emptied bins are smoothed, not log(0)


@pytest.mark.parametrize(
    ("column", "tolerance"),
    [
        ("stable", 0.005),
        ("mean_shift", 0.005),
        ("scale", 0.01),
        ("binary", 0.005),
        ("lognormal", 0.03),
    ],
)
def test_the_normalised_wasserstein_distance_matches_scipy_on_the_raw_samples(
    shifted_report: DriftReport,
    reference: pd.DataFrame,
    shifted: pd.DataFrame,
    column: str,
    tolerance: float,
) -> None:
    exact = stats.wasserstein_distance(reference[column], shifted[column])
    exact /= reference[column].std(ddof=0)
    assert shifted_report.columns[column].wasserstein == pytest.approx(exact, abs=tolerance)


@pytest.mark.parametrize("column", [*CATEGORICAL, PREDICTION])
def test_the_js_distance_is_the_base_2_distance_between_the_category_shares(
    shifted_report: DriftReport, reference: pd.DataFrame, shifted: pd.DataFrame, column: str
) -> None:
    labels = sorted({*reference[column], *shifted[column]})
    p = reference[column].value_counts(normalize=True).reindex(labels, fill_value=0).to_numpy()
    q = shifted[column].value_counts(normalize=True).reindex(labels, fill_value=0).to_numpy()
    m = (p + q) / 2
    divergence = sum(a * math.log2(a / b) for x in (p, q) for a, b in zip(x, m, strict=True) if a)
    assert shifted_report.columns[column].js == pytest.approx(math.sqrt(divergence / 2), abs=1e-12)


def test_the_js_distance_is_0_for_the_same_shares_and_1_for_disjoint_categories(
    profile: ReferenceProfile, reference: pd.DataFrame
) -> None:
    same = detect_drift(profile, reference, DriftConfig()).columns["stable_category"]
    disjoint = reference.assign(stable_category="zebra")
    unseen = detect_drift(profile, disjoint, DriftConfig()).columns["stable_category"]
    assert (same.js, unseen.js) == (0.0, 1.0)


def _null_windows(
    profile: ReferenceProfile, rows: int, repetitions: int, seed: int
) -> list[DriftReport]:
    rng = np.random.default_rng(seed)
    windows = _window(rng, repetitions * rows, shifted=False, as_category=True)
    return [
        detect_drift(profile, windows.iloc[start : start + rows], DriftConfig())
        for start in range(0, repetitions * rows, rows)
    ]


@pytest.fixture(scope="module")
def large_profile() -> ReferenceProfile:
    """50,000 rows: what is measured is the calibration, not the luck of one reference draw
    (with a fixed small reference, a column's alarm rate on large windows is whatever that
    draw's own distance from the population is: 0% or 100%, 1% only on average over draws)."""
    return _profile_of(_window(np.random.default_rng(5), 50_000, shifted=False, as_category=True))


@pytest.mark.parametrize(("rows", "repetitions"), [(300, 60), (1000, 40), (5000, 20)])
def test_unshifted_windows_rarely_alarm_and_their_p_values_are_spread_out(
    large_profile: ReferenceProfile, rows: int, repetitions: int
) -> None:
    reports = _null_windows(large_profile, rows, repetitions, seed=rows)
    alarms = dict.fromkeys(large_profile.columns, 0)
    p_values = []
    for report in reports:
        assert {column.test for column in report.columns.values()} == {"wasserstein", "js"}
        for name, column in report.columns.items():
            alarms[name] += column.drifted
            assert column.p_value is not None
            p_values.append(column.p_value)
    rates = {name: count / repetitions for name, count in alarms.items()}
    assert max(rates.values()) <= 0.10, rates
    assert sum(report.dataset_drift for report in reports) <= 0.05 * repetitions
    # Calibrated p-values are uniform without drift: a median near 0 would mean alarms, one
    # near 1 a test that could never fire.
    assert 0.25 < float(np.median(p_values)) < 0.75


def test_the_threshold_falls_with_the_window_size_but_not_below_the_references_own_noise(
    large_profile: ReferenceProfile, profile: ReferenceProfile
) -> None:
    def threshold(reference: ReferenceProfile, rows: int) -> float:
        window = _window(np.random.default_rng(rows), rows, shifted=False)
        value = detect_drift(reference, window, DriftConfig(wasserstein=1e-6)).columns["stable"]
        assert value.threshold is not None
        return value.threshold

    large = [threshold(large_profile, rows) for rows in (300, 1000, 5000)]
    assert large[0] > large[1] > large[2]
    # Against 5,000 reference rows, 5,000 current rows are noisier than against 50,000.
    assert threshold(profile, 5000) > 1.2 * large[2]


def test_the_effect_floor_keeps_a_significant_but_tiny_difference_from_drifting(
    large_profile: ReferenceProfile,
) -> None:
    window = _window(np.random.default_rng(21), 5000, shifted=False)
    window["stable"] += 0.08  # significant at this size, below the floor of 0.1 std
    drift = detect_drift(large_profile, window, DriftConfig()).columns["stable"]
    assert drift.p_value is not None and drift.p_value < 0.01
    assert not drift.drifted
    assert drift.threshold == 0.1


def test_a_small_shifted_window_is_still_flagged(profile: ReferenceProfile) -> None:
    report = detect_drift(
        profile, _window(np.random.default_rng(6), 500, shifted=True), DriftConfig()
    )
    assert set(report.drifted_columns) == set(SHIFTED)


def _chunked(frame: pd.DataFrame, sizes: list[int]) -> list[pd.DataFrame]:
    bounds = np.cumsum([0, *sizes])
    assert bounds[-1] == len(frame)
    return [frame.iloc[start:stop] for start, stop in itertools.pairwise(bounds)]


def _assert_same(streamed: object, whole: object) -> None:
    if isinstance(whole, dict):
        assert isinstance(streamed, dict)
        assert streamed.keys() == whole.keys()
        for key in whole:
            _assert_same(streamed[key], whole[key])
    elif isinstance(whole, list):
        assert isinstance(streamed, list)
        assert len(streamed) == len(whole)
        for a, b in zip(streamed, whole, strict=True):
            _assert_same(a, b)
    elif isinstance(whole, float) and not isinstance(streamed, bool):
        assert streamed == pytest.approx(whole, rel=1e-12, abs=1e-12)
    else:
        assert streamed == whole


@pytest.mark.parametrize(
    ("rows", "sizes"),
    [
        (5000, [5000]),
        (5000, [1000] * 5),
        (5000, [1, 2, 997, 0, 3000, 999, 1]),
        (500, [100, 400]),
        (500, [1] * 20 + [480]),
        (1500, [400, 400, 400, 300]),
        (999, [998, 1]),
    ],
)
def test_streaming_in_chunks_equals_the_all_in_memory_result(
    profile: ReferenceProfile, rows: int, sizes: list[int]
) -> None:
    window = _window(np.random.default_rng(7), rows, shifted=True)
    window.loc[window.index[::7], "scale"] = np.nan
    window.loc[window.index[::11], "shifted_category"] = None
    whole = detect_drift(profile, [window], DriftConfig())
    streamed = detect_drift(profile, _chunked(window, sizes), DriftConfig())
    _assert_same(streamed.to_dict(), whole.to_dict())
    assert streamed.columns["scale"].missing == len(window.index[::7])


def test_a_constant_reference_column_is_compared_without_dividing_by_zero() -> None:
    profile = build_reference_profile(
        pd.DataFrame({"version": [3.0] * 2000}),
        ["a"] * 2000,
        numeric=["version"],
        categorical=[],
        task="classification",
    )
    same = pd.DataFrame({"version": [3.0] * 2000, PREDICTION: ["a"] * 2000})
    moved = same.assign(version=np.where(np.arange(2000) % 5 == 0, 4.0, 3.0))
    for window, drifted in ((same, False), (moved, True), (moved.iloc[:500], True)):
        report = detect_drift(profile, window, DriftConfig())
        version = report.columns["version"]
        assert version.drifted is drifted
        assert version.wasserstein is None  # no std to normalise by
        assert version.test == "js"
        json.dumps(report.to_dict(), allow_nan=False)
        assert all(math.isfinite(value) for value in report.metrics().values())


def test_categories_unseen_in_the_reference_are_counted_in_their_own_bucket(
    profile: ReferenceProfile,
) -> None:
    window = _window(np.random.default_rng(8), 5000, shifted=False)
    window.loc[window.index[:1500], "stable_category"] = "zebra"
    window.loc[window.index[1500:1600], "stable_category"] = "yak"
    drift = detect_drift(profile, window, DriftConfig()).columns["stable_category"]
    assert drift.drifted
    assert drift.unseen_share == pytest.approx(0.32)
    assert drift.unseen == ("yak", "zebra")
    assert drift.histogram.categories == ("a", "b", "c", "<unseen>")
    assert drift.histogram.current[-1] == pytest.approx(0.32)
    assert drift.histogram.reference[-1] == 0.0


def test_missing_values_are_counted_apart_from_the_distribution(
    profile: ReferenceProfile,
) -> None:
    window = _window(np.random.default_rng(9), 5000, shifted=False)
    window.loc[window.index[:2000], "stable"] = np.nan
    window.loc[window.index[:100], "stable_category"] = None
    report = detect_drift(profile, window, DriftConfig())
    assert (report.columns["stable"].n, report.columns["stable"].missing) == (3000, 2000)
    assert not report.columns["stable"].drifted
    assert report.columns["stable_category"].missing == 100
    assert not report.columns["stable_category"].drifted


def test_a_column_with_no_values_in_the_window_is_flagged(profile: ReferenceProfile) -> None:
    window = _window(np.random.default_rng(10), 100, shifted=False).assign(stable=np.nan)
    drift = detect_drift(profile, window, DriftConfig()).columns["stable"]
    assert drift.drifted
    assert drift.test == "missing"
    assert "no values in this window (100 missing)" in drift.note


def test_the_prediction_of_a_regressor_is_tested_as_a_numeric_column() -> None:
    rng = np.random.default_rng(11)
    features = pd.DataFrame({"x": rng.normal(size=5000)})
    profile = build_reference_profile(
        features, rng.normal(10, 2, 5000), numeric=["x"], categorical=[], task="regression"
    )
    window = pd.DataFrame({"x": rng.normal(size=5000), PREDICTION: rng.normal(11, 2, 5000)})
    report = detect_drift(profile, window, DriftConfig())
    assert report.columns[PREDICTION].kind == "numeric"
    assert report.columns[PREDICTION].wasserstein == pytest.approx(0.5, abs=0.05)
    assert report.drifted_columns == (PREDICTION,)
    assert report.dataset_drift  # 1 of 2 columns reaches the default share of 0.5


def test_the_report_is_strict_json_and_names_its_mlflow_metrics(
    shifted_report: DriftReport,
) -> None:
    data = json.loads(json.dumps(shifted_report.to_dict(), allow_nan=False))
    assert data["dataset_drift"] is True
    assert data["columns"]["mean_shift"]["histogram"]["edges"][0] < -3
    metrics = shifted_report.metrics()
    assert metrics["drift.mean_shift.drifted"] == 1.0
    assert metrics["drift.stable.wasserstein"] < 0.1
    assert metrics["drift.shifted_category.js"] >= 0.1
    assert "drift.stable.js" not in metrics
    assert metrics["drift.dataset_drift"] == 1.0
    for column in shifted_report.columns.values():
        histogram = column.histogram
        assert sum(histogram.reference) == pytest.approx(1.0)
        assert sum(histogram.current) == pytest.approx(1.0)
        if histogram.edges is not None:
            assert len(histogram.edges) == len(histogram.reference) + 1


def test_a_column_missing_from_the_window_is_named(profile: ReferenceProfile) -> None:
    window = _window(np.random.default_rng(12), 10, shifted=False).drop(columns="scale")
    with pytest.raises(DataValidationError, match=r"column\(s\) \['scale'\] of the reference"):
        detect_drift(profile, window, DriftConfig())
    assert DataValidationError.exit_code == 3


@pytest.mark.parametrize(
    "chunks",
    [
        lambda frame: [],
        lambda frame: [frame.iloc[:0]],
        lambda frame: [frame.iloc[:0], frame.iloc[:0]],
    ],
)
def test_an_empty_window_is_refused(
    profile: ReferenceProfile, chunks: Callable[[pd.DataFrame], list[pd.DataFrame]]
) -> None:
    frame = _window(np.random.default_rng(13), 10, shifted=False)
    with pytest.raises(DataValidationError, match="the monitoring window is empty"):
        detect_drift(profile, chunks(frame), DriftConfig())


def test_text_in_a_numeric_column_is_refused_and_leaves_the_counts_unchanged(
    profile: ReferenceProfile,
) -> None:
    good = _window(np.random.default_rng(14), 2000, shifted=False)
    accumulator = DriftAccumulator(profile, DriftConfig())
    accumulator.update(good.iloc[:1000])
    bad = good.iloc[1000:].astype({"lognormal": object})
    bad.loc[bad.index[5], "lognormal"] = "n/a"
    with pytest.raises(DataValidationError, match="column 'lognormal' is numeric"):
        accumulator.update(bad)
    accumulator.update(good.iloc[1000:])
    assert accumulator.rows == 2000
    _assert_same(
        accumulator.result().to_dict(), detect_drift(profile, good, DriftConfig()).to_dict()
    )


def test_a_column_without_reference_values_is_reported_but_not_tested() -> None:
    rng = np.random.default_rng(15)
    training = pd.DataFrame({"x": rng.normal(size=2000), "unused": np.nan})
    profile = build_reference_profile(
        training, ["a"] * 2000, numeric=["x", "unused"], categorical=[], task="classification"
    )
    window = pd.DataFrame({"x": rng.normal(size=2000), "unused": 1.0, PREDICTION: "a"})
    report = detect_drift(profile, window, DriftConfig())
    unused = report.columns["unused"]
    assert (unused.test, unused.drifted, unused.n) == ("none", False, 2000)
    assert "the reference has no values in this column" in unused.note
    assert report.tested_columns == ("x", PREDICTION)
    assert report.drifted_share == 0.0
    json.dumps(report.to_dict(), allow_nan=False)


def _with_importance(profile: ReferenceProfile, **shares: float) -> ReferenceProfile:
    rest = (1.0 - sum(shares.values())) / (len(profile.features) - len(shares))
    importance = {name: shares.get(name, rest) for name in profile.features}
    return dataclasses.replace(profile, importance=importance)


def _one_column_shifted(column: str, rows: int = 1000) -> pd.DataFrame:
    window = _window(np.random.default_rng(22), rows, shifted=False)
    window[column] += 0.5  # half a standard deviation
    return window


def test_the_important_features_are_the_fewest_holding_the_configured_share(
    profile: ReferenceProfile,
) -> None:
    ranked = _with_importance(profile, mean_shift=0.4, scale=0.3)
    assert important_features(ranked, 0.4) == ("mean_shift",)
    assert important_features(ranked, 0.5) == ("mean_shift", "scale")
    assert important_features(ranked, 1.0)[:2] == ("mean_shift", "scale")
    assert len(important_features(ranked, 1.0)) == len(profile.features)
    assert important_features(profile, 0.5) == profile.features  # no importance recorded


def test_an_important_feature_drifting_strongly_is_data_set_drift_on_its_own(
    profile: ReferenceProfile,
) -> None:
    report = detect_drift(
        _with_importance(profile, stable=0.85), _one_column_shifted("stable"), DriftConfig()
    )
    assert report.drifted_columns == ("stable",)
    assert report.drifted_share < 0.5
    assert report.strongly_drifted == ("stable",)
    assert report.dataset_drift
    assert report.important_columns == ("stable",)
    assert "important feature(s) stable drifted strongly" in report.reason


def test_an_unimportant_feature_drifting_alone_is_not_data_set_drift(
    profile: ReferenceProfile,
) -> None:
    report = detect_drift(
        _with_importance(profile, mean_shift=0.85), _one_column_shifted("stable"), DriftConfig()
    )
    assert report.drifted_columns == ("stable",)
    assert report.strongly_drifted == ()
    assert not report.dataset_drift


def test_without_recorded_importance_every_feature_counts_as_important(
    profile: ReferenceProfile,
) -> None:
    report = detect_drift(profile, _one_column_shifted("stable"), DriftConfig())
    assert not report.importance_known
    assert report.important_columns == profile.features
    # Bonferroni over all eight features.
    assert report.important_p_value == pytest.approx(DriftConfig().important_p_value / 8)
    assert report.dataset_drift


def test_the_important_feature_rule_can_be_turned_off(profile: ReferenceProfile) -> None:
    config = DriftConfig(important_p_value=0)
    report = detect_drift(
        _with_importance(profile, stable=0.85), _one_column_shifted("stable"), config
    )
    assert report.drifted_columns == ("stable",)
    assert not report.dataset_drift
