"""The prediction log: every prediction, and every label sent later, written off the request path.

A request hands over references to what it already holds (its validated records or frame,
and the model's answers) in one append to a bounded in-memory queue: it never waits for the
log and never fails because of it. When ``queue_size`` records are waiting, further records
are dropped and counted. A background thread takes what is queued every ``poll_seconds``
(and again between two files it writes, and at once when the queue is half full), turns it
into Arrow columns and writes Parquet parts::

    <log_dir>/<model_name>/predictions/part-<UTC %Y%m%dT%H%M%S%f>-<pid>-<seq>.parquet
    <log_dir>/<model_name>/feedback/part-<UTC %Y%m%dT%H%M%S%f>-<pid>-<seq>.parquet

**A crash loses at most ``rotate_seconds``.** A Parquet file is readable only once closed,
so a part is *grown by replacement*: no record waits in memory longer than
``rotate_seconds`` before the whole part (its rows already on disk plus the new ones) is
written again to ``.<name>.tmp``, synced to disk and renamed over ``<name>``. The rename is
atomic and is the only change a reader can see, so whenever the process dies every part on
disk is whole and holds each row once. There are no small parts to compact, hence no
compaction that a crash could leave half done (rows twice, or missing, for a reader that
reads every ``part-*.parquet``). Each write keeps the row groups already on disk (one row
group per write) and appends one, so the bytes of a part's older version are a prefix of the
newer one: a reader that read the footer before a replacement reads the rows it promised.

A part is closed, and the next rows start another, when it holds ``rotate_rows`` rows, when
it is ``part_seconds`` old, when the model's columns change, and at shutdown; so the number
of files grows with rows / ``rotate_rows`` or time / ``part_seconds``, whichever is more,
never with the number of flushes. A part that cannot be written (disk full, no permission)
loses the records not yet on disk, which are counted and logged; the rows it held before
stay, and serving goes on. The columns are the contract in ``docs/prediction-log.md``.

Every part records the store id of the registry the server resolves its models from
(``pipeline.contracts.store_id``), so readers against another registry skip it.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.contracts import (
    CHAMPION_ROLE,
    FEEDBACK_DIR,
    LIVE_COLUMNS,
    NUMERIC_TYPES,
    PREDICTIONS_DIR,
    TIMESTAMP,
    Task,
    feedback_schema,
    part_name,
    temporary_path,
    with_store_id,
)
from pipeline.contracts import prediction_schema as _schema
from pipeline.contracts import store_id as _store_id_of
from serving.model.inference import FramePredictions, PredictionRow, record_values
from serving.model.store import LoadedModel, to_native

logger = logging.getLogger(__name__)

Kind = Literal["prediction", "feedback"]
KINDS: tuple[Kind, ...] = ("prediction", "feedback")
DIRECTORIES: Mapping[Kind, str] = {"prediction": PREDICTIONS_DIR, "feedback": FEEDBACK_DIR}
POLL_SECONDS = 0.2
"""How often the writer takes what is queued (and checks whether a part is due)."""
_TAKE_WHILE_WRITING_SECONDS = 0.05
"""While a file is written, how often the writer takes the queue: 50 ms of bulk traffic
(~10,000 rows) is far below the queue's size."""
PART_SECONDS = 600.0
"""Longest a part stays open for more rows: a quiet server closes one part per this."""

Sink = Callable[[pa.Table, Path], None]
"""Writes a table to a file: one Parquet row group per chunk unless a test says otherwise."""

_PART_NUMBERS = itertools.count()
"""Part sequence numbers, shared by every log of the process, so names never collide."""
_TEMPORARY = re.compile(r"^\.part-\d{8}T\d{12}-(\d+)-\d+\.parquet\.tmp$")
"""A part being written (``contracts.temporary_path``), with the writer's process id."""


@dataclass(frozen=True)
class FeedbackLabel:
    """One label for one logged prediction: the request's id and the row within it."""

    request_id: str
    row: int
    label: str | float
    """``str()`` of the class for classifiers, a float for regressors."""


