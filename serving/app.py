"""The FastAPI application: ``create_app(settings)``, and ``app_from_env`` for uvicorn workers.

The model is loaded in the lifespan, never at import or in ``create_app``; if loading fails
the server still starts, reports why on ``/health/ready`` and keeps retrying. Each worker
process builds its own app, so each loads its own model, runs its own batcher and writes its
own prediction log parts (the process id is in their names). The log's writer starts with
the lifespan and writes what it still holds when the app shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.telemetry import TelemetryConfig
from prometheus_client import Gauge
from pydantic.json_schema import models_json_schema
from starlette.routing import Match, Route
from starlette.types import Scope

from pipeline.contracts import CHALLENGER_STAGE, store_id
from serving.errors import add_error_handlers
from serving.live.judge import RollbackBounds
from serving.live.routing import ROUTING_HEADER
from serving.live.traffic import LiveOptions, LiveTraffic
from serving.middleware.limits import RequestTimeoutMiddleware, keyed_protocol, prediction_protocol
from serving.middleware.metrics import MetricsMiddleware, ServingMetrics
from serving.middleware.request_id import RequestIdMiddleware
from serving.middleware.security import ApiKeyMiddleware
from serving.model.challenger import ChallengerHolder
from serving.model.state import ActiveModel, BatchingOptions, ModelHolder
from serving.prediction_log import PredictionLog
from serving.protocols import kserve_v2, mlflow_scoring
from serving.routes import predict_records, router
from serving.settings import Settings

logger = logging.getLogger(__name__)

STARTUP_WAIT_SECONDS = 30.0
"""How long startup waits for the first load attempt before serving without a model."""

_REF_TEMPLATE = "#/components/schemas/{model}"


def create_app(settings: Settings) -> FastAPI:
    """Build the app for ``settings``; the model loads when the app starts (lifespan)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        holder = ModelHolder(
            settings.model_ref,
            settings.tracking_uri,
            settings.poll_seconds,
            on_change=lambda _active: _reset_openapi(app),
            batching=BatchingOptions(
                max_batch_size=settings.max_batch_size,
                max_wait_seconds=settings.max_batch_wait_ms / 1000,
            ),
            metrics=metrics,
        )
        app.state.models = holder
        challenger = _challenger_holder(settings, holder)
        holder.follower = challenger
        app.state.traffic = traffic = LiveTraffic(
            challenger, _live_options(settings), metrics, prediction_log
        )
        if prediction_log is not None:
            prediction_log.start()
        worker.clear()
        worker.labels(pid=str(os.getpid())).set(1)
        logger.info("Serving %s from %s", settings.model_ref, settings.tracking_uri)
        if challenger is not None:
            logger.info(
                "Challenger mode %s%s: the version in %s of '%s', when there is one",
                settings.challenger_mode,
                f" at {settings.canary_percent:g}%" if settings.challenger_mode == "canary" else "",
                CHALLENGER_STAGE,
                challenger.ref.name,
            )
        watcher = asyncio.create_task(holder.watch(), name="serving-model-watch")
        try:
            await asyncio.wait_for(holder.first_attempt.wait(), timeout=STARTUP_WAIT_SECONDS)
        except TimeoutError:
            logger.warning("First load of %s still running; starting without a model", holder.ref)
        try:
            yield
        finally:
            # By now the server has stopped accepting and waited for requests in flight (up to
            # SERVING_GRACEFUL_TIMEOUT_SECONDS). Stop polling, then let the batchers answer
            # whatever is still queued before they stop: nothing waiting on them is cancelled.
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await traffic.close()  # shadow predictions in flight finish and are logged
            await holder.close()
            if challenger is not None:
                await challenger.close()
            if prediction_log is not None:  # every request has handed its records over by now
                await asyncio.to_thread(prediction_log.close)

    app = FastAPI(
        title="Model serving",
        summary="Predictions from the MLflow registered model",
        version="1",
        lifespan=lifespan,
        telemetry=_fastapi_telemetry(),
    )
    metrics = ServingMetrics()
    prediction_log = _prediction_log(settings)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.prediction_log = prediction_log
    if prediction_log is not None:
        metrics.watch_prediction_log(lambda: prediction_log.stats)
    worker = Gauge(
        "serving_worker_info",
        "1, labelled with the process id of the worker that answered this scrape.",
        ("pid",),
        registry=metrics.registry,
    )
    # Innermost first: the timeout wraps the route, the key check runs before it, and the
    # metrics see every answer, 401 and 504 included.
    app.add_middleware(RequestTimeoutMiddleware, seconds=settings.request_timeout_seconds)
    if settings.api_key is not None:
        app.add_middleware(ApiKeyMiddleware, api_key=settings.api_key)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    # Outermost, so the id reaches every answer of a prediction route: 401 and 504 included.
    app.add_middleware(RequestIdMiddleware, applies_to=_is_prediction_route)
    add_error_handlers(app)
    # The wire protocols other tools speak: MLflow's scoring server and KServe/Open Inference v2.
    _add_routes(app, router, mlflow_scoring.router, kserve_v2.router)
    _install_openapi(app)
    return app


