"""What the training side and the server both rely on, defined once.

Serving may import this module and nothing else from ``pipeline`` (an import-linter contract in
``pyproject.toml``), so it imports only the standard library, NumPy and pyarrow: no MLflow,
scikit-learn or pandas, nothing that makes the server slow to start.

What lives here:

- the prediction log: its layout on disk, its columns and their Arrow types and the store id
  each part records, written by the server (predictions and labels) and by
  ``python -m pipeline feedback`` (labels), read by monitoring, retraining and live
  comparison (``docs/prediction-log.md``);
- the skops types a logged model may hold to be loaded, by the pipeline and by the server;
- the naming of held-out metrics, which the server shows for the version it answers with;
- the MLflow signature column types a model may take, and what each means on the wire.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import pyarrow as pa

Task = Literal["classification", "regression"]

# --- the prediction log ----------------------------------------------------------------------

PREDICTION_LOG_DIR = "prediction_log"
"""Default log directory, relative to the working directory (the pipeline's
``monitoring.log_dir`` and the server's ``SERVING_PREDICTION_LOG_DIR``)."""
PREDICTIONS_DIR = "predictions"
"""``<log_dir>/<model name>/predictions/``: parts written by the server."""
FEEDBACK_DIR = "feedback"
"""``<log_dir>/<model name>/feedback/``: label parts, from ``/feedback`` or the feedback step."""
PART_GLOB = "part-*.parquet"
"""Finished parts; a part being written is hidden (see :func:`temporary_path`)."""

FEATURE_PREFIX = "feature."
PROBA_PREFIX = "proba."
KEY_COLUMNS = ("request_id", "row")
"""What names one prediction: the request's ``X-Request-ID`` and the record's index in it."""
RESERVED_COLUMNS = frozenset({"prediction", "timestamp", "label", "request_id", "row"})
"""Names a reader's chunk uses for its own columns, so no feature may take them."""
TIMESTAMP = pa.timestamp("us", tz="UTC")


def part_name(moment: datetime, sequence: int) -> str:
    """A part file name that sorts by time (UTC) and is unique across processes.

    ``sequence`` is a counter of the writing process, for parts started in the same
    microsecond.
    """
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return f"part-{utc:%Y%m%dT%H%M%S%f}-{os.getpid()}-{sequence:06d}.parquet"


def temporary_path(path: Path) -> Path:
    """Where a part is written before it is renamed to ``path``: hidden from every reader,
    since neither ``part-*.parquet`` nor pyarrow's directory reads (which skip names starting
    with "." or "_") match it, so no reader ever sees half a part."""
    return path.with_name(f".{path.name}.tmp")


def label_type(task: Task) -> pa.DataType:
    """Labels (and classifiers' predictions) are ``str()`` of the class; numbers for regressors."""
    return pa.float64() if task == "regression" else pa.string()


def prediction_schema(
    features: Sequence[tuple[str, str]], task: Task, classes: Sequence[str] | None
) -> pa.Schema:
    """The columns of a prediction part, the :data:`LIVE_COLUMNS` last.

    ``features`` are the model's inputs as (name, signature type); ``classes`` the
    ``str()`` of each class when the model has probabilities, else None.
    """
    fields = [
        pa.field("request_id", pa.string()),
        pa.field("row", pa.int64()),
        pa.field("timestamp", TIMESTAMP),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
    ]
    fields += [pa.field(FEATURE_PREFIX + name, log_type(kind)) for name, kind in features]
    fields.append(pa.field("prediction", label_type(task)))
    fields += [pa.field(PROBA_PREFIX + name, pa.float64()) for name in classes or ()]
    fields += [pa.field(name, kind) for name, kind in LIVE_COLUMNS]
    return pa.schema(fields)


LIVE_COLUMNS: tuple[tuple[str, pa.DataType], ...] = (
    ("role", pa.string()),
    ("served", pa.bool_()),
    ("latency_ms", pa.float64()),
    ("error", pa.string()),
)
"""Columns of a prediction part that tell champion and challenger apart on the same request.

- ``role``: :data:`CHAMPION_ROLE` or :data:`CHALLENGER_ROLE`, the version's role when it answered;
- ``served``: true when this answer went back to the client (the champion's, or the
  challenger's on a canary request), false for a shadow answer or a canary answer replaced
  by the champion's;
- ``latency_ms``: the model call's time for the request this row belongs to, in milliseconds;
- ``error``: null when the version answered; else why it did not (error type and message,
  short), with ``prediction`` and the probabilities null.

Parts written before these columns existed lack them: readers take such rows as the
champion's, served, with no latency and no error."""


STORE_ID_KEY = b"mlops.store_id"
"""Parquet key-value metadata of every part: the store id of the registry whose model made the
predictions (or whose model the labels are for). Readers skip parts of another store, since a
model name and version mean another model there."""
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
"""The store both sides use when ``MLFLOW_TRACKING_URI`` is not set."""
_SQLITE = "sqlite:///"


def store_id(tracking_uri: str | None = None) -> str:
    """The registry a tracking URI names, spelled one way whoever resolves it.

    A relative SQLite path is made absolute against the working directory (the server and the
    pipeline commands run from the same project directory); a server URI keeps scheme, host,
    port and path, lower-cased where case means nothing, and loses credentials and query.
    Without a URI: ``MLFLOW_TRACKING_URI``, else :data:`DEFAULT_TRACKING_URI`.
    """
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith(_SQLITE):
        database = uri.removeprefix(_SQLITE).split("?", 1)[0]
        return f"{_SQLITE}{Path(database).resolve()}" if database else uri
    parts = urlsplit(uri)
    if not parts.scheme or parts.scheme == "file":
        return f"file://{Path(parts.path).resolve()}"
    host = (parts.hostname or "").lower()
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme.lower()}://{host}{port}{parts.path.rstrip('/')}"


