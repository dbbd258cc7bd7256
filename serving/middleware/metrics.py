"""Prometheus metrics: one registry per app, and a pure ASGI middleware for request metrics.

Series (text exposition format on ``GET /metrics``); with several workers the request,
batch, reload and domain counters are summed over all workers, the rest are the answering
worker's own:

- ``serving_requests_total{method, route, status}``: every HTTP request, by route template
  (``unmatched`` for paths no route serves) and method (``other`` beyond the standard ones).
- ``serving_request_duration_seconds{method, route, status}``: latency histogram, without
  the health routes (``/health/*``) and ``/metrics`` themselves.
- ``serving_batch_size_rows``: rows per model call (micro-batching at work when > 1).
- ``serving_batch_fallbacks_total``: merged batches that failed and were re-run per request.
- ``serving_queue_depth``: requests waiting for a batch right now.
- ``serving_input_outside_domain_total{column}``: request values outside the training domain
  (answered, and flagged per row in ``warnings``).
- ``serving_model_info{name, version}``: 1 for the version answering predictions.
- ``serving_model_reloads_total{result="success"|"failure"}``: model loads and swaps.
- ``serving_model_reload_failing``: 1 while the registry cannot be asked or the version it
  designates cannot be loaded (``/health/ready`` says why and since when); 0 once it can.
- ``serving_model_fault{type}``: 1 for the kind of that fault (``registry_unavailable``,
  ``model_artifact_error``, ...), no series while there is none.

Champion and challenger on live traffic (see :mod:`serving.live.traffic`), ``role`` being
``champion`` or ``challenger`` (a bounded set):

- ``serving_live_predictions_total{role, outcome}``: requests each version predicted
  (answered or shadowed), ``outcome`` ``ok``, ``error`` or ``timeout``.
- ``serving_live_model_seconds{role}``: each version's model time per request (answers only).
- ``serving_live_shadow_dropped_total``: requests not shadowed, too many were in flight.
- ``serving_live_compared_rows_total`` and ``serving_live_agreed_rows_total``: rows both
  versions answered, and those they agreed on (same label; values within 1% for regressors);
  ``serving_live_agreement_ratio``: their ratio in this worker since it started.
- ``serving_challenger_info{name, version, mode}``: 1 for the challenger loaded beside the
  champion; ``serving_challenger_rolled_back``: 1 while its canary is rolled back.

With the prediction log on (see :mod:`serving.prediction_log`), ``kind`` being ``prediction``
or ``feedback``:

- ``prediction_log_records_written_total{kind}``: records in Parquet parts on disk.
- ``prediction_log_records_dropped_total{kind}``: records not logged because the queue was full,
  or the writer held 200,000 rows its disk had not taken yet.
- ``prediction_log_records_failed_total{kind}``: records lost because their part failed.
- ``prediction_log_write_errors_total``: parts that could not be written (disk full, permission).
- ``prediction_log_queue_records``: records waiting for the writer right now.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from serving.prediction_log import PredictionLogStats

__all__ = ["CONTENT_TYPE", "MULTIPROCESS_DIR", "MetricsMiddleware", "ServingMetrics"]

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
"""prometheus_client's variable: where workers write the shared metrics (several workers)."""

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
_UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_OTHER_METHOD = "other"
"""Label of every method outside ``_METHODS``: a client inventing methods must not be able
to add series (each one a few lines on every scrape, forever)."""


def _untimed(route: str) -> bool:
    return route.startswith("/health/") or route == "/metrics"