def _fastapi_telemetry() -> TelemetryConfig | None:
    """FastAPI's native OpenTelemetry, unless nothing in the environment asks for it.

    FastAPI looks for a configured OpenTelemetry provider on every request (about 5 µs of a
    single-row prediction's few hundred, three environment reads among them). The server's
    own metrics are Prometheus; OpenTelemetry stays FastAPI's default, checked per request,
    as soon as any ``OTEL_*`` or ``FASTAPI_OTEL_*`` variable is set.
    """
    if any(name.startswith(("OTEL_", "FASTAPI_OTEL_")) for name in os.environ):
        return None
    return {"tracing": False, "metrics": False, "logs": False}


def _add_routes(app: FastAPI, *routers: APIRouter) -> None:
    """Put the routers' routes on the app itself rather than ``include_router`` them.

    FastAPI 0.165 keeps an included router as one node that re-checks its routes' version and
    matches them anew on every request: about 75 µs a request here, for three routers, against
    a single-row prediction's few hundred. Each route already carries its router's prefix, route
    class and tags (they are applied when a route is declared). One thing does change:
    ``app.dependency_overrides`` does not reach these routes (their handlers were built with
    their own router as the provider); tests swap the model in the holder instead.
    """
    for included in routers:
        app.router.routes.extend(included.routes)
    # The single-row hot path: the same endpoint, ahead of its documented APIRoute, through
    # Starlette's plain request-response wrapper. FastAPI's handler (parameter resolution,
    # response checks) costs about 85 µs a request here and does nothing for an endpoint
    # that takes the bare Request and returns a Response; errors still reach the app's
    # handlers. The APIRoute stays for the OpenAPI document and matches nothing first.
    # v2 infer likewise, its errors still in the protocol's shape.
    app.router.routes.insert(0, _PlainRoute("/predict", predict_records, methods=["POST"]))
    app.router.routes.insert(
        1, _PlainRoute(kserve_v2.PLAIN_INFER_PATH, kserve_v2.plain_infer, methods=["POST"])
    )


class _PlainRoute(Route):
    """A Starlette route that names itself in the scope as FastAPI's routes do: the metrics
    label requests by ``scope["route"]``'s template."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        if match != Match.NONE:
            child_scope["route"] = self
        return match, child_scope


def app_from_env() -> FastAPI:
    """uvicorn factory (``serving.app:app_from_env``): the app for settings read from the
    ``SERVING_*`` environment, built in each worker process."""
    return create_app(Settings())


def _challenger_holder(settings: Settings, champion: ModelHolder) -> ChallengerHolder | None:
    """The challenger's holder, unless the mode is off or the server serves Staging itself."""
    ref = settings.model_ref
    if settings.challenger_mode == "off" or (ref.kind == "stage" and ref.value == CHALLENGER_STAGE):
        return None
    return ChallengerHolder(
        champion,
        batching=BatchingOptions(
            max_batch_size=settings.max_batch_size,
            max_wait_seconds=settings.max_batch_wait_ms / 1000,
        ),
    )


def _live_options(settings: Settings) -> LiveOptions:
    return LiveOptions(
        mode=settings.challenger_mode,
        canary_percent=settings.canary_percent,
        timeout_seconds=settings.challenger_timeout_seconds,
        shadow_max_in_flight=settings.shadow_max_in_flight,
        bounds=RollbackBounds(
            max_error_excess=settings.canary_max_error_rate,
            max_p99_ratio=settings.canary_max_p99_ratio,
            window=settings.canary_window,
            min_requests=settings.canary_min_requests,
        ),
    )