def part_store_id(schema: pa.Schema) -> str | None:
    """The store id a part records, or None for a part written before parts recorded one."""
    value = (schema.metadata or {}).get(STORE_ID_KEY)
    return value.decode() if value is not None else None


def with_store_id(table: pa.Table, store: str) -> pa.Table:
    """``table`` carrying ``store`` in its schema metadata, as every part is written."""
    return table.replace_schema_metadata({**(table.schema.metadata or {}), STORE_ID_KEY: store})


def feedback_schema(task: Task) -> pa.Schema:
    """The columns of a feedback part."""
    return pa.schema(
        [
            pa.field("request_id", pa.string()),
            pa.field("row", pa.int64()),
            pa.field("label", label_type(task)),
            pa.field("timestamp", TIMESTAMP),
        ]
    )


# --- champion and challenger -------------------------------------------------------------------

CHAMPION_STAGE = "Production"
CHAMPION_ALIAS = "champion"
"""The version that answers clients: the registry's Production stage, with this alias in step."""
CHALLENGER_STAGE = "Staging"
CHALLENGER_ALIAS = "challenger"
"""The version judged on live traffic before it may answer everyone: the Staging stage, with this
alias in step (``gate.live: true`` sends a passing candidate here; ``live-gate`` decides)."""
CHAMPION_ROLE = "champion"
CHALLENGER_ROLE = "challenger"
"""Values of the prediction log's ``role`` column."""
CANARY_ROLLBACK_TAG = "live.rollback"
"""Version tag the server sets on the challenger when it stops routing canary traffic to it
(value: when and why, in words). ``live-gate`` rejects a challenger that carries it."""


# --- loading a logged model ------------------------------------------------------------------

TRUSTED_MODULE_PREFIXES: tuple[str, ...] = ("sklearn.", "numpy.", "scipy.")
"""Modules whose types a skops file may hold beyond what skops trusts by default.

Every model this pipeline logs is one scikit-learn Pipeline; for every estimator and
preprocessing step it builds (linear models, trees and forests, boosting including
HistGradientBoosting, k-NN, SVM, MLP, naive Bayes, imputers, scalers, one-hot) skops reports
types of ``sklearn.*`` (e.g. ``sklearn.tree._tree.Tree``) and ``numpy.*`` (``numpy.dtype``)
only; ``scipy.*`` stays for estimators that keep SciPy objects (sparse matrices, kernels).
Plain containers (dict, list, OrderedDict ...) skops trusts by itself, so ``builtins.`` and
``collections.`` are not needed, and trusting them would let a file name any builtin
function (``builtins.eval``) as a trusted type.
"""


TRUSTED_TYPE_NAMES: frozenset[str] = frozenset({"functools.partial"})
"""Exact types trusted beyond the prefixes. A HistGradientBoosting model with native categorical
splits keeps ``functools.partial(sklearn.utils.validation.check_array, ...)``; skops reports the
wrapped function as a type of its own (``sklearn.utils.validation.check_array``), which must pass
the prefix check too, so trusting the partial does not trust what it wraps."""


def refused_types(types: Sequence[str]) -> list[str]:
    """The skops types in ``types`` outside :data:`TRUSTED_MODULE_PREFIXES` and
    :data:`TRUSTED_TYPE_NAMES`: a model holding any of them is not loaded."""
    return [
        name
        for name in types
        if not name.startswith(TRUSTED_MODULE_PREFIXES) and name not in TRUSTED_TYPE_NAMES
    ]


# --- the embedded SQLite store -----------------------------------------------------------------

STORE_LOCK_SUFFIX = ".lock"
"""``<db>.lock`` beside a SQLite store: the pipeline holds it exclusively while it creates or
migrates the store; the server takes it shared to open the store, so neither migrates it twice."""


# --- registry records the server reads -------------------------------------------------------

HELD_OUT_PREFIX = "test_"
"""Prefix of held-out metrics on a run and in version tags (``test_accuracy``); the server's
``/model`` shows those of the version it answers with."""


