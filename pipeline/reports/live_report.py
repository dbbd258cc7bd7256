"""Live report: what one live-compare run found, as a JSON document and one self-contained HTML
page (the two versions side by side: traffic, errors, latency, agreement, drift, and the gate
metric of both on the same labelled requests with the paired interval of the gain)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pipeline.reports.render import render

if TYPE_CHECKING:
    from pipeline.monitoring.live import VersionTraffic
    from pipeline.monitoring.live_compare import LiveComparison


def as_json(found: LiveComparison) -> dict[str, Any]:
    """The whole comparison as a JSON-able dict (no NaN: a missing figure is null)."""
    evidence = found.evidence

    def interval(value: Any) -> dict[str, Any] | None:
        if value is None:
            return None
        return {
            "gain": value.gain,
            "lower": value.lower,
            "upper": value.upper,
            "level": value.level,
            "resamples": value.resamples,
            "rows": value.rows,
        }

    return {
        "model": found.model_name,
        "window": {
            "start": None if found.window_start is None else found.window_start.isoformat(),
            "end": found.window_end.isoformat(),
        },
        "champion": _traffic_json(found.champion),
        "challenger": _traffic_json(found.challenger),
        "shared_requests": evidence.shared,
        "labelled_shared_requests": evidence.labelled,
        "agreement": _finite(evidence.agreement),
        "prediction_drift_js": _finite(found.drift),
        "metric": evidence.metric,
        "champion_score": _finite(evidence.champion_score),
        "challenger_score": _finite(evidence.challenger_score),
        "gain": interval(evidence.interval),
        "baseline": found.baseline,
        "gain_over_baseline": interval(evidence.baseline_interval),
        "canary_rolled_back": found.rolled_back,
    }


def render_html(found: LiveComparison) -> str:
    """The page; every name and value from the log or the registry is escaped."""
    evidence = found.evidence
    start = "the first logged request" if found.window_start is None else found.window_start
    summary = [
        ("Model", found.model_name),
        ("Champion (Production)", f"v{found.champion.version}"),
        ("Challenger (Staging)", f"v{found.challenger.version}"),
        ("Window", f"{start} to {found.window_end.isoformat()}"),
        ("Shared requests (answered by both)", str(evidence.shared)),
        ("Labelled shared requests", str(evidence.labelled)),
        ("Agreement", _share(evidence.agreement)),
        ("Prediction drift (Jensen-Shannon distance, 0 = same)", _number(found.drift)),
    ]
    if found.rolled_back is not None:
        summary.append(("Canary rolled back by the server", found.rolled_back))
    versions = [
        _traffic_cells("champion", found.champion),
        _traffic_cells("challenger", found.challenger),
    ]
    scores = []
    if evidence.interval is not None:
        gain = evidence.interval
        scores = [
            ("Metric", evidence.metric),
            ("Challenger", _number(evidence.challenger_score)),
            ("Champion", _number(evidence.champion_score)),
            ("Gain (positive: challenger better)", f"{gain.gain:+.4f}"),
            (f"{gain.level:.0%} confidence interval", f"[{gain.lower:+.4f}, {gain.upper:+.4f}]"),
            ("Paired bootstrap", f"{gain.resamples} resamples of {gain.rows} labelled requests"),
        ]
        if evidence.baseline_interval is not None:
            trivial = evidence.baseline_interval
            scores += [
                ("Trivial baseline", found.baseline or "-"),
                (
                    "Gain over the baseline, interval",
                    f"{trivial.gain:+.4f} [{trivial.lower:+.4f}, {trivial.upper:+.4f}]",
                ),
            ]
    return render(
        "live_report.html.j2",
        title=(
            f"Live comparison: {found.model_name} v{found.challenger.version} (challenger) vs "
            f"v{found.champion.version} (champion)"
        ),
        summary=summary,
        versions=versions,
        scores=scores,
        labelled=evidence.labelled,
        metric=evidence.metric,
    )


def _traffic_json(seen: VersionTraffic) -> dict[str, Any]:
    return {
        "version": seen.version,
        "requests": seen.requests,
        "rows": seen.rows,
        "answered_rows": seen.answered,
        "served_rows": seen.served,
        "failed_requests": seen.errors,
        "error_rate": _finite(seen.error_rate),
        "latency_ms": {f"p{p}": _finite(v) for p, v in seen.latency_ms.items()},
    }


def _traffic_cells(role: str, seen: VersionTraffic) -> dict[str, Any]:
    cells = (
        f"{role} v{seen.version}",
        str(seen.requests),
        str(seen.rows),
        str(seen.served),
        str(seen.errors),
        _share(seen.error_rate),
        *(_number(v, ".2f") for v in seen.latency_ms.values()),
    )
    return {"cells": cells, "flag": bool(seen.errors)}


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _number(value: float | None, spec: str = ".4f") -> str:
    return "-" if _finite(value) is None else format(value, spec)


def _share(value: float | None) -> str:
    return "-" if _finite(value) is None else f"{value:.2%}"