@dataclass(frozen=True)
class PredictionLogStats:
    """What the log did so far; read by ``/metrics``."""

    written: Mapping[Kind, int]
    """Records in parts on disk."""
    dropped: Mapping[Kind, int]
    """Records never queued because the queue was full (or the log was closed)."""
    failed: Mapping[Kind, int]
    """Records lost because their part could not be built or written."""
    write_errors: int
    """Part writes that failed."""
    parts: int
    """Part files created (a part written again with more rows counts once)."""
    queued: int
    """Records waiting for the writer right now."""


class _Predictions(NamedTuple):
    request_id: str
    timestamp: float
    model: LoadedModel
    inputs: Sequence[Mapping[str, Any]] | pd.DataFrame
    outputs: Sequence[PredictionRow] | FramePredictions | None
    """None when the version failed on the request (``error`` says why)."""
    rows: int
    role: str = CHAMPION_ROLE
    served: bool = True
    latency_ms: float | None = None
    error: str | None = None


class _Labels(NamedTuple):
    model_name: str
    task: Task
    labels: Sequence[FeedbackLabel]
    timestamp: float
    rows: int


_Item = _Predictions | _Labels


@dataclass(eq=False)  # parts are compared by identity, never by their rows
class _Part:
    """The rows of one open part (one kind, one model name): all of them, as Arrow tables
    (one per write, then one per batch taken since), since each write of the part writes
    them all again."""

    kind: Kind
    model_name: str
    schema: pa.Schema
    started: float
    """Clock time of its first row: the part closes ``part_seconds`` later."""
    path: Path | None = None
    """Its name on disk, chosen at its first write."""
    tables: list[pa.Table] = field(default_factory=list)
    added: list[float] = field(default_factory=list)
    """Clock time each table was added."""
    rows: int = 0
    stored_tables: int = 0
    """How many of ``tables`` (a prefix) the file at ``path`` holds."""
    stored_rows: int = 0

    @property
    def pending(self) -> int:
        return self.rows - self.stored_rows

    @property
    def waiting_since(self) -> float | None:
        """When the oldest row not yet on disk was added; None when all are on disk."""
        return self.added[self.stored_tables] if self.pending else None

    def append(self, table: pa.Table, now: float) -> None:
        self.tables.append(table)
        self.added.append(now)
        self.rows += table.num_rows

    def merge_pending(self) -> int:
        """The rows not on disk yet as one table, so one row group: a part written every
        ``rotate_seconds`` gets one row group per write, not one per batch taken. Returns
        how many tables the part has now (what a write started now covers)."""
        pending = self.tables[self.stored_tables :]
        if len(pending) > 1:
            self.tables[self.stored_tables :] = [pa.concat_tables(pending).combine_chunks()]
            del self.added[self.stored_tables + 1 :]
        return len(self.tables)

    def stored(self, tables: int) -> int:
        """The first ``tables`` tables are on disk; returns how many rows that added."""
        rows = sum(t.num_rows for t in self.tables[:tables])
        added, self.stored_tables, self.stored_rows = rows - self.stored_rows, tables, rows
        return added

    def forget(self, tables: int) -> int:
        """The tables after the stored ones, up to ``tables``, could not be written: drop
        them (tables added since stay). Returns how many rows were dropped."""
        lost = sum(t.num_rows for t in self.tables[self.stored_tables : tables])
        del self.tables[self.stored_tables : tables]
        del self.added[self.stored_tables : tables]
        self.rows -= lost
        return lost


def _write_parquet(table: pa.Table, path: Path) -> None:
    # One row group per chunk (one per write of the part), so writing a part again with more rows
    # leaves the bytes of its older rows unchanged: a reader holding the older footer still
    # reads them. Dictionary encoding for text only (ids, versions, labels, categories): on
    # continuous numbers Parquet tries it, gives up and writes them plain, at 4x the CPU of
    # the whole part written this way, and in a larger file.
    text = [f.name for f in table.schema if pa.types.is_string(f.type)]
    with pq.ParquetWriter(path, table.schema, use_dictionary=text) as writer:
        for batch in table.to_batches():
            writer.write_batch(batch, row_group_size=batch.num_rows)


