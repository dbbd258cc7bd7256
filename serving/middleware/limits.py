"""Limits on prediction requests, as pure ASGI middleware: no route knows about them.

A prediction route is recognised by its path, and each one answers errors in its own protocol's
body: ``/predict`` as ``{"error": {"type", "message", "details"}}``, ``/invocations`` as MLflow's
``{"error_code", "message"}``, ``/v2/models/.../infer`` as KServe v2's ``{"error": "..."}``.
:mod:`serving.middleware.security` uses the same recognition and error bodies.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from typing import Any, Literal

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.deadlines import Deadlines
from serving.errors import error_body
from serving.protocols import kserve_v2, mlflow_scoring

logger = logging.getLogger(__name__)

Protocol = Literal["predict", "mlflow", "v2"]

_MLFLOW_CODES = {"timeout": "DEADLINE_EXCEEDED", "unauthorized": "UNAUTHENTICATED"}


def prediction_protocol(path: str) -> Protocol | None:
    """Which protocol the prediction route at ``path`` speaks; None for other routes."""
    if path == "/predict":
        return "predict"
    if path == "/invocations":
        return "mlflow"
    if path.startswith("/v2/models/") and path.endswith("/infer"):
        return "v2"
    return None


def keyed_protocol(path: str) -> Protocol | None:
    """Which protocol a route that needs the API key speaks: the prediction routes and
    ``/feedback`` (which writes to the prediction log); None for the open routes."""
    if path == "/feedback":
        return "predict"
    return prediction_protocol(path)


def protocol_error(protocol: Protocol, error_type: str, message: str) -> dict[str, Any]:
    """The error body ``protocol`` specifies, for ``error_type`` ("timeout", "unauthorized")."""
    if protocol == "mlflow":
        return mlflow_scoring.error_body(_MLFLOW_CODES.get(error_type, "INTERNAL_ERROR"), message)
    if protocol == "v2":
        return kserve_v2.error_body(message)
    return error_body(error_type, message)


async def send_protocol_error(
    send: Send,
    protocol: Protocol,
    status: int,
    error_type: str,
    message: str,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> None:
    """Answer the request with ``status`` and the protocol's JSON error body."""
    content = json.dumps(protocol_error(protocol, error_type, message)).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


class RequestTimeoutMiddleware:
    """Answer a prediction request 504 when it has not started its response in ``seconds``.

    The request's task is cancelled: a request waiting in a batcher's queue leaves it, and a
    model call already running in its thread finishes unobserved (Python cannot interrupt it).
    ``seconds <= 0`` disables the limit. One timer serves every request in flight
    (:class:`~serving.deadlines.Deadlines`).
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds
        self._deadlines: Deadlines[asyncio.Task[Any]] = Deadlines(seconds, self._cancel)
        self._expired: set[asyncio.Task[Any]] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = prediction_protocol(scope["path"]) if scope["type"] == "http" else None
        task = asyncio.current_task() if protocol is not None and self.seconds > 0 else None
        if protocol is None or task is None:
            await self.app(scope, receive, send)
            return
        cancelling = task.cancelling()
        self._deadlines.arm(task)
        started = False

        async def send_in_time(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                self._deadlines.disarm(task)  # the answer is on its way: no limit any more
            await send(message)

        try:
            await self.app(scope, receive, send_in_time)
        except asyncio.CancelledError:
            # Ours becomes the 504; another cancellation (the server stopping) goes on.
            if not self._was_expired(task) or task.uncancel() > cancelling:
                raise
        else:
            if self._was_expired(task):
                task.uncancel()  # the app swallowed the cancellation and answered anyway
            return
        finally:
            self._deadlines.disarm(task)
        logger.warning(
            "%s %s took longer than %gs (SERVING_REQUEST_TIMEOUT_SECONDS): answered 504",
            scope["method"],
            scope["path"],
            self.seconds,
        )
        if started:
            return  # too late for a 504: the server closes the unfinished response
        await send_protocol_error(
            send,
            protocol,
            504,
            "timeout",
            f"The request took longer than {self.seconds:g} seconds and was abandoned: "
            "send fewer rows per request or retry later (the server's limit is "
            "SERVING_REQUEST_TIMEOUT_SECONDS).",
        )

    def _cancel(self, task: asyncio.Task[Any]) -> None:
        self._expired.add(task)
        task.cancel()

    def _was_expired(self, task: asyncio.Task[Any]) -> bool:
        if task in self._expired:
            self._expired.discard(task)
            return True
        return False
