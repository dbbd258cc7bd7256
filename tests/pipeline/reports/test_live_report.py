"""Code layer: the live report shows both versions side by side, escaped, with the interval."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pipeline.monitoring import live
from pipeline.monitoring.live_compare import LiveComparison
from pipeline.reports import live_report
from pipeline.steps import bootstrap


def comparison(*, interval: bool = True, model: str = "iris") -> LiveComparison:
    gain = bootstrap.GainInterval(0.12, 0.05, 0.19, 0.95, 1000, 300) if interval else None
    return LiveComparison(
        model_name=model,
        champion=live.VersionTraffic("1", 400, 400, 400, 400, 0, {50: 1.5, 95: 2.5, 99: 3.25}),
        challenger=live.VersionTraffic("2", 400, 400, 396, 0, 4, {50: 2.0, 95: 3.0, 99: None}),
        window_start=datetime(2026, 1, 5, tzinfo=UTC),
        window_end=datetime(2026, 1, 6, tzinfo=UTC),
        evidence=live.LiveEvidence(
            "test_accuracy", 396, 0.87, 300 if interval else 12, 0.8, 0.92, gain, None
        ),
        drift=0.0412,
        baseline="always 'setosa', with the class shares of v2's data",
        rolled_back=None,
        run_id="run1",
    )


def test_the_page_shows_both_versions_traffic_and_the_paired_interval_of_the_gain() -> None:
    page = live_report.render_html(comparison())
    for shown in (
        "iris v2 (challenger) vs v1 (champion)",
        "<td>challenger v2</td><td>400</td><td>400</td><td>0</td><td>4</td><td>1.00%</td>",
        "<td>3.25</td>",
        "87.00%",
        "0.0412",
        "[+0.0500, +0.1900]",
        "1000 resamples of 300 labelled requests",
    ):
        assert shown in page, shown
    assert '<tr class="flag"><td>challenger v2' in page  # it failed requests


def test_without_enough_labels_the_page_says_how_to_send_them() -> None:
    page = live_report.render_html(comparison(interval=False))
    assert "12 labelled shared requests: not enough to score both versions yet" in page
    assert "POST /feedback" in page


def test_names_from_the_registry_are_escaped() -> None:
    page = live_report.render_html(comparison(model="<script>x</script>"))
    assert "<script>x" not in page and "&lt;script&gt;x&lt;/script&gt;" in page


def test_the_json_report_is_strict_json_with_null_for_what_was_not_measured() -> None:
    document = live_report.as_json(comparison())
    text = json.dumps(document, allow_nan=False)
    assert document["challenger"]["latency_ms"]["p99"] is None
    assert document["gain"]["lower"] == 0.05 and document["gain_over_baseline"] is None
    assert json.loads(text)["shared_requests"] == 396
