"""Optional API key on the prediction and feedback routes, as a pure ASGI middleware.

When ``SERVING_API_KEY`` is set, ``/predict``, ``/invocations``, ``/v2/models/.../infer`` and
``/feedback`` require ``Authorization: Bearer <key>``; anything else is a 401 with
``WWW-Authenticate: Bearer`` and the route's protocol error body. The other routes (health,
``/metrics``, ``/model``, model metadata, ``/docs``) stay open. The key is compared in constant
time and never logged.
"""

from __future__ import annotations

import hmac
import logging

from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send

from serving.middleware.limits import keyed_protocol, send_protocol_error

logger = logging.getLogger(__name__)

_MISSING = (
    "This route needs an API key: send it in the header 'Authorization: Bearer <key>'.",
    b"Bearer",
)
_WRONG = (
    "The API key is not valid: check the key sent in 'Authorization: Bearer <key>' "
    "(ask the operator of this server for one).",
    b'Bearer error="invalid_token"',
)


class ApiKeyMiddleware:
    """Refuse prediction and feedback requests without the right bearer key; let everything
    else through."""

    def __init__(self, app: ASGIApp, api_key: SecretStr) -> None:
        self.app = app
        self._key = api_key.get_secret_value().encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        protocol = keyed_protocol(scope["path"]) if scope["type"] == "http" else None
        if protocol is not None:
            refusal = self._refusal(scope)
            if refusal is not None:
                message, challenge = refusal
                logger.info(
                    "%s %s refused (401): %s", scope["method"], scope["path"], message.split(":")[0]
                )
                await send_protocol_error(
                    send,
                    protocol,
                    401,
                    "unauthorized",
                    message,
                    headers=[(b"www-authenticate", challenge)],
                )
                return
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope) -> tuple[str, bytes] | None:
        """Why the request may not pass (message, WWW-Authenticate value), or None."""
        values = [value for name, value in scope["headers"] if name == b"authorization"]
        if len(values) != 1:
            return _MISSING
        scheme, _, token = values[0].strip().partition(b" ")
        if scheme.lower() != b"bearer" or not token.strip():
            return _MISSING
        if not hmac.compare_digest(token.strip(), self._key):
            return _WRONG
        return None
