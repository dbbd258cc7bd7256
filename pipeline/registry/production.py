"""Registry primitives shared by the gate and the explicit promote/rollback commands.

Production is kept in two places that must move together: the (deprecated, still widely
read) `Production` stage and the `champion` alias; so is the challenger judged on live traffic,
in the `Staging` stage and the `challenger` alias. Every change of either is appended to the
registered model's history as one tag per event (which carries the stage), so concurrent writers
never rewrite each other's record.
`pipeline.registry.transaction` makes those writes one crash-safe change; this module holds
the reads, the history and the lock it builds on.

Changes of Production and Staging are serialised by `production_lock` (one lock per model),
a lock that works through the MLflow REST API alone (a team's client may only have an
`http://` tracking URI). MLflow's own `transition_model_version_stage(...,
archive_existing_versions=True)` is one transaction, but it reads the versions to archive
before it writes: two concurrent transitions under PostgreSQL's default READ COMMITTED
isolation each archive the old champion and both leave their own version in Production. The
alias and the history are further separate calls.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import random
import re
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline import contracts
from pipeline.errors import RegistryError
from pipeline.tracking import current_actor

logger = logging.getLogger(__name__)

PRODUCTION = contracts.CHAMPION_STAGE
CHAMPION_ALIAS = contracts.CHAMPION_ALIAS
STAGING = contracts.CHALLENGER_STAGE
CHALLENGER_ALIAS = contracts.CHALLENGER_ALIAS
ARCHIVED = "Archived"
HISTORY_TAG_PREFIX = "history."

# The lock is a registered model named after the one it guards; it exists only while held.
LOCK_SUFFIX = ".lock"
_BREAKER_SUFFIX = ".break"
LOCK_TAG = "mlops.lock"
_OWNER_TAG = "mlops.lock.owner"
_ACQUIRED_TAG = "mlops.lock.acquired"
_HEARTBEAT_TAG = "mlops.lock.heartbeat"
# Lock models are recognised by their description, which the store reads with the row itself.
_LOCK_DESCRIPTION = "Pipeline lock:"
DEFAULT_LOCK_TIMEOUT_SECONDS = 300.0
DEFAULT_LOCK_STALE_SECONDS = 60.0
_RETRY_FIRST_SECONDS = 0.05
_RETRY_MAX_SECONDS = 0.5
# "Someone holds it" and "it vanished between our create and our read" both mean: try again.
_CONTENDED = frozenset({"RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"})


@dataclass(frozen=True)
class PromotionEvent:
    time: str
    actor: str
    action: str
    from_version: str | None
    to_version: str
    reason: str
    # The transaction that wrote the event: a replay of that transaction never appends it twice.
    txn: str | None = None
    # Where `to_version` went: Production (the champion), Staging (the challenger), or
    # Archived (a challenger retired). Events written before Staging existed lack the key:
    # they all moved Production.
    stage: str = PRODUCTION


_EVENT_FIELDS = frozenset(PromotionEvent.__dataclass_fields__)


@dataclass(frozen=True)
class HeldLock:
    """The Production lock of `name` as held by this thread (`owner` is written on the lock)."""

    name: str
    lock_name: str
    owner: str


def lock_name(name: str) -> str:
    """The registered model that stands for the Production lock of `name`."""
    return f"{name}{LOCK_SUFFIX}"


def is_internal_model(name: str) -> bool:
    """True for the lock models this module creates; anything listing models should skip them."""
    return name.endswith((LOCK_SUFFIX, LOCK_SUFFIX + _BREAKER_SUFFIX))


# Re-entrancy: set_production takes the lock itself, and the gate and promote/rollback take it
# around their read-decide-write. The same thread re-entering must not wait for itself.
_held_guard = threading.Lock()
_held: dict[tuple[str, str, int], HeldLock] = {}
_depth: dict[tuple[str, str, int], int] = {}


@contextmanager
def production_lock(
    client: MlflowClient,
    name: str,
    timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS,
    stale_after_seconds: float = DEFAULT_LOCK_STALE_SECONDS,
) -> Iterator[HeldLock]:
    """Hold the cross-process lock on the Production of registered model `name`.

    Acquiring creates the registered model `<name>.lock`: the store's unique constraint on
    registered-model names lets exactly one creator succeed, whatever the backend (PostgreSQL
    or SQLite behind a server, or SQLite in-process). The others retry with jittered backoff
    for up to `timeout_seconds`, then raise RegistryError. While held, a background thread
    renews a heartbeat tag; a lock whose owner and heartbeat a waiter has seen unchanged for
    `stale_after_seconds` (by the waiter's own clock, so clock skew between machines does not
    matter) belongs to a dead process and is broken with a warning. Re-entrant per thread.
    """
    key = (_registry_key(client), name, threading.get_ident())
    with _held_guard:
        outer = _held.get(key)
        if outer is not None:
            _depth[key] += 1
    if outer is not None:
        try:
            yield outer
        finally:
            with _held_guard:
                _depth[key] -= 1
        return
    held = _acquire(client, name, timeout_seconds, stale_after_seconds)
    heartbeat = _Heartbeat(client, held, stale_after_seconds)
    heartbeat.start()
    with _held_guard:
        _held[key], _depth[key] = held, 1
    try:
        yield held
    finally:
        with _held_guard:
            del _held[key], _depth[key]
        heartbeat.stop()
        _release(client, held, lost=heartbeat.lost)


def get_version(client: MlflowClient, name: str, version: str) -> ModelVersion:
    try:
        return client.get_model_version(name, version)
    except MlflowException as exc:
        if exc.error_code != _NOT_FOUND:
            raise  # an unreachable or failing store is not a missing version
        raise RegistryError(_missing_version(client, name, version)) from exc


_NOT_FOUND = "RESOURCE_DOES_NOT_EXIST"


def _missing_version(client: MlflowClient, name: str, version: str) -> str:
    """Why `name` version `version` is not there: a mistyped model name says so, with the
    names it may have meant, rather than blaming the version."""
    if name in _model_names(client):
        return (
            f"registered model '{name}' has no version '{version}'; pass an existing one "
            "(the MLflow UI's Models page lists them)"
        )
    return _missing_model(client, name)


def _model_names(client: MlflowClient) -> list[str]:
    return [
        model.name
        for model in client.search_registered_models(max_results=1000)
        if not is_internal_model(model.name)
    ]


def _missing_model(client: MlflowClient, name: str) -> str:
    names = _model_names(client)
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(n) for n in close)}?" if close else ""
    known = f"registered models: {', '.join(sorted(names))}" if names else "none is registered"
    return f"registered model '{name}' does not exist; {hint or known}"


def production_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version in the Production stage, or None (also when the model does not exist)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            versions = client.get_latest_versions(name, stages=[PRODUCTION])
    except MlflowException:
        return None
    return versions[0] if versions else None


def challenger_version(client: MlflowClient, name: str) -> ModelVersion | None:
    """The version in the Staging stage (the `challenger` alias is on it), or None."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            versions = client.get_latest_versions(name, stages=[STAGING])
    except MlflowException:
        return None
    return versions[0] if versions else None