def _prediction_log(settings: Settings) -> PredictionLog | None:
    """The log the settings ask for (nothing is created on disk until it writes), or None."""
    if not settings.prediction_log_enabled:
        return None
    return PredictionLog(
        settings.prediction_log_dir.absolute(),
        queue_size=settings.prediction_log_queue_size,
        rotate_rows=settings.prediction_log_rotate_rows,
        rotate_seconds=settings.prediction_log_rotate_seconds,
        # The registry the server resolves its model from names every part it writes.
        store_id=store_id(settings.tracking_uri),
    )


def _is_prediction_route(path: str) -> bool:
    return prediction_protocol(path) is not None


def _reset_openapi(app: FastAPI) -> None:
    app.openapi_schema = None


def _install_openapi(app: FastAPI) -> None:
    """Describe ``/predict`` with the request models of the model loaded right now."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title,
            version=app.version,
            summary=app.summary,
            routes=app.routes,
        )
        holder: ModelHolder | None = getattr(app.state, "models", None)
        active = holder.active if holder is not None else None
        operation = schema["paths"]["/predict"]["post"]
        operation["requestBody"] = _predict_request_body(schema, active)
        if active is not None:
            loaded = active.loaded
            operation["description"] = (
                f"Inputs of model '{loaded.name}' version {loaded.version} ({loaded.task}). "
                + str(operation.get("description", ""))
            )
        _drop_unanswered_422(schema)
        _declare_live_headers(schema)
        settings: Settings = app.state.settings
        if settings.api_key is not None:
            _require_bearer(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


_PROTOCOL_TAGS = frozenset({"mlflow", "kserve-v2"})


def _drop_unanswered_422(schema: dict[str, Any]) -> None:
    """FastAPI declares a 422 on every route with parameters; the protocol routes answer a
    bad parameter in their own 400 instead (serving.protocols._common), so they never do."""
    for operations in schema["paths"].values():
        for operation in operations.values():
            if _PROTOCOL_TAGS & set(operation.get("tags", ())):
                operation.get("responses", {}).pop("422", None)


_ROUTING_KEY = {
    "name": ROUTING_HEADER,
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
    "description": "Canary mode: requests with the same key are answered by the same version "
    "(default: the request id). See docs/live-serving.md.",
}
_MODEL_VERSION = {
    "X-Model-Version": {
        "description": "The registered model version that answered: the champion's, or the "
        "challenger's for a canary request.",
        "schema": {"type": "string"},
    }
}


def _declare_live_headers(schema: dict[str, Any]) -> None:
    """Declare X-Routing-Key on the prediction operations, and the X-Model-Version of their
    answers."""
    for path, operations in schema["paths"].items():
        if prediction_protocol(path) is None:
            continue
        for operation in operations.values():
            operation.setdefault("parameters", []).append(dict(_ROUTING_KEY))
            answer = operation.setdefault("responses", {}).get("200")
            if answer is not None:
                answer.setdefault("headers", {}).update(_MODEL_VERSION)


def _require_bearer(schema: dict[str, Any]) -> None:
    """Declare the API key on the prediction and feedback operations, so /docs can send it."""
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    for path, operations in schema["paths"].items():
        if keyed_protocol(path) is not None:
            for operation in operations.values():
                operation["security"] = [{"bearer": []}]
                operation.setdefault("responses", {})["401"] = {
                    "description": "Missing or wrong API key: send 'Authorization: Bearer <key>'."
                }


def _predict_request_body(schema: dict[str, Any], active: ActiveModel | None) -> dict[str, Any]:
    if active is None:
        body_schema: dict[str, Any] = {
            "type": "object",
            "description": "No model is loaded yet: the feature names appear once one is.",
        }
    else:
        record, batch = active.requests.record, active.requests.batch
        _, definitions = models_json_schema(
            [(record, "validation"), (batch, "validation")], ref_template=_REF_TEMPLATE
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(definitions.get("$defs", {}))
        body_schema = {
            "oneOf": [
                {"$ref": _REF_TEMPLATE.format(model=record.__name__)},
                {"$ref": _REF_TEMPLATE.format(model=batch.__name__)},
            ]
        }
    return {"required": True, "content": {"application/json": {"schema": body_schema}}}
