"""Code layer: the drift report of a monitoring finding, as JSON and as one self-contained page."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd

from pipeline.monitoring.config import DriftConfig
from pipeline.monitoring.drift import detect_drift
from pipeline.monitoring.findings import MonitorResult
from pipeline.monitoring.performance import MetricCheck, PerformanceWindow
from pipeline.monitoring.profile import build_reference_profile
from pipeline.reports import drift_report, model_card

START = datetime(2025, 3, 1, tzinfo=UTC)


def _found(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    name: str = "m",
    performance: tuple[PerformanceWindow, ...] = (),
) -> MonitorResult:
    rng = np.random.default_rng(1)
    profile = build_reference_profile(
        reference,
        rng.choice(["yes", "no"], len(reference)),
        numeric=[c for c in reference.columns if reference[c].dtype.kind == "f"],
        categorical=[c for c in reference.columns if reference[c].dtype.kind != "f"],
        task="classification",
    )
    current = current.assign(prediction=rng.choice(["yes", "no"], len(current)))
    return MonitorResult(
        run_id="r",
        model_name=name,
        model_version="1",
        model_run_id="t",
        window_start=START,
        window_end=START + timedelta(days=1),
        rows=len(current),
        labelled_rows=0,
        drift=detect_drift(profile, [current], DriftConfig()),
        performance=performance,
    )


def _check(value: float, std: float = 0.01) -> MetricCheck:
    return MetricCheck(
        value=value,
        reference_mean=0.9,
        reference_std=std,
        lower=0.9 - 3 * std,
        upper=0.9 + 3 * std,
        lower_is_better=False,
    )


def test_the_html_report_escapes_names_and_needs_nothing_from_outside() -> None:
    rng = np.random.default_rng(0)
    hostile = "<script>alert(1)</script>"
    reference = pd.DataFrame(
        {hostile: rng.normal(size=500), "plan & tier": rng.choice(["a", "c"], 500)}
    )
    page = drift_report.render_html(_found(reference, reference, name="m<1>"))
    assert hostile not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<h3>plan &amp; tier</h3>" in page
    assert "m&lt;1&gt;" in page
    assert page.count('src="data:image/png;base64,') == 3
    assert "<link" not in page and "<script" not in page


def test_drifted_columns_are_flagged_in_the_table_and_their_heading() -> None:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"stable": rng.normal(size=2000), "moved": rng.normal(size=2000)})
    current = reference.assign(moved=reference["moved"] + 3)
    found = _found(reference, current)
    page = drift_report.render_html(found)
    assert found.drift.drifted_columns == ("moved",)
    # Without recorded importance every feature is important (marked *).
    assert '<tr class="flag"><td>moved *</td><td>numeric</td><td>wasserstein</td>' in page
    assert "<tr><td>stable *</td>" in page
    assert "<h3>moved (drifted)</h3>" in page
    assert "<h3>stable</h3>" in page
    # One of three columns, but an important one drifting strongly: data-set drift.
    assert "important feature(s) moved drifted strongly" in page
    assert "<tr><th>Verdict</th><td>drift</td></tr>" in page
    assert "no importance recorded at training: every feature counts" in page


def test_unseen_categories_are_named_under_their_column() -> None:
    rng = np.random.default_rng(0)
    reference = pd.DataFrame({"plan": rng.choice(["a", "b"], 500)})
    current = pd.DataFrame({"plan": rng.choice(["a", "<new>", "z"], 500)})
    page = drift_report.render_html(_found(reference, current))
    assert "<p>Categories never seen in training: &lt;new&gt;, z</p>" in page


def test_performance_windows_show_their_band_and_flag_only_a_worse_value() -> None:
    window = PerformanceWindow(
        start=START,
        end=START + timedelta(days=1),
        rows=40,
        metrics={"accuracy": _check(0.5), "f1_macro": _check(0.9), "roc_auc": _check(1.0, 0.0)},
    )
    reference = pd.DataFrame({"x": np.random.default_rng(0).normal(size=200)})
    page = drift_report.render_html(_found(reference, reference, performance=(window,)))
    start = START.isoformat()
    assert f'<tr class="flag"><td>{start}</td><td>40</td><td>accuracy</td><td>0.5</td>' in page
    assert "<td>[0.87, 0.93]</td><td>yes</td></tr>" in page
    assert f"<tr><td>{start}</td><td>40</td><td>f1_macro</td>" in page
    assert "<td>not judged (no spread in the reference chunks)</td>" in page


def test_without_labelled_windows_the_page_has_no_performance_section() -> None:
    reference = pd.DataFrame({"x": np.random.default_rng(0).normal(size=200)})
    page = drift_report.render_html(_found(reference, reference))
    assert "<h2>Performance</h2>" not in page


def test_the_json_report_is_strict_json_with_model_window_drift_and_performance() -> None:
    window = PerformanceWindow(
        start=START, end=START + timedelta(days=1), rows=40, metrics={"accuracy": _check(0.5)}
    )
    reference = pd.DataFrame({"x": np.random.default_rng(0).normal(size=200)})
    found = _found(reference, reference, performance=(window,))
    document = json.loads(json.dumps(drift_report.as_json(found), allow_nan=False))
    assert document["model"] == {"name": "m", "version": "1", "run_id": "t"}
    assert document["window"] == {
        "start": START.isoformat(),
        "end": (START + timedelta(days=1)).isoformat(),
    }
    assert document["verdict"] == "degraded"
    assert document["drift"]["columns"]["x"]["test"] == "wasserstein"
    assert document["drift"]["important_columns"] == ["x"]
    assert document["performance"]["degraded"] is True
    assert document["performance"]["windows"][0]["metrics"]["accuracy"]["degraded"] is True


def test_the_drift_report_and_the_model_card_share_one_stylesheet() -> None:
    reference = pd.DataFrame({"x": np.random.default_rng(0).normal(size=200)})
    drift_page = drift_report.render_html(_found(reference, reference))
    card = model_card.ModelCardInput(
        name="m",
        version="1",
        run_id="r",
        run_name=None,
        task=None,
        created="2025-03-01T00:00:00+00:00",
        description=None,
        estimator=None,
        estimator_params={},
        search=None,
        data=model_card.DataSection(None, None, None, None, None, None, None, None, None),
        config_yaml=None,
        metrics={},
        cv_metrics={},
        baseline_metrics={},
        plots=(),
        gate=None,
        lineage=model_card.Lineage(None, None, None, None, None, None, "#/r"),
    )
    card_page = model_card.render_html(card)
    styles = [re.findall(r"<style>(.*?)</style>", p, re.S) for p in (drift_page, card_page)]
    assert styles[0] == styles[1]
    assert len(styles[0]) == 1
    assert "tr.flag td" in styles[0][0]
    assert ".decision" in styles[0][0]