def set_production(
    client: MlflowClient, name: str, version: str, *, action: str, reason: str
) -> PromotionEvent:
    """Move the Production stage and the champion alias to `version` and record why.

    One crash-safe transaction (see `pipeline.registry.transaction`): takes the Production
    lock (re-entrant: callers that decided under it keep it), finishes any change a killed
    process left, then writes intent, stage, alias, history and outcome in that order.
    """
    # Imported here: transaction builds on this module's primitives.
    from pipeline.registry import transaction

    return transaction.change_stage(
        client, name, version, stage=PRODUCTION, action=action, reason=reason
    )


def append_history(client: MlflowClient, name: str, event: PromotionEvent) -> None:
    """Record one change of Production or Staging; call it under the Production lock."""
    client.set_registered_model_tag(
        name, _next_history_key(client, name), json.dumps(asdict(event))
    )


def history(client: MlflowClient, name: str) -> list[PromotionEvent]:
    """Every recorded change of Production and Staging, newest first (`event.stage` says which)."""
    if is_internal_model(name):
        raise RegistryError(
            f"'{name}' is the Production lock of another model, not a model; "
            f"pass '{name.removesuffix(_BREAKER_SUFFIX).removesuffix(LOCK_SUFFIX)}'"
        )
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        if exc.error_code != _NOT_FOUND:
            raise  # an unreachable or failing store is not a missing model
        raise RegistryError(_missing_model(client, name)) from exc
    keyed = sorted(
        ((_history_order(key), value) for key, value in tags.items() if _history_order(key)),
        reverse=True,
    )
    return [_event(json.loads(value)) for _, value in keyed]


