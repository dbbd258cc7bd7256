"""Which version answers a canary request: a stable hash of the routing key. No HTTP, no state.

The key is the request's ``X-Routing-Key`` header (a user or session id, so one user always
sees one version), else its ``X-Request-ID``. The hash is BLAKE2b, not Python's ``hash()``,
which is salted per process: every worker, and every restart, sends a key the same way.
"""

from __future__ import annotations

import hashlib

ROUTING_HEADER = "X-Routing-Key"
BUCKETS = 10_000
"""Resolution of the split: a percent is honoured to 0.01 percentage point."""


def bucket(key: str) -> int:
    """The key's place in [0, BUCKETS), the same in every process and release."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def goes_to_challenger(key: str, percent: float) -> bool:
    """Whether a canary request with this routing key is answered by the challenger: the
    keys whose bucket lies under ``percent`` of the buckets, so raising the percent only
    moves keys from the champion to the challenger, never back."""
    return bucket(key) < round(percent * BUCKETS / 100)
