"""Read the prediction log the server writes, join late labels to it, and write label parts.

Layout and columns are the contract in `pipeline.contracts`, shared with `serving`, which
writes the predictions: `<log_dir>/<model>/predictions/part-<UTC time>-<pid>-<seq>.parquet`
with `request_id`, `row`, `timestamp`, `model_name`, `model_version`, one `feature.<name>`
column per model input, `prediction` and, for classifiers with probabilities,
`proba.<class>`; labels that arrive later are `<log_dir>/<model>/feedback/part-*.parquet`
with `request_id`, `row`, `label`, `timestamp`. Every part is written to a hidden
`.<name>.tmp` and renamed, so a reader never sees half a file.

Since champion and challenger serve side by side (shadow or canary), a part also has the live
columns (`pipeline.contracts.LIVE_COLUMNS`): `role`, `served`, `latency_ms` and `error`. Parts
written before them lack them, and their rows read as the champion's, served, with no latency
and no error. `read` skips rows with an `error` (the version did not answer: there is no
prediction to monitor or learn from) and, with `served_only`, the answers that never went back
to a client; `live_rows` reads both versions' rows, errors included, for live comparison.

Every part records the store id of the registry it was written for (Parquet metadata,
`pipeline.contracts.STORE_ID_KEY`). A model name and version mean another model in another
registry, so parts of another store are skipped with a warning naming them; parts written
before parts recorded a store id are read.

Reading streams through one `pyarrow.dataset` over the parts: the time and version filters are
pushed down to it, so row groups (and whole parts) whose Parquet statistics show no row in
scope are skipped without being read; parts written by other model versions (other columns,
or a column of another type) are read as one schema, a missing column as nulls. Rows come out
in chunks of at most `chunk_rows`, so memory is bounded by the chunk size and not by the size
of the log. Labels are the exception: the feedback parts are read whole (one
small row per label) to be joined on (request_id, row), the latest label winning.
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import contracts
from pipeline.contracts import (
    CHAMPION_ROLE,
    FEATURE_PREFIX,
    FEEDBACK_DIR,
    KEY_COLUMNS,
    LIVE_COLUMNS,
    PART_GLOB,
    PREDICTIONS_DIR,
    PROBA_PREFIX,
    RESERVED_COLUMNS,
    TIMESTAMP,
    Task,
    feedback_schema,
    part_store_id,
    store_id,
    temporary_path,
    with_store_id,
)
from pipeline.errors import DataValidationError

logger = logging.getLogger(__name__)

_LIVE_TYPES = dict(LIVE_COLUMNS)
_PARQUET = ds.ParquetFileFormat()
_LOCAL = pafs.LocalFileSystem()
_part_sequence = itertools.count()
_reported: set[Path] = set()  # parts of another store already warned about by this process


def utc(moment: datetime) -> datetime:
    """`moment` as an aware UTC datetime; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def part_name(now: datetime | None = None) -> str:
    """A part file name that sorts by time and is unique across processes."""
    return contracts.part_name(utc(now or datetime.now(UTC)), next(_part_sequence))


def describe_window(since: datetime | None, until: datetime | None) -> str:
    start = utc(since).isoformat() if since else "the first logged prediction"
    end = utc(until).isoformat() if until else "now"
    return f"between {start} and {end}"


@dataclass(frozen=True)
class LogPart:
    """One part file: its pyarrow fragment, with the footer read but none of its rows."""

    path: Path
    fragment: ds.ParquetFileFragment

    @property
    def schema(self) -> pa.Schema:
        return self.fragment.physical_schema

    @property
    def rows(self) -> int:
        return int(self.fragment.metadata.num_rows)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.schema.names)

    def scope(
        self, since: datetime | None, until: datetime | None, version: str | None
    ) -> pc.Expression | None:
        """The window and version filter, on the columns this part has: without a column,
        nothing is known about its rows, so they all may be in scope."""
        return _window_filter(
            since if "timestamp" in self.columns else None,
            until if "timestamp" in self.columns else None,
            version if "model_version" in self.columns else None,
        )

    def may_hold(self, row_filter: pc.Expression | None) -> bool:
        """Whether its row groups' statistics (as pyarrow reads them) leave any row in scope."""
        return row_filter is None or self.fragment.subset(filter=row_filter).num_row_groups > 0

    def count(self, row_filter: pc.Expression | None) -> int:
        """Rows in scope (all of them when the part lacks a column the filter needs)."""
        if row_filter is None or not {"timestamp", "model_version"} <= set(self.columns):
            return self.rows
        return int(self.fragment.count_rows(filter=row_filter))


def current_store_id() -> str:
    """The store id of the registry this process uses (its MLflow tracking URI)."""
    import mlflow

    return store_id(mlflow.get_tracking_uri())


