"""One id per prediction request, as a pure ASGI middleware: the key of the prediction log.

A client may send its own id in ``X-Request-ID`` (1 to 128 characters: letters, digits and
``- _ . :``); any other value is replaced, never refused, because an id must not cost anyone
a prediction. Without one the server makes a random (version 4) UUID in hex. Every answer of
a prediction route, errors included, carries the id in ``X-Request-ID``; labels sent later to
``POST /feedback`` name it to be joined to the logged prediction.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
MAX_LENGTH = 128
PATTERN = r"^[A-Za-z0-9._:-]{1,128}$"
DESCRIPTION = f"1 to {MAX_LENGTH} characters: letters, digits and - _ . :"

_VALID = re.compile(PATTERN)
_HEADER = HEADER.lower().encode()
_ID = "request_id"
_GIVEN = "request_id_given"
# uuid.uuid4() costs ~10 us here, 5% of a single-row prediction; the same 122 random bits
# with the version and variant bits set cost ~1 us. Python's random is reseeded in every
# process (and after fork), so workers never share a sequence.
_RANDOM_BITS = ~((0xF << 76) | (0x3 << 62)) & ((1 << 128) - 1)
_VERSION_BITS = (0x4 << 76) | (0x2 << 62)


def new_request_id() -> str:
    """A random version-4 UUID as 32 hex digits (what ``uuid.uuid4().hex`` gives)."""
    return "%032x" % ((random.getrandbits(128) & _RANDOM_BITS) | _VERSION_BITS)


def is_valid_request_id(value: object) -> bool:
    """Whether ``value`` may be used as a request id (see the module docstring)."""
    return isinstance(value, str) and _VALID.match(value) is not None


def request_id(request: Request) -> str:
    """The id of this prediction request (made by :class:`RequestIdMiddleware`)."""
    state = request.scope.setdefault("state", {})
    found = state.get(_ID)
    if found is None:  # an app assembled without the middleware
        found = state[_ID] = new_request_id()
    return str(found)


def adopt_request_id(request: Request, value: object) -> str:
    """Use ``value`` (e.g. the ``id`` of a KServe v2 body) as the request id when the client
    sent no valid ``X-Request-ID`` and it is a valid id; return the id in force."""
    state = request.scope.setdefault("state", {})
    if not state.get(_GIVEN) and is_valid_request_id(value):
        state[_ID] = value
        state[_GIVEN] = True
    return request_id(request)


class RequestIdMiddleware:
    """Give each request to a path ``applies_to`` accepts an id, sent back in ``X-Request-ID``."""

    def __init__(self, app: ASGIApp, applies_to: Callable[[str], bool]) -> None:
        self.app = app
        self.applies_to = applies_to

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.applies_to(scope["path"]):
            await self.app(scope, receive, send)
            return
        given = _header(scope)
        state = scope.setdefault("state", {})
        state[_GIVEN] = given is not None
        state[_ID] = given if given is not None else new_request_id()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                header = (_HEADER, str(state[_ID]).encode())
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)


def _header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == _HEADER:
            text = value.decode("latin-1")
            return text if _VALID.match(text) else None
    return None