class PredictionLog:
    """The queue and its writer thread; see the module docstring.

    ``log_predictions`` and ``log_feedback`` are called on the event loop (one thread);
    everything else about the files happens on the writer thread, or in :meth:`close`.
    """

    def __init__(
        self,
        log_dir: Path,
        *,
        queue_size: int = 50_000,
        rotate_rows: int = 50_000,
        rotate_seconds: float = 2.0,
        part_seconds: float = PART_SECONDS,
        held_rows: int = 200_000,
        poll_seconds: float = POLL_SECONDS,
        sink: Sink | None = None,
        clock: Callable[[], float] = time.monotonic,
        store_id: str | None = None,
    ) -> None:
        if min(queue_size, rotate_rows, rotate_seconds, part_seconds, held_rows, poll_seconds) <= 0:
            raise ValueError(
                "queue_size, rotate_rows, rotate_seconds, part_seconds, held_rows and "
                "poll_seconds must be > 0"
            )
        self.log_dir = log_dir
        # The registry's store id, written into every part. Without one, the URI the settings
        # default to: SERVING_TRACKING_URI, else MLFLOW_TRACKING_URI, else the local SQLite file.
        self.store_id = store_id or _store_id_of(os.environ.get("SERVING_TRACKING_URI"))
        self.queue_size = queue_size
        self.rotate_rows = rotate_rows
        self.rotate_seconds = rotate_seconds
        self.part_seconds = part_seconds
        # Rows taken from the queue (compact Arrow columns) but not on disk yet: taking goes
        # on while a file is written, so a slow write does not fill the queue; beyond this,
        # taken rows are dropped (counted): the disk cannot keep up.
        self.held_rows = held_rows
        self.poll_seconds = poll_seconds
        self._sink = sink or _write_parquet
        # Measures the age of rows and parts; tests turn it by hand.
        self._clock = clock
        self._queue: deque[_Item] = deque()
        # Each counter has one writing thread, so no lock is needed: the request side owns
        # _queued and _dropped, the writer _taken, _written, _failed, _write_errors, _parts.
        self._queued = 0
        self._taken = 0
        self._dropped: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self._written: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self._failed: dict[Kind, int] = dict.fromkeys(KINDS, 0)
        self._write_errors = 0
        self._parts_written = 0
        # By kind, model name and role: champion and challenger rows of one model (whose
        # columns may differ, e.g. other classes) grow parts of their own, side by side.
        self._parts: dict[tuple[Kind, str, str], _Part] = {}
        self._closed: deque[_Part] = deque()  # full or old parts with rows not on disk yet
        self._dropping = False  # whether the last rows taken were dropped (held_rows reached)
        self._swept: set[Path] = set()
        self._closing = False
        self._wake = threading.Event()
        self._flush_requests: deque[threading.Event] = deque()
        self._writing = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- the request side (event loop) -------------------------------------------------

    def log_predictions(
        self,
        request_id: str,
        model: LoadedModel,
        inputs: Sequence[Mapping[str, Any]] | pd.DataFrame,
        outputs: Sequence[PredictionRow] | FramePredictions | None,
        *,
        role: str = CHAMPION_ROLE,
        served: bool = True,
        latency_ms: float | None = None,
        error: str | None = None,
    ) -> bool:
        """Queue one request's predictions by one version: its records (or frame) and the
        model's answers, one per row, as references, with the live columns
        (``contracts.LIVE_COLUMNS``): the version's ``role``, whether its answer was
        ``served``, the model call's ``latency_ms``, and ``error`` (with ``outputs`` None)
        when it failed. False when they were dropped (queue full)."""
        rows = len(inputs)
        if not self._fits(rows):
            self._dropped["prediction"] += rows
            return False
        self._queued += rows
        self._wake_when_half_full()
        self._queue.append(
            _Predictions(
                request_id,
                time.time(),
                model,
                inputs,
                outputs,
                rows,
                role,
                served,
                latency_ms,
                error,
            )
        )
        return True

    def log_feedback(self, model_name: str, task: Task, labels: Sequence[FeedbackLabel]) -> bool:
        """Queue labels for ``model_name``'s log. False when they were dropped (queue full)."""
        rows = len(labels)
        if not self._fits(rows):
            self._dropped["feedback"] += rows
            return False
        self._queued += rows
        self._wake_when_half_full()
        self._queue.append(_Labels(model_name, task, labels, time.time(), rows))
        return True

    def _fits(self, rows: int) -> bool:
        return not self._closing and self._queued - self._taken + rows <= self.queue_size

    def _wake_when_half_full(self) -> None:
        # Bulk traffic can queue 40,000 rows within one poll (10,000-row requests at 200,000
        # rows/s): the writer takes them now rather than at its next poll, so a burst fills
        # the queue only when the writer truly cannot keep up.
        if 2 * (self._queued - self._taken) >= self.queue_size:
            self._wake.set()

    @property
    def stats(self) -> PredictionLogStats:
        return PredictionLogStats(
            written=dict(self._written),
            dropped=dict(self._dropped),
            failed=dict(self._failed),
            write_errors=self._write_errors,
            parts=self._parts_written,
            queued=max(0, self._queued - self._taken),
        )

    # --- the writer --------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the writer thread (once)."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="prediction-log-writer", daemon=True)
        self._thread.start()
        logger.info(
            "Prediction log: %s (on disk within %gs; parts of %d rows or %gs; queue of %d records)",
            self.log_dir,
            self.rotate_seconds,
            self.rotate_rows,
            self.part_seconds,
            self.queue_size,
        )

    def flush(self, timeout: float = 30.0) -> bool:
        """Write everything queued or held now; True once done within ``timeout``."""
        if not self.running:
            self._write_pending(force=True)
            return True
        done = threading.Event()
        self._flush_requests.append(done)
        self._wake.set()
        return done.wait(timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking records, write everything still queued or held, stop the writer."""
        self._closing = True
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._wake.set()
            thread.join(timeout)
            if thread.is_alive():
                logger.warning(
                    "The prediction log writer did not finish within %gs: records still "
                    "queued (%d) are lost",
                    timeout,
                    self.stats.queued,
                )
            return
        self._write_pending(force=True, final=True)

    def write_due(self) -> None:
        """Take what is queued and write the parts that are due: one pass of the writer
        thread, for callers that run none. Never raises."""
        self._write_pending(force=False)

    def _run(self) -> None:
        while True:
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            closing = self._closing
            waiting: list[threading.Event] = []
            while self._flush_requests:
                waiting.append(self._flush_requests.popleft())
            self._write_pending(force=closing or bool(waiting), final=closing)
            for done in waiting:
                done.set()
            if closing:
                return

    def _write_pending(self, *, force: bool, final: bool = False) -> None:
        """Take the queue, convert it, and write the parts that are due (all with ``force``);
        close the parts that are full or old (all when ``final``).

        Never raises: the writer thread must outlive any bad record or failing disk.
        """
        with self._writing:
            try:
                self._take_queued()
                self._write_closed()
                for key, part in list(self._parts.items()):
                    now = self._clock()
                    if force or self._due(part, now):
                        self._write_part(part)
                    if final or now - part.started >= self.part_seconds:
                        self._close_part(key, part)
                    self._write_closed()
                if final:  # rows taken while the last parts were written
                    self._take_queued()
                    for key, part in list(self._parts.items()):
                        self._close_part(key, part)
                    self._write_closed()
            except Exception:
                logger.exception("The prediction log writer failed; it keeps running")

    def _due(self, part: _Part, now: float) -> bool:
        waiting = part.waiting_since
        return waiting is not None and now - waiting >= self.rotate_seconds

    def _take_queued(self) -> None:
        items: list[_Item] = []
        while True:
            try:
                items.append(self._queue.popleft())
            except IndexError:
                break
        if not items:
            return
        self._taken += sum(item.rows for item in items)
        held = sum(part.pending for part in (*self._parts.values(), *self._closed))
        for run in _runs(items):
            first = run[0]
            kind: Kind = "prediction" if isinstance(first, _Predictions) else "feedback"
            name = first.model.name if isinstance(first, _Predictions) else first.model_name
            role = first.role if isinstance(first, _Predictions) else ""
            rows = sum(item.rows for item in run)
            if not self._holds(held, rows):
                self._dropped[kind] += rows
                continue
            try:
                table = _table(run)
            except Exception:
                self._failed[kind] += rows
                logger.exception(
                    "Could not convert %d %s records of model '%s' for the log: they are lost",
                    rows,
                    kind,
                    name,
                )
                continue
            held += rows
            self._add(kind, name, role, table)

    def _holds(self, held: int, rows: int) -> bool:
        """Whether ``rows`` more fit beside the ``held`` rows not on disk yet; logs when
        the log starts and stops dropping (once each, not per batch)."""
        fits = held + rows <= self.held_rows
        if fits == self._dropping:
            self._dropping = not fits
            if fits:
                logger.info("The prediction log's disk caught up: records are kept again")
            else:
                logger.warning(
                    "The prediction log holds %d records its disk has not taken yet: further "
                    "records are dropped (counted in prediction_log_records_dropped_total) "
                    "until it catches up",
                    held,
                )
        return fits

    def _add(self, kind: Kind, model_name: str, role: str, table: pa.Table) -> None:
        key = (kind, model_name, role)
        part = self._parts.get(key)
        if part is not None and not part.schema.equals(table.schema):
            # A new model version with other columns: its rows start a part of their own.
            self._close_part(key, part)
            part = None
        while table.num_rows:
            if part is None:
                part = _Part(kind, model_name, table.schema, started=self._clock())
                self._parts[key] = part
            room = self.rotate_rows - part.rows
            part.append(table.slice(0, room), self._clock())
            table = table.slice(room)
            if part.rows >= self.rotate_rows:
                self._close_part(key, part)
                part = None

    def _close_part(self, key: tuple[Kind, str, str], part: _Part) -> None:
        """No more rows for this part: the next start a new one; what it still holds in
        memory is written by :meth:`_write_closed` (not here: this runs while taking)."""
        if self._parts.get(key) is part:
            del self._parts[key]
        if part.pending and all(closed is not part for closed in self._closed):
            self._closed.append(part)

    def _write_closed(self) -> None:
        while self._closed:
            # Out of the list before the write: a part that cannot be written is not retried.
            self._write_part(self._closed.popleft())

    def _write_part(self, part: _Part) -> None:
        """Write the whole part again (older rows and new) under a hidden name, then rename
        it over its previous version: a reader sees the old part or the new one, whole."""
        if part.pending == 0:
            return
        tables = part.merge_pending()
        directory = self.log_dir / part.model_name / DIRECTORIES[part.kind]
        new = part.path is None
        path = part.path or directory / part_name(datetime.now(UTC), next(_PART_NUMBERS))
        table = with_store_id(pa.concat_tables(part.tables[:tables]), self.store_id)
        error = self._store(table, directory, path)
        if error is not None:
            lost = part.forget(tables)  # the rows already in the file stay there
            self._write_errors += 1
            self._failed[part.kind] += lost
            logger.error(
                "Could not write %d %s records of model '%s' to %s (%s): they are lost, "
                "serving goes on. Make the directory writable and give it space, or point "
                "SERVING_PREDICTION_LOG_DIR elsewhere.",
                lost,
                part.kind,
                part.model_name,
                directory,
                error,
            )
            return
        part.path = path
        self._written[part.kind] += part.stored(tables)
        self._parts_written += new
        logger.debug("Wrote %s (%d %s records)", path, part.stored_rows, part.kind)

    def _store(self, table: pa.Table, directory: Path, path: Path) -> Exception | None:
        """Write ``table`` to ``path`` on a helper thread, taking the queue meanwhile (a
        big part takes a while to encode and sync); the error, if it failed."""
        outcome: list[Exception | None] = []

        def write() -> None:
            temporary = temporary_path(path)  # hidden while written
            try:
                directory.mkdir(parents=True, exist_ok=True)
                self._sweep(directory)
                self._sink(table, temporary)
                # On disk before the rename, and the rename on disk after it: otherwise a
                # power cut can leave the new name on an empty file, losing older rows too.
                _fsync(temporary)
                os.replace(temporary, path)
                _fsync(directory)
            except Exception as exc:
                with contextlib.suppress(OSError):
                    temporary.unlink(missing_ok=True)
                outcome.append(exc)
            else:
                outcome.append(None)

        writer = threading.Thread(target=write, name="prediction-log-file", daemon=True)
        writer.start()
        while True:
            writer.join(min(self.poll_seconds, _TAKE_WHILE_WRITING_SECONDS))
            if not writer.is_alive():
                return outcome[0]
            self._take_queued()

    def _sweep(self, directory: Path) -> None:
        """Once per directory: delete the hidden files of parts whose writer died while
        writing them (a crash or SIGKILL in the middle of a write)."""
        if directory in self._swept:
            return
        self._swept.add(directory)
        for path in directory.iterdir():
            match = _TEMPORARY.match(path.name)
            if match and not _alive(int(match.group(1))):
                with contextlib.suppress(OSError):
                    path.unlink()
                    logger.info("Deleted %s, left by a writer that died while writing it", path)


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# --- Arrow tables (writer thread; no HTTP, no files) ---------------------------------------


def prediction_schema(model: LoadedModel) -> pa.Schema:
    """The columns of ``model``'s prediction parts (the contract in ``pipeline.contracts``)."""
    classes = _class_names(model) if model.has_proba else None
    return _schema([(c.name, c.type) for c in model.columns], model.task, classes)


def _runs(items: Sequence[_Item]) -> Iterator[list[Any]]:
    """Items that make one table: records predicted by one model object (answered, or failed),
    a single frame, or labels of one model name and task.

    Records of the champion and the challenger arrive interleaved (shadow answers come in
    between); they are gathered per model until a frame or labels come, so interleaving
    does not cut them into tables of a row or two. With one model, runs stay in order.
    """
    groups: dict[tuple[int, bool], list[Any]] = {}
    labels: list[_Labels] = []
    for item in items:
        if isinstance(item, _Labels):
            if groups:
                yield from groups.values()
                groups = {}
            if labels and not _same_labels(labels[-1], item):
                yield labels
                labels = []
            labels.append(item)
            continue
        if labels:
            yield labels
            labels = []
        if not isinstance(item.inputs, pd.DataFrame):
            groups.setdefault((id(item.model), item.outputs is None), []).append(item)
            continue
        if groups:
            yield from groups.values()
            groups = {}
        yield [item]
    if groups:
        yield from groups.values()
    if labels:
        yield labels


def _same_labels(previous: _Labels, item: _Labels) -> bool:
    return (previous.model_name, previous.task) == (item.model_name, item.task)


def _table(run: Sequence[Any]) -> pa.Table:
    if isinstance(run[0], _Labels):
        return _labels_table(run)
    return _predictions_table(run)


def _predictions_table(items: Sequence[_Predictions]) -> pa.Table:
    model = items[0].model
    counts = np.fromiter((item.rows for item in items), np.int64, len(items))
    total = int(counts.sum())
    arrays: list[pa.Array] = [
        *_keys(items, counts),
        pa.repeat(pa.scalar(model.name, pa.string()), total),
        pa.repeat(pa.scalar(model.version, pa.string()), total),
    ]
    schema = prediction_schema(model)
    failed = items[0].outputs is None  # a run is all answers or all failures
    if isinstance(items[0].inputs, pd.DataFrame):  # a run holds one frame
        arrays += _frame_features(model, items[0].inputs)
        if not failed:
            arrays += _frame_outputs(model, items[0].outputs, total)  # type: ignore[arg-type]
    else:
        records = [record for item in items for record in item.inputs]
        arrays += _record_features(model, records)
        if not failed:
            rows = [row for item in items for row in item.outputs]  # type: ignore[union-attr]
            arrays += _row_outputs(model, rows)
    if failed:  # no prediction, no probabilities: nulls of their types
        outputs = schema.names.index("prediction")
        arrays += [pa.nulls(total, f.type) for f in list(schema)[outputs : -len(LIVE_COLUMNS)]]
    arrays += _live_columns(items, counts)
    return pa.Table.from_arrays(arrays, schema=schema)


def _live_columns(items: Sequence[_Predictions], counts: np.ndarray) -> list[pa.Array]:
    """role, served, latency_ms and error (``contracts.LIVE_COLUMNS``): one value per item,
    repeated over its rows."""
    if len(items) == 1 or len({(i.role, i.served, i.error) for i in items}) == 1:
        first, total = items[0], int(counts.sum())
        arrays = [
            pa.repeat(pa.scalar(first.role, pa.string()), total),
            pa.repeat(pa.scalar(first.served, pa.bool_()), total),
        ]
        error = pa.repeat(pa.scalar(first.error, pa.string()), total)
    else:
        roles = np.repeat(np.array([i.role for i in items], dtype=object), counts)
        arrays = [
            pa.array(roles, pa.string()),
            pa.array(np.repeat([i.served for i in items], counts), pa.bool_()),
        ]
        errors = np.repeat(np.array([i.error for i in items], dtype=object), counts)
        error = pa.array(errors, pa.string())
    latency = np.array(
        [np.nan if i.latency_ms is None else i.latency_ms for i in items], dtype=np.float64
    )
    arrays += [_floats(np.repeat(latency, counts)), error]
    return arrays


def _labels_table(items: Sequence[_Labels]) -> pa.Table:
    labels = [label for item in items for label in item.labels]
    counts = np.fromiter((item.rows for item in items), np.int64, len(items))
    schema = feedback_schema(items[0].task)
    return pa.Table.from_arrays(
        [
            pa.array([label.request_id for label in labels], pa.string()),
            pa.array([label.row for label in labels], pa.int64()),
            pa.array([label.label for label in labels], schema.field("label").type),
            pa.array(np.repeat(_microseconds(items), counts), TIMESTAMP),
        ],
        schema=schema,
    )


def _keys(items: Sequence[_Predictions], counts: np.ndarray) -> list[pa.Array]:
    """request_id, row (index within the request) and timestamp, one per row."""
    ids = pa.array([item.request_id for item in items], pa.string())
    total = int(counts.sum())
    if total == len(items):  # one row per request: nothing to repeat
        return [
            ids,
            pa.array(np.zeros(total, dtype=np.int64), pa.int64()),
            pa.array(_microseconds(items), TIMESTAMP),
        ]
    request = np.repeat(np.arange(len(items)), counts)  # the item each row comes from
    starts = np.repeat(np.cumsum(counts) - counts, counts)
    return [
        ids.take(pa.array(request)),  # each id once in Python, repeated in Arrow
        pa.array(np.arange(total, dtype=np.int64) - starts, pa.int64()),
        pa.array(_microseconds(items)[request], TIMESTAMP),
    ]


def _microseconds(items: Sequence[_Predictions] | Sequence[_Labels]) -> np.ndarray:
    seconds = np.array([item.timestamp for item in items], dtype=np.float64)
    return np.round(seconds * 1_000_000).astype(np.int64)


def _record_features(model: LoadedModel, records: Sequence[Mapping[str, Any]]) -> list[pa.Array]:
    """One array per input column from the records (None where a value is missing)."""
    names = [c.name for c in model.columns]
    rows = record_values(records, names)
    if rows is None:  # some record lacks an optional column
        rows = [tuple(record.get(name) for name in names) for record in records]
    if all(c.type in NUMERIC_TYPES for c in model.columns):
        # One float64 matrix (None becomes NaN) costs a third of one array per column.
        matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(names))
        return [_floats(column) for column in np.ascontiguousarray(matrix.T)]
    columns = list(zip(*rows, strict=True))
    return [_feature(c.type, values) for c, values in zip(model.columns, columns, strict=True)]