class ServingMetrics:
    """The metrics of one app, in their own registries (apps in one process never collide).

    ``shared`` holds the counters and histograms: with several workers
    (``PROMETHEUS_MULTIPROC_DIR`` set by ``python -m serving``), each worker writes them to
    files there and every scrape sums all workers' files, whichever worker answers it.
    ``registry`` holds what only the answering worker can tell: its pid, its queue, its
    model, its prediction log.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.shared = CollectorRegistry()
        self._multiprocess_dir = os.environ.get(MULTIPROCESS_DIR)
        labels = ("method", "route", "status")
        self.requests = Counter(
            "serving_requests",
            "HTTP requests by route template and status.",
            labels,
            registry=self.shared,
        )
        self.latency = Histogram(
            "serving_request_duration_seconds",
            "HTTP request latency by route template and status (health routes excluded).",
            labels,
            buckets=_LATENCY_BUCKETS,
            registry=self.shared,
        )
        self.batch_size = Histogram(
            "serving_batch_size_rows",
            "Rows per model predict call (requests merged by micro-batching).",
            buckets=_BATCH_BUCKETS,
            registry=self.shared,
        )
        self.batch_fallbacks = Counter(
            "serving_batch_fallbacks",
            "Merged batches that failed and were predicted again one request at a time.",
            registry=self.shared,
        )
        self.queue_depth = Gauge(
            "serving_queue_depth",
            "Prediction requests waiting for a batch.",
            registry=self.registry,
        )
        self.queue_depth.set_function(lambda: float(self._queue_depth()))
        self.model_info = Gauge(
            "serving_model_info",
            "1 for the registered model version answering predictions.",
            ("name", "version"),
            registry=self.registry,
        )
        self.reloads = Counter(
            "serving_model_reloads",
            "Attempts to load a model version (at start-up or after the registry changed).",
            ("result",),
            registry=self.shared,
        )
        for result in ("success", "failure"):
            self.reloads.labels(result=result)
        self.reload_failing = Gauge(
            "serving_model_reload_failing",
            "1 while the registry cannot be asked or the version it designates fails to load "
            "(the old one keeps serving); 0 once both work again.",
            registry=self.registry,
        )
        self.fault = Gauge(
            "serving_model_fault",
            "1 for the type of the current registry or model fault (see /health/ready).",
            ("type",),
            registry=self.registry,
        )
        self.outside_domain = Counter(
            "serving_input_outside_domain",
            "Request values outside the training domain (answered, flagged in 'warnings'), "
            "by input column.",
            ("column",),
            registry=self.shared,
        )
        self.live_predictions = Counter(
            "serving_live_predictions",
            "Requests each version (role) predicted, answered or shadowed, by outcome.",
            ("role", "outcome"),
            registry=self.shared,
        )
        self.live_seconds = Histogram(
            "serving_live_model_seconds",
            "Model time per request, by version role (answers only).",
            ("role",),
            buckets=_LATENCY_BUCKETS,
            registry=self.shared,
        )
        self.shadow_dropped = Counter(
            "serving_live_shadow_dropped",
            "Requests not shadowed: SERVING_SHADOW_MAX_IN_FLIGHT were waiting already.",
            registry=self.shared,
        )
        self.compared_rows = Counter(
            "serving_live_compared_rows",
            "Rows both champion and challenger answered.",
            registry=self.shared,
        )
        self.agreed_rows = Counter(
            "serving_live_agreed_rows",
            "Rows both answered alike (same label; values within 1% for regressors).",
            registry=self.shared,
        )
        self._live_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self._compared = 0
        self._agreed = 0
        agreement = Gauge(
            "serving_live_agreement_ratio",
            "Share of compared rows champion and challenger agreed on, in this worker.",
            registry=self.registry,
        )
        agreement.set_function(lambda: self.agreement_rate or 0.0)
        self.challenger_info = Gauge(
            "serving_challenger_info",
            "1 for the challenger version loaded beside the champion, with its mode.",
            ("name", "version", "mode"),
            registry=self.registry,
        )
        self.challenger_rolled_back = Gauge(
            "serving_challenger_rolled_back",
            "1 while the challenger's canary is rolled back (see /health/ready).",
            registry=self.registry,
        )
        self._queue_depth: Callable[[], int] = lambda: 0
        self._children: dict[tuple[str, str, int], tuple[Any, Any | None]] = {}

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Read the queue depth from ``depth`` at every scrape."""
        self._queue_depth = depth

    def watch_prediction_log(self, stats: Callable[[], PredictionLogStats]) -> None:
        """Expose the prediction log's counters, read from ``stats`` at every scrape."""
        self.registry.register(_PredictionLogCollector(stats))

    def model_loaded(self, name: str, version: str) -> None:
        self.model_info.clear()
        self.model_info.labels(name=name, version=version).set(1)
        self.reloads.labels(result="success").inc()
        self.fault_cleared()

    def model_load_failed(self, fault_type: str = "model_load_error") -> None:
        self.reloads.labels(result="failure").inc()
        self.reload_failing.set(1)
        self.fault.clear()
        self.fault.labels(type=fault_type).set(1)

    def fault_cleared(self) -> None:
        """The registry answers and the version it designates is the one serving."""
        self.reload_failing.set(0)
        self.fault.clear()

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = {"method": method, "route": route, "status": str(status)}
            timed = None if _untimed(route) else self.latency.labels(**labels)
            children = (self.requests.labels(**labels), timed)
            self._children[key] = children
        counter, histogram = children
        counter.inc()
        if histogram is not None:
            histogram.observe(seconds)

    def live_outcome(
        self, role: str, outcome: str, seconds: float | None, *, requests: int = 1
    ) -> None:
        """One version's outcome (``ok``, ``error`` or ``timeout``) on ``requests`` requests
        answered by one model call that took ``seconds`` (observed once: it is one call)."""
        key = (role, outcome)
        children = self._live_children.get(key)
        if children is None:
            # ``labels()`` hashes and locks on every call: on a hot path, look each pair up once.
            children = (
                self.live_predictions.labels(role=role, outcome=outcome),
                self.live_seconds.labels(role=role),
            )
            self._live_children[key] = children
        children[0].inc(requests)
        if seconds is not None:
            children[1].observe(seconds)

    def agreement(self, compared: int, agreed: int) -> None:
        self._compared += compared
        self._agreed += agreed
        self.compared_rows.inc(compared)
        self.agreed_rows.inc(agreed)

    @property
    def agreement_rate(self) -> float | None:
        """Share of compared rows both versions agreed on in this worker; None before any."""
        return self._agreed / self._compared if self._compared else None

    def challenger(
        self, name: str | None, version: str | None, mode: str, rolled_back: bool
    ) -> None:
        """The challenger loaded now (None: none is), and whether its canary is rolled back."""
        self.challenger_info.clear()
        if name is not None and version is not None:
            self.challenger_info.labels(name=name, version=version, mode=mode).set(1)
        self.challenger_rolled_back.set(1 if rolled_back else 0)

    def count_outside_domain(self, columns: Iterable[str]) -> None:
        """Count flagged values; ``columns`` are the model's inputs (a bounded label set)."""
        for column in columns:
            self.outside_domain.labels(column=column).inc()

    def render(self) -> bytes:
        if self._multiprocess_dir is None:
            return generate_latest(self.shared) + generate_latest(self.registry)
        every_worker = CollectorRegistry()
        every_worker.register(_SharedFiles(self._multiprocess_dir, self.shared))
        return generate_latest(every_worker) + generate_latest(self.registry)