# --- signature column types ------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnType:
    """One MLflow signature column type and what it means for every reader of a request."""

    name: str
    """MLflow's ``DataType`` name, as in the logged signature."""
    kind: Literal["float", "integer", "boolean", "string"]
    dtype: str
    """NumPy dtype of the training column when no value is missing."""
    bits: int | None
    """Integers: values lie in [-2**bits, 2**bits)."""
    json_kind: str
    """How a JSON value of this type reads in a message."""
    kserve: str
    """Open Inference Protocol (KServe v2) tensor datatype."""
    zero: float | int | bool | str
    """A harmless value, for a synthetic warm-up row."""

    @property
    def numeric(self) -> bool:
        return self.kind in ("float", "integer")

    @property
    def log_type(self) -> pa.DataType:
        """Arrow type of the column in the prediction log: numbers as float64, else text."""
        return pa.float64() if self.numeric else pa.string()


COLUMN_TYPES: Mapping[str, ColumnType] = {
    t.name: t
    for t in (
        ColumnType("double", "float", "float64", None, "a number", "FP64", 0.0),
        ColumnType("float", "float", "float32", None, "a number", "FP32", 0.0),
        ColumnType("long", "integer", "int64", 63, "an integer", "INT64", 0),
        ColumnType("integer", "integer", "int32", 31, "an integer", "INT32", 0),
        ColumnType("string", "string", "object", None, "a string", "BYTES", ""),
        ColumnType("boolean", "boolean", "bool", None, "true or false", "BOOL", False),
    )
}
"""Every signature column type a served model may have, by MLflow name."""
NUMERIC_TYPES = frozenset(name for name, t in COLUMN_TYPES.items() if t.numeric)
FLOAT_TYPES = frozenset(name for name, t in COLUMN_TYPES.items() if t.kind == "float")
INTEGER_TYPES = frozenset(name for name, t in COLUMN_TYPES.items() if t.kind == "integer")


def log_type(type_name: str) -> pa.DataType:
    """Arrow type of a feature column of ``type_name`` in the prediction log."""
    return COLUMN_TYPES[type_name].log_type


# --- the training data's domain ----------------------------------------------------------------

INPUT_DOMAIN_ARTIFACT = "input_domain.json"
"""Run artifact written by training: per feature, the categories or the numeric range seen in the
training rows. The server flags (never refuses) a request value outside it."""


@dataclass(frozen=True)
class ColumnDomain:
    """What one feature looked like in training: ``categories`` for a categorical column, the
    closed range [``low``, ``high``] of its finite values for a numeric one."""

    name: str
    categories: frozenset[str] | None = None
    low: float | None = None
    high: float | None = None

    def outside(self, value: object) -> str | None:
        """Why ``value`` lies outside the training domain, in words, or None. Missing values
        are the imputer's business and never flagged."""
        if value is None or (isinstance(value, float) and value != value):
            return None
        if self.categories is not None:
            text = value if isinstance(value, str) else str(value)
            if text not in self.categories:
                return f"{self.name}: category {text!r} was not seen in training"
            return None
        if self.low is None or self.high is None or isinstance(value, (str, bool)):
            return None
        number = float(value)  # type: ignore[arg-type]
        if number < self.low or number > self.high:
            span = f"[{self.low:g}, {self.high:g}]"
            return f"{self.name}: {number:g} is outside the training range {span}"
        return None


@dataclass(frozen=True)
class InputDomain:
    columns: Mapping[str, ColumnDomain]

    def to_json(self) -> dict[str, object]:
        return {
            "columns": {
                name: (
                    {"categories": sorted(column.categories)}
                    if column.categories is not None
                    else {"low": column.low, "high": column.high}
                )
                for name, column in self.columns.items()
            }
        }

    @classmethod
    def from_json(cls, document: Mapping[str, object]) -> InputDomain:
        raw = document.get("columns")
        if not isinstance(raw, Mapping):
            raise ValueError(f"{INPUT_DOMAIN_ARTIFACT} has no 'columns' mapping")
        columns: dict[str, ColumnDomain] = {}
        for name, spec in raw.items():
            if not isinstance(spec, Mapping):
                raise ValueError(f"{INPUT_DOMAIN_ARTIFACT}: column {name!r} is not a mapping")
            categories = spec.get("categories")
            if categories is not None:
                columns[name] = ColumnDomain(name, categories=frozenset(map(str, categories)))
            else:
                low, high = spec.get("low"), spec.get("high")
                columns[name] = ColumnDomain(
                    name,
                    low=None if low is None else float(low),
                    high=None if high is None else float(high),
                )
        return cls(columns)

    def warnings(self, record: Mapping[str, object]) -> list[str]:
        """One message per value of ``record`` outside the training domain, in column order."""
        messages = []
        for name, column in self.columns.items():
            if name in record and (message := column.outside(record[name])) is not None:
                messages.append(message)
        return messages
