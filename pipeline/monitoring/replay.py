"""Replay held-out rows to a running server as live traffic, then send their labels.

A rehearsal of the live gate before real traffic exists: each of the config's held-out rows (the
rows the gate scores on, which neither a champion nor a challenger trained on the same data and
split has seen) is sent as its own ``POST /predict`` with a routing key of its own, so a canary
split spreads over them as it would over users; once answered, the true labels go to
``POST /feedback`` keyed by each answer's ``X-Request-ID``. The server logs both versions'
answers; ``live-compare`` and ``live-gate`` then judge them.

The result is rehearsal evidence, not production evidence: held-out rows come from the training
distribution, and real traffic may not. The standard library's HTTP client is enough here: this
runs once per rehearsal, not on a hot path.
"""

from __future__ import annotations

import json
import logging
import math
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd

from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError
from pipeline.steps import features, ingest

logger = logging.getLogger(__name__)

FEEDBACK_CHUNK = 500
"""Labels per ``/feedback`` request: well under the server's default row limit."""


class ReplayError(PipelineError):
    """The server could not be reached, or refused the replayed rows or labels."""

    exit_code = 1


@dataclass(frozen=True)
class ReplaySettings:
    url: str
    """The server's base URL, e.g. ``http://127.0.0.1:8000``."""
    rows: int | None = None
    """Replay at most this many held-out rows (all by default)."""
    concurrency: int = 8
    api_key: str | None = None
    timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        if self.rows is not None and self.rows < 1:
            raise ReplayError(f"--rows must be at least 1, got {self.rows}")
        if self.concurrency < 1:
            raise ReplayError(f"--concurrency must be at least 1, got {self.concurrency}")


@dataclass(frozen=True)
class ReplayResult:
    sent: int
    labelled: int
    answered_by: Mapping[str, int]
    """Requests answered per model version (the ``X-Model-Version`` header)."""


def run(config: PipelineConfig, settings: ReplaySettings) -> ReplayResult:
    """Send the config's held-out rows one request each, then their labels."""
    held_out = features.split(config, ingest.run(config))
    X, y = held_out.X_test, held_out.y_test
    if settings.rows is not None:
        X, y = X.iloc[: settings.rows], y.iloc[: settings.rows]
    base = settings.url.rstrip("/")
    records = [_record(row) for row in X.to_dict(orient="records")]
    keys = [f"replay-{index}" for index in X.index]

    def ask(item: tuple[dict[str, Any], str]) -> tuple[str, str]:
        record, key = item
        headers = _headers(settings, {"X-Routing-Key": key})
        return _post(f"{base}/predict", record, headers, settings.timeout_seconds)

    with ThreadPoolExecutor(max_workers=settings.concurrency) as pool:
        answers = list(pool.map(ask, zip(records, keys, strict=True)))
    labels = [
        {"request_id": request_id, "row": 0, "label": _label(config, value)}
        for (request_id, _), value in zip(answers, y.tolist(), strict=True)
    ]
    for start in range(0, len(labels), FEEDBACK_CHUNK):
        _post(
            f"{base}/feedback",
            {"labels": labels[start : start + FEEDBACK_CHUNK]},
            _headers(settings, {}),
            settings.timeout_seconds,
        )
    result = ReplayResult(
        sent=len(answers),
        labelled=len(labels),
        answered_by=dict(Counter(version for _, version in answers)),
    )
    logger.info(
        "Replayed %d held-out rows to %s and sent their labels; answered by %s",
        result.sent,
        base,
        ", ".join(f"version {v}: {n}" for v, n in sorted(result.answered_by.items())),
    )
    return result


def _record(row: Mapping[str, Any]) -> dict[str, Any]:
    """One row as JSON takes it: missing values as null, NumPy scalars as Python ones."""
    record: dict[str, Any] = {}
    for name, value in row.items():
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            record[str(name)] = None
        elif hasattr(value, "item"):
            record[str(name)] = value.item()
        else:
            record[str(name)] = value
    return record


def _label(config: PipelineConfig, value: Any) -> str | float:
    # The log keeps a classifier's labels as str() of the class (pipeline.contracts.label_type).
    return float(value) if config.task == "regression" else str(value)


def _headers(settings: ReplaySettings, extra: Mapping[str, str]) -> dict[str, str]:
    headers = {"Content-Type": "application/json", **extra}
    if settings.api_key:
        headers["Authorization"] = f"Bearer {settings.api_key}"
    return headers


def _post(url: str, body: object, headers: Mapping[str, str], timeout: float) -> tuple[str, str]:
    """POST JSON; (request id, answering version). Raises ReplayError naming the route."""
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers=dict(headers), method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return (
                response.headers.get("X-Request-ID", ""),
                response.headers.get("X-Model-Version", "?"),
            )
    except urllib.error.HTTPError as exc:
        detail = exc.read(2000).decode(errors="replace")
        raise ReplayError(f"{url} answered {exc.code}: {detail}") from exc
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        raise ReplayError(
            f"cannot reach the server at {url} ({exc}); start it with `make serve` and pass its "
            "address with --url"
        ) from exc


def describe(result: ReplayResult) -> Sequence[str]:
    """What the CLI prints."""
    versions = ", ".join(f"v{v}: {n}" for v, n in sorted(result.answered_by.items()))
    return [
        f"replayed {result.sent} held-out rows (answered by {versions}) and sent "
        f"{result.labelled} labels",
        "next: python -m pipeline live-compare --config <config>  (or live-gate)",
    ]