class _SharedFiles(Collector):
    """The ``shared`` metrics summed over every worker's files (gauges of the per-worker
    registry are in those files too, and left out: the answering worker reports its own)."""

    def __init__(self, path: str, shared: CollectorRegistry) -> None:
        self._collector = MultiProcessCollector(None, path=path)
        self._names = {metric.name for metric in shared.collect()}

    def collect(self) -> Iterator[Metric]:
        for metric in self._collector.collect():
            if metric.name in self._names:
                yield metric


class _PredictionLogCollector(Collector):
    """The log counts in plain integers, each written by one thread (no lock on the request
    path); this turns them into series when Prometheus scrapes."""

    def __init__(self, stats: Callable[[], PredictionLogStats]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for name, help_text, values in (
            ("written", "Records written to Parquet parts of the prediction log.", stats.written),
            (
                "dropped",
                "Records not logged: the log queue was full or the disk fell 200,000 rows behind.",
                stats.dropped,
            ),
            ("failed", "Records lost because their part could not be written.", stats.failed),
        ):
            family = CounterMetricFamily(
                f"prediction_log_records_{name}", help_text, labels=["kind"]
            )
            for kind, count in values.items():
                family.add_metric([kind], count)
            yield family
        yield CounterMetricFamily(
            "prediction_log_write_errors",
            "Prediction log parts that could not be written (disk full, no permission).",
            value=stats.write_errors,
        )
        yield GaugeMetricFamily(
            "prediction_log_queue_records",
            "Records waiting for the prediction log writer.",
            value=stats.queued,
        )


class MetricsMiddleware:
    """Count and time every HTTP request by route template; a pure ASGI middleware."""

    def __init__(self, app: ASGIApp, metrics: ServingMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or _UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else _OTHER_METHOD
            self.metrics.observe_request(method, route, status, time.perf_counter() - start)