def _event(recorded: dict[str, object]) -> PromotionEvent:
    # Keys a newer pipeline added are ignored, so an older reader still lists the history.
    known = {key: value for key, value in recorded.items() if key in _EVENT_FIELDS}
    return PromotionEvent(**known)  # type: ignore[arg-type]


def _history_order(key: str) -> int:
    """The sequence number of a history tag key (0 when the tag is something else)."""
    if not key.startswith(HISTORY_TAG_PREFIX):
        return 0
    suffix = key.removeprefix(HISTORY_TAG_PREFIX)
    return int(suffix) if suffix.isdigit() else 0


def _next_history_key(client: MlflowClient, name: str) -> str:
    # Nanoseconds keep the keys readable as times, but clocks differ between machines and can
    # repeat: under the lock, one past the newest key orders events as they happened and never
    # overwrites one.
    newest = max(map(_history_order, client.get_registered_model(name).tags), default=0)
    return f"{HISTORY_TAG_PREFIX}{max(time.time_ns(), newest + 1)}"


def _registry_key(client: MlflowClient) -> str:
    uri = getattr(client, "_registry_uri", None)
    return str(uri) if uri else mlflow.get_registry_uri()


def _error_code(exc: MlflowException) -> str:
    return str(getattr(exc, "error_code", ""))


def _owner_token() -> str:
    return (
        f"{current_actor()}@{socket.gethostname()}:pid={os.getpid()}:"
        f"thread={threading.get_ident()}:{uuid.uuid4().hex[:8]}"
    )


# `<actor>@<host>:pid=<pid>:thread=<id>:<nonce>`, as `_owner_token` writes it.
_OWNER_PATTERN = re.compile(r"@(?P<host>[^@:]+):pid=(?P<pid>\d+):thread=\d+:[0-9a-f]+$")


def lock_holder(client: MlflowClient, name: str) -> dict[str, str] | None:
    """The tags of the Production lock of `name` (owner, acquired, heartbeat), None if free."""
    return _lock_tags(client, lock_name(name))


def describe_holder(tags: dict[str, str]) -> str:
    return f"{tags.get(_OWNER_TAG, '?')} since {tags.get(_ACQUIRED_TAG, '?')}"


def holder_is_dead(tags: dict[str, str]) -> bool:
    """True when the lock's owner is a process of this host that no longer runs.

    Such a lock is broken at once instead of after the stale period: a killed command must
    not block the next one for a minute. Owners on other hosts (or written by another
    convention) are never judged dead here; the heartbeat rule covers them.
    """
    match = _OWNER_PATTERN.search(tags.get(_OWNER_TAG, ""))
    if match is None or match["host"] != socket.gethostname():
        return False
    return not _process_runs(int(match["pid"]))


