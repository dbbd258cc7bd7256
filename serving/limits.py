"""Bounds on what one prediction request may cost, whatever its encoding. No HTTP in here.

Every protocol checks the same numbers before it parses values: rows (records, CSV lines,
Parquet rows from the file's metadata, tensor rows), columns (distinct keys, CSV or Parquet
columns, tensors), and the uncompressed size a Parquet file declares. Error bodies list at most
``max_error_details`` problems and count the rest. Bodies larger than ``offload_bytes`` are
parsed in a worker thread, so a large body never holds the event loop (and ``/health/live``)
for the time it takes to parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from serving.errors import ServingError

T = TypeVar("T")


@dataclass(frozen=True)
class RequestLimits:
    """The bounds of one request; the defaults are the server's (``SERVING_MAX_*``)."""

    max_rows: int = 20_000
    max_columns: int = 1_000
    max_decoded_bytes: int = 64_000_000
    max_error_details: int = 20
    offload_bytes: int = 64 * 1024


class LimitExceededError(ServingError):
    """A request beyond one of the limits; the message names the limit and its setting."""

    status_code = 413
    error_type = "limit_exceeded"


def check_rows(count: int, limits: RequestLimits) -> None:
    """Raise :class:`LimitExceededError` when ``count`` rows are more than allowed."""
    if count > limits.max_rows:
        raise LimitExceededError(
            f"The request holds {count} rows; at most {limits.max_rows} are accepted per "
            "request: send them in several requests (the server's limit is SERVING_MAX_ROWS)."
        )


def check_columns(count: int, limits: RequestLimits) -> None:
    """Raise :class:`LimitExceededError` when ``count`` columns are more than allowed."""
    if count > limits.max_columns:
        raise LimitExceededError(
            f"The request names {count} columns; at most {limits.max_columns} are accepted "
            "(the server's limit is SERVING_MAX_COLUMNS): send only the model's inputs."
        )


def check_decoded_bytes(size: int, limits: RequestLimits) -> None:
    """Raise :class:`LimitExceededError` when a body would decode to more than allowed."""
    if size > limits.max_decoded_bytes:
        raise LimitExceededError(
            f"The body decodes to {size} bytes of data; at most {limits.max_decoded_bytes} "
            "are accepted (the server's limit is SERVING_MAX_DECODED_BYTES): send fewer rows "
            "per request."
        )


def capped(problems: Sequence[T], limits: RequestLimits) -> tuple[list[T], int]:
    """The first ``max_error_details`` problems, and how many more there were."""
    shown = list(problems[: limits.max_error_details])
    return shown, max(0, len(problems) - len(shown))


def more_problems(hidden: int) -> str:
    """The sentence an error message ends with when ``hidden`` problems were not listed."""
    if hidden <= 0:
        return ""
    return f" ({hidden} more problem{'s' if hidden != 1 else ''} not listed.)"