def _feature(kind: str, values: Sequence[Any]) -> pa.Array:
    """float64 for numeric inputs, else strings (``str()`` of booleans and other values)."""
    if kind in NUMERIC_TYPES:
        return _floats(np.array(values, dtype=np.float64))
    return pa.array([_text(value) for value in values], pa.string())


def _frame_features(model: LoadedModel, frame: pd.DataFrame) -> list[pa.Array]:
    """One array per input column from a frame built like ``inference.to_frame`` builds it."""
    names = [c.name for c in model.columns]
    if all(c.type in NUMERIC_TYPES for c in model.columns):
        # Transposed once, so each column is contiguous: no copy per column.
        matrix = np.ascontiguousarray(frame[names].to_numpy(dtype=np.float64, na_value=np.nan).T)
        return [_floats(column) for column in matrix]
    return [
        _floats(frame[c.name].to_numpy(dtype=np.float64, na_value=np.nan))
        if c.type in NUMERIC_TYPES
        else _feature(c.type, frame[c.name].tolist())
        for c in model.columns
    ]


def _floats(values: np.ndarray) -> pa.Array:
    """float64 with NaN as null (pyarrow's from_pandas does the same at 8x the cost)."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    missing = np.isnan(values)
    if missing.any():
        return pa.array(values, pa.float64(), mask=missing)
    return pa.array(values, pa.float64())


def _text(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return None
    return value if type(value) is str else str(to_native(value))


def _row_outputs(model: LoadedModel, rows: Sequence[PredictionRow]) -> list[pa.Array]:
    if model.task == "regression":
        values = np.array([row["value"] for row in rows], dtype=np.float64)
        return [_floats(values)]
    arrays = [pa.array([str(row["label"]) for row in rows], pa.string())]
    if model.has_proba:
        probabilities = [row["probabilities"] for row in rows]
        arrays += [
            pa.array([None if p is None else p[name] for p in probabilities], pa.float64())
            for name in _class_names(model)
        ]
    return arrays


def _frame_outputs(model: LoadedModel, predictions: FramePredictions, total: int) -> list[pa.Array]:
    outputs = predictions.outputs
    if model.task == "regression":
        return [_floats(np.asarray(outputs, dtype=np.float64))]
    arrays = [_label_text(outputs)]
    if model.has_proba:
        matrix = predictions.probabilities
        arrays += [
            pa.nulls(total, pa.float64()) if matrix is None else _floats(matrix[:, index])
            for index in range(len(_class_names(model)))
        ]
    return arrays


def _label_text(labels: np.ndarray) -> pa.Array:
    """``str()`` of each label, as the record path writes it: each distinct label (a model
    has few) is turned into text once, and the text repeated where it occurs."""
    if labels.dtype.kind in "OU" and all(type(label) is str for label in labels.tolist()):
        return pa.array(labels, pa.string())
    try:
        distinct, where = np.unique(labels, return_inverse=True)
    except TypeError:  # labels of several types that do not sort together
        return pa.array([str(to_native(label)) for label in labels.tolist()], pa.string())
    text = pa.array([str(to_native(label)) for label in distinct.tolist()], pa.string())
    return text.take(pa.array(where.ravel()))


def _class_names(model: LoadedModel) -> list[str]:
    return [str(c) for c in model.classes or ()]