def _process_runs(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    # A killed child its parent has not reaped yet is a zombie: it holds nothing any more.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _lock_tags(client: MlflowClient, model: str) -> dict[str, str] | None:
    """The tags of a lock model, or None when it does not exist (any more).

    The store reads a model's row and its tags in two statements; a lock deleted between them
    reads as a model without tags. Such a read is returned as an empty dict only when the
    row's description still marks it as a lock, so callers treat it as "changing, retry".
    """
    try:
        found = client.get_registered_model(model)
    except MlflowException as exc:
        if _error_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    tags = dict(found.tags)
    if _OWNER_TAG not in tags and not (found.description or "").startswith(_LOCK_DESCRIPTION):
        raise RegistryError(
            f"registered model '{model}' exists but is not a Production lock of this "
            f"pipeline; rename it, since that name is reserved for locking"
        )
    return tags


def _try_create(client: MlflowClient, model: str, owner: str, description: str) -> bool:
    """Create the lock model: True if this call (or a retried one of ours) created it."""
    now = time.time()
    try:
        client.create_registered_model(
            model,
            tags={
                LOCK_TAG: "true",
                _OWNER_TAG: owner,
                _ACQUIRED_TAG: datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
                _HEARTBEAT_TAG: f"{now:.6f}",
            },
            description=description,
        )
        return True
    except MlflowException as exc:
        if _error_code(exc) not in _CONTENDED:
            raise
    # The HTTP client retries on 5xx; a retried create may find the lock its first try made.
    tags = _lock_tags(client, model)
    return tags is not None and tags.get(_OWNER_TAG) == owner


class _Observer:
    """Tells a stale lock from a live one by watching its owner and heartbeat over time."""

    def __init__(self, stale_after_seconds: float) -> None:
        self.stale_after = stale_after_seconds
        self.seen: dict[str, tuple[tuple[str, str], float]] = {}

    def is_stale(self, model: str, tags: dict[str, str]) -> bool:
        state = (tags.get(_OWNER_TAG, ""), tags.get(_HEARTBEAT_TAG, ""))
        now = time.monotonic()
        previous = self.seen.get(model)
        if previous is None or previous[0] != state:
            self.seen[model] = (state, now)
            return False
        return now - previous[1] >= self.stale_after

    def forget(self, model: str) -> None:
        self.seen.pop(model, None)


def _acquire(
    client: MlflowClient, name: str, timeout_seconds: float, stale_after_seconds: float
) -> HeldLock:
    model = lock_name(name)
    owner = _owner_token()
    description = (
        f"{_LOCK_DESCRIPTION} held while the Production version of '{name}' changes; "
        "deleted on release. Not a model: do not register versions here."
    )
    deadline = time.monotonic() + timeout_seconds
    delay = _RETRY_FIRST_SECONDS
    observer = _Observer(stale_after_seconds)
    waiting = False
    while True:
        try:
            if _try_create(client, model, owner, description):
                logger.debug("Acquired the Production lock of '%s' as %s", name, owner)
                return HeldLock(name=name, lock_name=model, owner=owner)
            holder = _lock_tags(client, model)
        except MlflowException as exc:
            raise RegistryError(
                f"cannot take the Production lock of '{name}' (registered model '{model}'): "
                f"{exc.message}"
            ) from exc
        if holder and not waiting:
            waiting = True
            logger.info(
                "Waiting for the Production lock of '%s', held by %s since %s",
                name,
                holder.get(_OWNER_TAG, "?"),
                holder.get(_ACQUIRED_TAG, "?"),
            )
        if holder and (holder_is_dead(holder) or observer.is_stale(model, holder)):
            _break_stale(client, model, holder, observer)
            continue
        now = time.monotonic()
        if now >= deadline:
            who = holder.get(_OWNER_TAG, "?") if holder else "?"
            since = holder.get(_ACQUIRED_TAG, "?") if holder else "?"
            raise RegistryError(
                f"timed out after {timeout_seconds:g}s waiting for the Production lock of "
                f"'{name}', held by {who} since {since}; if that process is gone the lock is "
                f"broken after {stale_after_seconds:g}s without a heartbeat, or delete the "
                f"registered model '{model}' by hand"
            )
        time.sleep(min(delay * random.uniform(0.5, 1.5), max(deadline - now, 0.0)))
        delay = min(delay * 2, _RETRY_MAX_SECONDS)


def _break_stale(
    client: MlflowClient, model: str, stale: dict[str, str], observer: _Observer
) -> None:
    """Delete a dead holder's lock, unless someone already broke it and took it anew.

    Reading the owner and deleting are two calls; a second lock (`<lock>.break`) makes the
    check-then-delete exclusive among waiters, so none deletes a lock just taken by another.
    """
    breaker = model + _BREAKER_SUFFIX
    purpose = f"{_LOCK_DESCRIPTION} held while the stale lock '{model}' is broken."
    if not _try_create(client, breaker, _owner_token(), purpose):
        breaker_tags = _lock_tags(client, breaker)
        # A breaker that died mid-break would block every later break: it is stale in turn.
        if breaker_tags and (
            holder_is_dead(breaker_tags) or observer.is_stale(breaker, breaker_tags)
        ):
            logger.warning(
                "Deleting the stale lock breaker '%s' left by %s",
                breaker,
                breaker_tags.get(_OWNER_TAG, "?"),
            )
            _delete_quietly(client, breaker)
            observer.forget(breaker)
        return
    try:
        current = _lock_tags(client, model)
        if current is not None and current.get(_OWNER_TAG) == stale.get(_OWNER_TAG):
            why = (
                "is a process of this host that no longer runs"
                if holder_is_dead(current)
                else f"sent no heartbeat for {observer.stale_after:.0f}s"
            )
            logger.warning(
                "Breaking the stale lock '%s': holder %s (since %s) %s and is presumed dead",
                model,
                current.get(_OWNER_TAG, "?"),
                current.get(_ACQUIRED_TAG, "?"),
                why,
            )
            _delete_quietly(client, model)
        observer.forget(model)
    finally:
        _delete_quietly(client, breaker)


def _delete_quietly(client: MlflowClient, model: str) -> None:
    try:
        client.delete_registered_model(model)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise


def _release(client: MlflowClient, held: HeldLock, *, lost: bool) -> None:
    try:
        tags = _lock_tags(client, held.lock_name)
        if tags is None or tags.get(_OWNER_TAG) != held.owner:
            logger.warning(
                "The Production lock of '%s' was broken while held by %s (heartbeat %s); "
                "check `python -m pipeline history --name %s` for interleaved changes",
                held.name,
                held.owner,
                "failing" if lost else "ok",
                held.name,
            )
            return
        _delete_quietly(client, held.lock_name)
        logger.debug("Released the Production lock of '%s'", held.name)
    except (MlflowException, RegistryError) as exc:
        # Never mask the caller's own outcome; a lock left behind goes stale and is broken.
        logger.warning(
            "Could not release the Production lock of '%s': %s; it will be broken after it "
            "goes stale",
            held.name,
            exc,
        )


class _Heartbeat:
    """Renews the holder's heartbeat tag so waiters can tell a slow holder from a dead one."""

    def __init__(self, client: MlflowClient, held: HeldLock, stale_after_seconds: float) -> None:
        self._client = client
        self._held = held
        self._interval = max(stale_after_seconds / 4, 0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"lock-heartbeat-{held.name}", daemon=True
        )
        self.lost = False

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._client.set_registered_model_tag(
                    self._held.lock_name, _HEARTBEAT_TAG, f"{time.time():.6f}"
                )
            except Exception as exc:  # a dying server must not kill the thread noisily
                self.lost = True
                logger.warning(
                    "Heartbeat of the Production lock of '%s' failed: %s",
                    self._held.name,
                    exc,
                )
