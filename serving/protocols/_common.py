"""Helpers shared by the protocols: errors rendered by the router itself, body reading with
the size limit, and coercion of one column's values to the model's input type (no HTTP)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import numpy as np
from fastapi import Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from pipeline.contracts import COLUMN_TYPES, FLOAT_TYPES
from serving.model.inference import json_kind
from serving.model.store import InputColumn
from serving.protocols.deps import ModelUnavailableError

logger = logging.getLogger(__name__)

Renderer = Callable[[int, str, str], Response]
"""Builds a protocol's error response from (status, short code, message)."""

_INT32_LIMIT = 2**31
_MAX_EXACT_INT = 2**53
"""Integers below this size survive a trip through float64 unchanged."""


class ProtocolError(Exception):
    """A request the protocol answers with an error: status, short code and a message that
    names the problem and how to fix it."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class ValueCoercionError(ValueError):
    """One value does not fit its column's type; the message says what was expected."""


def protocol_route_class(render: Renderer, protocol: str) -> type[APIRoute]:
    """A route class that renders every error of its routes (dependencies included) with
    ``render``, so the app-wide error handlers and their body shape never apply."""

    class ProtocolRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            return rendered(super().get_route_handler(), render, protocol)

    return ProtocolRoute


def rendered(
    handler: Callable[[Request], Coroutine[Any, Any, Response]], render: Renderer, protocol: str
) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    """``handler`` with every error it raises answered by ``render`` in the protocol's shape
    (a 500 for the unexpected, logged with its traceback, never shown to the client)."""

    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except ProtocolError as exc:
            return render(exc.status, exc.code, exc.message)
        except RequestValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors()
            )
            return render(400, "invalid", f"Invalid request ({problems}).")
        except ModelUnavailableError as exc:
            return render(503, "unavailable", exc.reason)
        except Exception:
            logger.exception(
                "%s %s failed (%s protocol)", request.method, request.url.path, protocol
            )
            return render(
                500,
                "internal",
                "The server failed to handle this request; the error is logged on the "
                "server. Retry later or contact the operator.",
            )

    return handle


async def read_body(request: Request) -> bytes:
    """The request body, refused with a 413 when over the app's ``max_body_bytes``."""
    settings = getattr(request.app.state, "settings", None)
    limit: int | None = getattr(settings, "max_body_bytes", None)
    too_large = ProtocolError(
        413,
        "too_large",
        f"The body is larger than {limit} bytes: send fewer rows per request.",
    )
    declared = request.headers.get("content-length")
    if limit is not None and declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if limit is not None and len(body) > limit:
            raise too_large
    return bytes(body)


def is_missing(value: Any) -> bool:
    """None and NaN both mean 'no value'."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def coerce_value(column: InputColumn, value: Any) -> Any:
    """Turn one decoded value into what the model expects for ``column``, or raise
    :class:`ValueCoercionError` naming the expected type.

    The input contract every protocol shares (docs/serving-limits.md): missing values
    (null, NaN) pass for optional columns only (a column with gaps in training); integers
    pass for doubles and whole-number floats (2007.0) for integers; numeric strings pass for
    numbers (CSV-style clients); string columns take any scalar. Stricter than MLflow where
    it would silently change the value: 4.5 is not a long, true is not a number.
    """
    kind = column.type
    if isinstance(value, list | dict):
        raise ValueCoercionError(f"expected a single {kind} value, got {json_kind(value)}")
    coerce = _COERCERS.get(COLUMN_TYPES[kind].kind)
    if not is_missing(value) and coerce is not None:
        value = coerce(kind, value)  # string columns: any scalar, unchanged
    if is_missing(value):
        if column.required:
            raise ValueCoercionError(
                f"a value is required ({kind}, no gaps in training), got null or NaN"
            )
        return None
    return value


def _coerce_float(kind: str, value: Any) -> float | int:
    number = _as_number(value, kind)
    try:
        infinite = math.isinf(number)
    except OverflowError:  # an integer beyond float64 (1 followed by 400 zeros)
        raise ValueCoercionError(
            f"a number out of range for {kind}: send a smaller value"
        ) from None
    if infinite:  # NaN (from the text "nan") is a missing value, as null is
        raise ValueCoercionError(f"expected a finite number ({kind}), got {shown(value)}")
    return number


def _coerce_integer(kind: str, value: Any) -> int:
    number = _as_number(value, kind)
    if isinstance(number, float) and not number.is_integer():  # also NaN and infinity
        raise ValueCoercionError(f"expected an integer ({kind}), got {shown(value)}")
    bits = COLUMN_TYPES[kind].bits or 63
    if not -(2**bits) <= int(number) < 2**bits:
        raise ValueCoercionError(f"{shown(value)} is out of range for {kind}")
    return int(number)


def _coerce_boolean(kind: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueCoercionError(f"expected true or false ({kind}), got {shown(value)}")


_COERCERS: dict[str, Callable[[str, Any], Any]] = {
    "float": _coerce_float,
    "integer": _coerce_integer,
    "boolean": _coerce_boolean,
}


def numeric_values_fit(column: InputColumn, values: np.ndarray) -> bool:
    """Whether every value of an int64 or float64 array (NaN for missing values) passes
    :func:`coerce_value` for the numeric ``column`` and means what it meant there: the same
    rules, vectorised, for bulk requests. False sends the caller back to the value-by-value
    path, which names the first bad value of each column.
    """
    kind = column.type
    if values.dtype.kind == "i":
        return kind != "integer" or _within(values, _INT32_LIMIT)
    if values.dtype.kind != "f":
        return False
    missing = np.isnan(values)
    if column.required and bool(missing.any()):
        return False
    if kind in FLOAT_TYPES:
        return not bool(np.isinf(values).any())
    present = values[~missing]
    limit = _INT32_LIMIT if kind == "integer" else _MAX_EXACT_INT
    return _within(present, limit) and bool(np.all(np.floor(present) == present))


def _within(values: np.ndarray, limit: int) -> bool:
    return bool(np.all((values > -limit) & (values < limit)))


def _as_number(value: Any, kind: str) -> int | float:
    if isinstance(value, bool):
        raise ValueCoercionError(f"expected a number ({kind}), got a boolean")
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            pass
        try:
            return float(text)
        except ValueError:
            pass
    raise ValueCoercionError(f"expected a number ({kind}), got {shown(value)}")


SHOWN_CHARS = 40


def shown(value: Any) -> str:
    """A value as an error message shows it: short, whatever the client sent (an integer of
    400 digits or a long string would otherwise be echoed whole)."""
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "..."


def expected_columns(columns: Sequence[InputColumn]) -> str:
    """The model's inputs as a message fragment: 'a (double), b (string, optional)'."""
    return ", ".join(f"'{c.name}' ({c.type}{'' if c.required else ', optional'})" for c in columns)