@dataclass(frozen=True)
class PredictionLog:
    """The prediction log and the labels of one registered model, as served from one registry.

    `store_id` (default: this process's tracking URI) selects the parts read and is written
    into the label parts.
    """

    log_dir: Path
    model_name: str
    store_id: str = field(default_factory=current_store_id)

    @property
    def directory(self) -> Path:
        return self.log_dir / self.model_name

    @property
    def predictions_dir(self) -> Path:
        return self.directory / PREDICTIONS_DIR

    @property
    def feedback_dir(self) -> Path:
        return self.directory / FEEDBACK_DIR

    def parts(
        self,
        *,
        version: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> list[LogPart]:
        """Prediction parts that may hold rows of `version` in [since, until), oldest first."""
        since, until = _aware(since), _aware(until)
        parts = [_open_part(path) for path in _part_files(self.predictions_dir)]
        parts = [p for p in parts if self._of_this_store(p.path, p.schema)]
        return [p for p in parts if p.may_hold(p.scope(since, until, version))]

    def versions(
        self, *, since: datetime | None = None, until: datetime | None = None
    ) -> dict[str, int]:
        """Rows per model version in [since, until): what is there when a version is not."""
        counts: Counter[str] = Counter()
        window = _window_filter(_aware(since), _aware(until), None)
        parts = [p for p in self.parts(since=since, until=until) if "model_version" in p.columns]
        schema = pa.schema([("timestamp", TIMESTAMP), ("model_version", pa.string())])
        for batch in _dataset(parts, schema).to_batches(columns=["model_version"], filter=window):
            counts.update(batch.column(0).to_pylist())
        return {str(v): counts[v] for v in sorted(counts, key=_version_order)}

    def read(
        self,
        features: Sequence[str],
        *,
        chunk_rows: int,
        version: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        probabilities: bool = False,
        labels: bool = False,
        served_only: bool = False,
    ) -> Iterator[pd.DataFrame]:
        """Stream the predictions of `version` in [since, until) as DataFrames.

        A chunk has one column per feature (the `feature.` prefix stripped), `prediction` and
        `timestamp`; with `probabilities` also the `proba.<class>` columns, with `labels` also
        `label` (missing where no label arrived). At most `chunk_rows` rows per chunk. Parts
        holding rows of the window that lack a feature raise `DataValidationError` before
        the first chunk, naming the columns.

        Rows whose version failed to answer (`error` set) are never returned: they hold no
        prediction. With `served_only`, only the answers that went back to a client are:
        one per request and record, where a shadow challenger logged a second one.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        reserved = sorted(RESERVED_COLUMNS.intersection(features))
        if reserved:
            raise DataValidationError(
                f"feature names {reserved} clash with the prediction log's own columns; "
                "rename those features"
            )
        since, until = _aware(since), _aware(until)
        parts = self.parts(version=version, since=since, until=until)
        row_filter = _window_filter(since, until, version)
        required = [f"{FEATURE_PREFIX}{name}" for name in features] + ["prediction", "timestamp"]
        self._check_columns(parts, required, row_filter, version, since, until)
        proba = sorted(
            {c for p in parts for c in p.columns if c.startswith(PROBA_PREFIX)}
            if probabilities
            else set()
        )
        keys = list(KEY_COLUMNS) if labels else []
        columns = [*required, *proba, *keys]
        # model_version and the live columns too, for the filter, even when the chunks leave
        # them out; a part without a live column reads it as null (answered, served).
        schema = _target_schema(parts, [*columns, "model_version", "error", "served"])
        answered = _and(row_filter, _answered(served_only))
        feedback = self.feedback() if labels else None
        batches = _batches(_dataset(parts, schema), columns, answered, self.model_name)
        for table in _rechunk(batches, chunk_rows):
            frame = table.to_pandas()
            frame.columns = [_strip_prefix(c) for c in frame.columns]
            if feedback is not None:
                frame = frame.merge(feedback, on=list(KEY_COLUMNS), how="left", sort=False)
                frame = frame.drop(columns=list(KEY_COLUMNS))
            yield frame

    def live_rows(
        self,
        versions: Sequence[str],
        *,
        chunk_rows: int,
        since: datetime | None = None,
        until: datetime | None = None,
    ) -> Iterator[pd.DataFrame]:
        """Stream every row `versions` logged in [since, until), errors included, for live
        comparison: `request_id`, `row`, `timestamp`, `model_version`, the live columns
        (`role`, `served`, `latency_ms`, `error`), `prediction` and the `proba.<class>`
        columns, at most `chunk_rows` rows per chunk.

        Rows of parts written before the live columns read as the champion's (`role`),
        served, with no latency and no error.
        """
        if chunk_rows < 1:
            raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
        since, until = _aware(since), _aware(until)
        wanted = [str(v) for v in versions]
        parts = [
            p
            for p in self.parts(since=since, until=until)
            if any(p.may_hold(p.scope(since, until, v)) for v in wanted)
        ]
        proba = sorted({c for p in parts for c in p.columns if c.startswith(PROBA_PREFIX)})
        live = [name for name, _ in LIVE_COLUMNS]
        columns = [*KEY_COLUMNS, "timestamp", "model_version", *live, "prediction", *proba]
        schema = _target_schema(parts, columns)
        row_filter = _and(
            _window_filter(since, until, None),
            pc.field("model_version").isin(pa.array(wanted, pa.string())),
        )
        batches = _batches(_dataset(parts, schema), columns, row_filter, self.model_name)
        for table in _rechunk(batches, chunk_rows):
            table = table.set_column(
                table.schema.get_field_index("role"),
                "role",
                pc.fill_null(table["role"], pa.scalar(CHAMPION_ROLE)),
            )
            table = table.set_column(
                table.schema.get_field_index("served"),
                "served",
                pc.fill_null(table["served"], pa.scalar(True)),
            )
            yield table.to_pandas()

    def feedback(self) -> pd.DataFrame:
        """Every label received, one per (request_id, row): the latest one wins."""
        frames = []
        for order, path in enumerate(_part_files(self.feedback_dir)):
            try:
                table = pq.read_table(path, columns=[*KEY_COLUMNS, "label", "timestamp"])
            except (pa.ArrowInvalid, KeyError, OSError) as exc:
                raise DataValidationError(
                    f"feedback part '{path}' cannot be read ({exc}); it needs the columns "
                    "request_id, row, label and timestamp: move it out of the directory"
                ) from exc
            if self._of_this_store(path, table.schema):
                frames.append(table.to_pandas().assign(_order=order))
        if not frames:
            return pd.DataFrame(
                {"request_id": pd.Series(dtype="str"), "row": pd.Series(dtype="int64")}
            ).assign(label=pd.Series(dtype="object"))
        labels = pd.concat(frames, ignore_index=True)
        # Equal timestamps (one file, or clocks that tie): the later part wins.
        labels = labels.sort_values(["timestamp", "_order"], kind="stable")
        labels = labels.drop_duplicates(list(KEY_COLUMNS), keep="last")
        return labels[[*KEY_COLUMNS, "label"]].reset_index(drop=True)

    def write_feedback(
        self, labels: pd.DataFrame, received: datetime | None = None, *, task: Task | None = None
    ) -> Path:
        """Write validated labels (request_id, row, label) as one feedback part.

        Labels are numbers for a regression model, text for a classifier; without ``task``,
        numeric labels are taken to be a regressor's.
        """
        moment = utc(received or datetime.now(UTC))
        if task is None:
            numeric = pd.api.types.is_numeric_dtype(labels["label"])
            task = "regression" if numeric else "classification"
        schema = feedback_schema(task)
        table = pa.table(
            {
                "request_id": labels["request_id"].astype(str).tolist(),
                "row": labels["row"].astype("int64").to_numpy(),
                "label": labels["label"].tolist(),
                "timestamp": pa.array([moment] * len(labels), type=TIMESTAMP),
            },
            schema=schema,
        )
        table = with_store_id(table, self.store_id)
        self.feedback_dir.mkdir(parents=True, exist_ok=True)
        path = self.feedback_dir / part_name(moment)
        temporary = temporary_path(path)  # hidden from readers while written
        pq.write_table(table, temporary)
        temporary.replace(path)
        logger.info("Wrote %d labels to %s", len(labels), path)
        return path

    def _of_this_store(self, path: Path, schema: pa.Schema) -> bool:
        """Whether a part belongs to this store; a part of another one is warned about once."""
        recorded = part_store_id(schema)
        if recorded is None or recorded == self.store_id:
            return True
        if path not in _reported:
            _reported.add(path)
            logger.warning(
                "Skipping prediction log part %s of model '%s': it was written for the registry "
                "%s, and this command uses %s, where '%s' and its versions are other models. "
                "Point MLFLOW_TRACKING_URI at that registry to read it, or move it out of %s",
                path,
                self.model_name,
                recorded,
                self.store_id,
                self.model_name,
                self.log_dir,
            )
        return False

    def _check_columns(
        self,
        parts: Sequence[LogPart],
        required: Sequence[str],
        row_filter: pc.Expression | None,
        version: str | None,
        since: datetime | None,
        until: datetime | None,
    ) -> None:
        for part in parts:
            missing = [c for c in required if c not in part.columns]
            # A part of another version may lack our columns: only rows in scope count.
            if missing and part.count(row_filter) > 0:
                of = f"{self.model_name} v{version}" if version else self.model_name
                raise DataValidationError(
                    f"the prediction log of {of} {describe_window(since, until)} lacks the "
                    f"column(s) {', '.join(missing)} in {part.path} (it has "
                    f"{', '.join(part.columns)}); the model needs every feature it was "
                    "trained on: log predictions with the server of this model version"
                )


def _aware(moment: datetime | None) -> datetime | None:
    return utc(moment) if moment is not None else None


def _version_order(version: object) -> tuple[bool, int, str]:
    text = str(version)
    return (not text.isdigit(), int(text) if text.isdigit() else 0, text)


def _part_files(directory: Path) -> list[Path]:
    # Sorted by name = by the time the part was started; .tmp files are being written.
    return sorted(directory.glob(PART_GLOB)) if directory.is_dir() else []


def _open_part(path: Path) -> LogPart:
    fragment = _PARQUET.make_fragment(str(path), filesystem=_LOCAL)
    try:
        fragment.ensure_complete_metadata()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataValidationError(
            f"prediction log part '{path}' is not a readable Parquet file ({exc}); "
            "move it out of the log directory"
        ) from exc
    return LogPart(path, fragment)


def _dataset(parts: Sequence[LogPart], schema: pa.Schema) -> ds.Dataset:
    """One dataset over ``parts``, read as ``schema``: a column a part lacks is null, one of
    another type is cast."""
    return ds.FileSystemDataset([p.fragment for p in parts], schema, _PARQUET, _LOCAL)


def _batches(
    dataset: ds.Dataset, columns: Sequence[str], row_filter: pc.Expression | None, model: str
) -> Iterator[pa.RecordBatch]:
    try:
        yield from dataset.to_batches(
            columns=list(columns), filter=row_filter, batch_readahead=1, fragment_readahead=1
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataValidationError(
            f"the prediction log of {model} holds parts whose columns cannot be read as one "
            f"table ({exc}): a column changed type between model versions; read one version "
            "at a time, or move the odd parts out of the log directory"
        ) from exc


def _window_filter(
    since: datetime | None, until: datetime | None, version: str | None
) -> pc.Expression | None:
    conditions = []
    if since is not None:
        conditions.append(pc.field("timestamp") >= pa.scalar(since, type=TIMESTAMP))
    if until is not None:
        conditions.append(pc.field("timestamp") < pa.scalar(until, type=TIMESTAMP))
    if version is not None:
        conditions.append(pc.field("model_version") == pa.scalar(version, type=pa.string()))
    if not conditions:
        return None
    combined = conditions[0]
    for condition in conditions[1:]:
        combined = combined & condition
    return combined


def _answered(served_only: bool) -> pc.Expression:
    """Rows that hold a prediction (no `error`), and with `served_only` only those that went
    back to a client; a null live column is a part written before it: answered and served."""
    condition = pc.field("error").is_null()
    if served_only:
        served = pc.field("served")
        condition = condition & (served.is_null() | (served == pa.scalar(True)))
    return condition


def _and(first: pc.Expression | None, second: pc.Expression) -> pc.Expression:
    return second if first is None else first & second


def _target_schema(parts: Sequence[LogPart], columns: Sequence[str]) -> pa.Schema:
    """One type per column: the first part's, so chunks from every part concatenate."""
    types: dict[str, pa.DataType] = {}
    for part in parts:
        for name in columns:
            if name in part.columns and name not in types:
                field_type = part.schema.field(name).type
                if field_type != pa.null():
                    types[name] = field_type
    types.update({"timestamp": TIMESTAMP, "row": pa.int64()})
    # The live columns are read as the contract types, whatever a part wrote.
    types.update({name: kind for name, kind in _LIVE_TYPES.items() if name in columns})
    return pa.schema([(name, types.get(name, _default_type(name))) for name in columns])


def _default_type(column: str) -> pa.DataType:
    # Only for a column no part has (every part may lack an optional one): the contract's type.
    if column.startswith(PROBA_PREFIX):
        return pa.float64()
    return _LIVE_TYPES.get(column, pa.string())


def _rechunk(batches: Iterator[pa.RecordBatch], chunk_rows: int) -> Iterator[pa.Table]:
    """Tables of exactly `chunk_rows` rows (the last one fewer) from batches of any size."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= chunk_rows:
            table = pa.Table.from_batches(pending)
            yield table.slice(0, chunk_rows)
            rest = table.slice(chunk_rows)
            pending = rest.to_batches()
            pending_rows = rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending)


def _strip_prefix(column: str) -> str:
    return column.removeprefix(FEATURE_PREFIX)
