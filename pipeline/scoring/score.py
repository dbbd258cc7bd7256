"""Batch scoring: a CSV or Parquet file through a logged model into one Parquet file.

Two engines write the same file: the same columns in the same order, the same types and the
same values, row for row in input order.

- `pandas` (default) streams the input in chunks of `chunk_rows` rows (pyarrow's CSV reader or
  Parquet batches), predicts each chunk with the model loaded by `model_io` (skops, types
  checked) and appends it to a Parquet writer: memory is bounded by the chunk, not the file.
- `spark` reads the input with a local Spark session and predicts through
  `mlflow.pyfunc.spark_udf`, i.e. MLflow's own loader inside Spark's Python workers.

Output columns: every input column, then `prediction` (the label as text for a classifier, a
float64 for a regressor) and, for a classifier with `predict_proba`, one float64
`proba.<class>` column per class in the model's `classes_` order; the names follow the
prediction log's. Feature columns are written with the model signature's type (double ->
float64, long -> int64, string -> string); other columns keep their Parquet type, or stay text
when read from CSV, so nothing is guessed from a sample of the file.

Bad input fails before anything is visible at the output path: the file is written under a
temporary name beside it and renamed at the end.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import mlflow
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.tracking import MlflowClient
from sklearn.base import is_classifier
from sklearn.pipeline import Pipeline
from tqdm import tqdm

from pipeline import model_io
from pipeline.errors import ConfigError, DataValidationError, PipelineError, RegistryError
from pipeline.monitoring.prediction_log import PROBA_PREFIX
from pipeline.registry import production

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

logger = logging.getLogger(__name__)

Engine = Literal["pandas", "spark"]
ENGINES: tuple[str, ...] = ("pandas", "spark")
DEFAULT_CHUNK_ROWS = 100_000
PREDICTION = "prediction"
CSV_SUFFIXES = frozenset({".csv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})

# The cells pandas.read_csv reads as missing by default, which is how the training data was
# read (ingest): the same text means "missing" at scoring time, in both engines.
NULL_MARKERS: tuple[str, ...] = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip
# Numbers as text: plain decimals, optionally with an exponent. Both engines accept exactly
# this (RE2 in Arrow, java.util.regex in Spark, same meaning for this pattern); each engine's
# own parser is more lenient in different ways (Java takes "1d" and " 1", Arrow neither).
NUMBER_PATTERN = r"\A[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\z"
INTEGER_PATTERN = r"\A[+-]?[0-9]+\z"

SPARK_MASTER = "local[2]"
SPARK_CONF: dict[str, str] = {
    "spark.ui.enabled": "false",
    "spark.driver.memory": "1g",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.sql.shuffle.partitions": "2",
    "spark.sql.session.timeZone": "UTC",
}
_SPARK_TYPES = {"double": "double", "long": "bigint", "string": "string"}
# MLflow's sklearn loader refuses skops files unless this is true; see _spark_predictions.
_ALLOW_DESERIALIZATION = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}

FeatureKind = Literal["double", "long", "string"]
_KINDS: dict[str, FeatureKind] = {"double": "double", "long": "long", "string": "string"}
_ARROW_TYPES: dict[str, pa.DataType] = {
    "double": pa.float64(),
    "long": pa.int64(),
    "string": pa.string(),
}


@dataclass(frozen=True)
class ScoreRequest:
    """What to score with which model, and where to write it.

    Give either `model_uri` (any MLflow model URI: models:/name/3, models:/name@champion,
    runs:/<id>/model, a local directory) or `name` (a registered model: its Production version;
    `name@alias` for an alias).
    """

    input_path: Path
    output_path: Path
    model_uri: str | None = None
    name: str | None = None
    engine: Engine = "pandas"
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    progress: bool = True


@dataclass(frozen=True)
class ScoreResult:
    model_uri: str
    model_version: str | None
    """The registry version when the model was resolved by name, else None."""
    engine: str
    rows: int
    output_path: Path
    columns: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class _Feature:
    name: str
    kind: FeatureKind
    required: bool


@dataclass(frozen=True)
class _Model:
    uri: str
    version: str | None
    local_dir: Path
    pipeline: Pipeline
    features: tuple[_Feature, ...]
    classes: tuple[str, ...] | None
    """str() of each class label for a classifier, else None (regressor)."""
    has_proba: bool


@dataclass(frozen=True)
class _Input:
    path: Path
    fmt: Literal["csv", "parquet"]
    files: tuple[Path, ...]
    """The file itself, or the Parquet parts of a directory in name order."""
    schema: pa.Schema
    rows: int | None
    """Known up front for Parquet (footer metadata); None for CSV."""


def run(request: ScoreRequest) -> ScoreResult:
    """Score `request.input_path` with the model and write `request.output_path` (Parquet)."""
    started = time.perf_counter()
    _check_request(request)
    source = _open_input(Path(request.input_path))
    uri, version = resolve_model_uri(request.model_uri, request.name)
    with tempfile.TemporaryDirectory(prefix="score-") as tmp:
        model = _load(uri, version, Path(tmp))
        _check_columns(source, model)
        schema = _output_schema(source, model)
        output = Path(request.output_path)
        output.parent.mkdir(parents=True, exist_ok=True)
        with _written_atomically(output) as partial:
            if request.engine == "spark":
                rows = _score_spark(source, model, schema, partial, request, Path(tmp))
            else:
                rows = _score_pandas(source, model, schema, partial, request)
    seconds = time.perf_counter() - started
    logger.info(
        "Scored %d rows of %s with %s (%s engine) in %.1fs -> %s",
        rows,
        source.path,
        uri,
        request.engine,
        seconds,
        output,
    )
    return ScoreResult(
        model_uri=uri,
        model_version=version,
        engine=request.engine,
        rows=rows,
        output_path=output,
        columns=tuple(schema.names),
        seconds=seconds,
    )


def resolve_model_uri(model_uri: str | None, name: str | None) -> tuple[str, str | None]:
    """(URI, registry version or None): `name` -> its Production version, `name@alias` -> alias."""
    if (model_uri is None) == (name is None):
        raise ConfigError(
            "give exactly one of a model URI (--model-uri models:/iris/3, runs:/<id>/model) "
            "or a registered model name (--name iris, --name iris@champion)"
        )
    if model_uri is not None:
        if not model_uri.strip():
            raise ConfigError("the model URI is empty; pass e.g. models:/iris/Production")
        return model_uri, None
    assert name is not None
    model_name, _, alias = name.partition("@")
    if not model_name.strip():
        raise ConfigError(f"'{name}' names no model; pass e.g. --name iris or --name iris@champion")
    client = MlflowClient()
    try:
        client.get_registered_model(model_name)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise RegistryError(
            f"registered model '{model_name}' does not exist in {mlflow.get_tracking_uri()}; "
            "train and register it first (python -m pipeline main --config ...), or pass "
            "--model-uri"
        ) from exc
    if alias:
        try:
            found = client.get_model_version_by_alias(model_name, alias)
        except MlflowException as exc:
            raise RegistryError(
                f"registered model '{model_name}' has no alias '{alias}'; "
                f"use --name {model_name} for its Production version or pass --model-uri"
            ) from exc
        return f"models:/{model_name}@{alias}", str(found.version)
    current = production.production_version(client, model_name)
    if current is None:
        raise RegistryError(
            f"registered model '{model_name}' has no Production version; promote one "
            f"(python -m pipeline promote --name {model_name} --version N) or pass "
            f"--model-uri models:/{model_name}/<version>"
        )
    return f"models:/{model_name}/{production.PRODUCTION}", str(current.version)


# --- request, model and input checks (shared by both engines) -----------------------------


def _check_request(request: ScoreRequest) -> None:
    if request.engine not in ENGINES:
        raise ConfigError(f"engine '{request.engine}' is unknown; choose one of {list(ENGINES)}")
    if isinstance(request.chunk_rows, bool) or request.chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be a positive number of rows, got {request.chunk_rows}")
    output = Path(request.output_path)
    if output.is_dir():
        raise ConfigError(f"output '{output}' is a directory; pass a file path like scores.parquet")
    if output.resolve() == Path(request.input_path).resolve():
        raise ConfigError(f"output '{output}' is the input file; choose another output path")


def _open_input(path: Path) -> _Input:
    if path.is_dir():
        parts = tuple(
            sorted(
                p
                for p in path.iterdir()
                if p.suffix in PARQUET_SUFFIXES and not p.name.startswith(("_", "."))
            )
        )
        if not parts:
            raise DataValidationError(
                f"input directory '{path}' holds no .parquet files; pass a CSV or Parquet file "
                "or a directory of Parquet parts"
            )
        return _parquet_input(path, parts)
    if not path.is_file():
        raise DataValidationError(f"input file '{path}' not found; pass an existing file")
    if path.suffix.lower() in CSV_SUFFIXES:
        names = _csv_header(path)
        schema = pa.schema([(name, pa.string()) for name in names])
        return _Input(path=path, fmt="csv", files=(path,), schema=schema, rows=None)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _parquet_input(path, (path,))
    raise DataValidationError(
        f"input '{path}' is neither .csv nor .parquet; convert it or rename it with its format"
    )


def _parquet_input(path: Path, parts: tuple[Path, ...]) -> _Input:
    schema: pa.Schema | None = None
    rows = 0
    for part in parts:
        try:
            meta = pq.ParquetFile(part)
        except (pa.ArrowException, OSError) as exc:
            raise DataValidationError(f"'{part}' is not a readable Parquet file: {exc}") from exc
        part_schema = meta.schema_arrow.remove_metadata()
        if schema is None:
            schema = part_schema
        elif not part_schema.equals(schema):
            raise DataValidationError(
                f"Parquet part '{part.name}' of '{path}' has the columns {part_schema.names} "
                f"({part_schema.types}), unlike the first part's {schema.names} "
                f"({schema.types}); all parts must share one schema"
            )
        rows += meta.metadata.num_rows
    assert schema is not None
    return _Input(path=path, fmt="parquet", files=parts, schema=schema, rows=rows)


def _csv_header(path: Path) -> list[str]:
    # utf-8-sig: a byte-order mark is not part of the first column's name.
    with path.open(newline="", encoding="utf-8-sig") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise DataValidationError(f"CSV file '{path}' is empty; it needs a header row")
    duplicates = sorted({n for n in header if header.count(n) > 1})
    if duplicates:
        raise DataValidationError(
            f"CSV file '{path}' repeats the column(s) {', '.join(map(repr, duplicates))} "
            "in its header; give every column a unique name"
        )
    return header


def _load(uri: str, version: str | None, tmp: Path) -> _Model:
    """Download once, check, load: both engines use this one verified copy of the model."""
    # The version resolved a moment ago, not whatever holds the stage or alias by now: a
    # promotion in between must not make the run report one version and score another.
    pinned = f"models:/{_registered_name(uri)}/{version}" if version is not None else uri
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=pinned, dst_path=str(tmp)))
    except Exception as exc:
        raise RegistryError(f"cannot download model '{uri}': {exc}") from exc
    if not (local / "MLmodel").is_file():
        raise RegistryError(f"'{uri}' is not an MLflow model (no MLmodel file in it)")
    pipeline = model_io.load_model(str(local))
    meta = Model.load(str(local / "MLmodel"))
    classes = None
    if is_classifier(pipeline):
        classes = tuple(str(c) for c in pipeline.classes_)
    return _Model(
        uri=uri,
        version=version,
        local_dir=local,
        pipeline=pipeline,
        features=_features(meta, uri),
        classes=classes,
        has_proba=classes is not None and hasattr(pipeline, "predict_proba"),
    )


def _registered_name(uri: str) -> str:
    """'iris' from models:/iris/Production or models:/iris@champion."""
    reference = uri.removeprefix("models:/")
    return reference.partition("@")[0] if "@" in reference else reference.rsplit("/", 1)[0]


def _features(meta: Model, uri: str) -> tuple[_Feature, ...]:
    schema = meta.get_input_schema()
    if schema is None or schema.is_tensor_spec() or not schema.has_input_names():
        raise RegistryError(
            f"model '{uri}' has no column signature; batch scoring needs one "
            "(models trained by this pipeline have it)"
        )
    features = []
    for spec in schema.inputs:
        kind = getattr(spec.type, "name", str(spec.type))
        if kind not in _ARROW_TYPES:
            raise RegistryError(
                f"model '{uri}' input '{spec.name}' has type {kind}; batch scoring supports "
                f"the column types {', '.join(_ARROW_TYPES)}"
            )
        features.append(_Feature(name=spec.name, kind=_KINDS[kind], required=spec.required))
    return tuple(features)


def _check_columns(source: _Input, model: _Model) -> None:
    names = set(source.schema.names)
    missing = [f.name for f in model.features if f.required and f.name not in names]
    if missing:
        raise DataValidationError(
            f"input '{source.path}' lacks the model's input column(s) "
            f"{', '.join(map(repr, missing))}; add them (its columns are: "
            f"{', '.join(source.schema.names)})"
        )
    produced = [PREDICTION, *(f"{PROBA_PREFIX}{c}" for c in model.classes or ())]
    clashing = [c for c in source.schema.names if c in produced]
    if clashing:
        raise DataValidationError(
            f"input '{source.path}' already has the column(s) {', '.join(map(repr, clashing))} "
            "that scoring writes; drop or rename them"
        )
    if source.fmt == "csv":
        return
    for feature in model.features:
        if feature.name in names:
            have = source.schema.field(feature.name).type
            if not _accepts(feature.kind, have):
                raise DataValidationError(
                    f"column '{feature.name}' of '{source.path}' holds {_held(have)} ({have}); "
                    f"the model expects {_describe(feature.kind)}: convert the column "
                    "(or export the data as CSV)"
                )


def _accepts(kind: str, have: pa.DataType) -> bool:
    if kind == "double":
        return bool(pa.types.is_integer(have) or pa.types.is_floating(have))
    if kind == "long":
        return bool(pa.types.is_integer(have))
    if pa.types.is_dictionary(have):
        have = have.value_type
    return bool(
        pa.types.is_string(have) or pa.types.is_large_string(have) or pa.types.is_string_view(have)
    )


def _held(have: pa.DataType) -> str:
    if pa.types.is_dictionary(have):
        have = have.value_type
    if pa.types.is_string(have) or pa.types.is_large_string(have) or pa.types.is_string_view(have):
        return "text"
    if pa.types.is_floating(have):
        return "numbers"
    if pa.types.is_integer(have):
        return "whole numbers"
    return "values of another type"


def _describe(kind: str) -> str:
    return {"double": "numbers", "long": "whole numbers", "string": "text"}[kind]


def _output_schema(source: _Input, model: _Model) -> pa.Schema:
    kinds = {f.name: f.kind for f in model.features}
    fields = [
        pa.field(f.name, _ARROW_TYPES[kinds[f.name]]) if f.name in kinds else f
        for f in source.schema
    ]
    if model.classes is None:
        fields.append(pa.field(PREDICTION, pa.float64()))
    else:
        fields.append(pa.field(PREDICTION, pa.string()))
        if model.has_proba:
            fields += [pa.field(f"{PROBA_PREFIX}{c}", pa.float64()) for c in model.classes]
    return pa.schema(fields)


@contextmanager
def _written_atomically(output: Path) -> Iterator[Path]:
    """Yield a temporary path beside `output`; rename it to `output` only on success."""
    partial = output.with_name(f".{output.name}.{uuid.uuid4().hex}.partial")
    try:
        yield partial
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)


# --- pandas engine --------------------------------------------------------------------------


def _score_pandas(
    source: _Input, model: _Model, schema: pa.Schema, partial: Path, request: ScoreRequest
) -> int:
    rows = 0
    with (
        pq.ParquetWriter(partial, schema) as writer,
        tqdm(
            total=source.rows,
            desc="scoring",
            unit="rows",
            unit_scale=True,
            file=sys.stderr,
            # None is tqdm's "only on a TTY": logs and pipes get no carriage-return noise.
            disable=None if request.progress else True,
            leave=False,
        ) as bar,
    ):
        for batch in _input_batches(source, request.chunk_rows):
            writer.write_batch(_score_batch(batch, rows, source, model, schema))
            rows += batch.num_rows
            bar.update(batch.num_rows)
    return rows


def _input_batches(source: _Input, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    if source.fmt == "parquet":
        for part in source.files:
            with pq.ParquetFile(part) as handle:
                for batch in handle.iter_batches(batch_size=chunk_rows):
                    yield batch.replace_schema_metadata(None)
        return
    yield from _rebatch(_csv_batches(source), chunk_rows)


def _csv_batches(source: _Input) -> Iterator[pa.RecordBatch]:
    names = source.schema.names
    try:
        reader = pacsv.open_csv(
            source.path,
            read_options=pacsv.ReadOptions(skip_rows=1, column_names=names),
            convert_options=pacsv.ConvertOptions(
                column_types=dict.fromkeys(names, pa.string()),
                null_values=list(NULL_MARKERS),
                strings_can_be_null=True,
                quoted_strings_can_be_null=True,
            ),
        )
        yield from reader
    except pa.ArrowInvalid as exc:
        raise DataValidationError(f"CSV file '{source.path}' cannot be read: {exc}") from exc


def _rebatch(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Batches of exactly `rows` rows (the last may be shorter) from batches of any size."""
    pending: list[pa.RecordBatch] = []
    held = 0
    for batch in batches:
        pending.append(batch)
        held += batch.num_rows
        while held >= rows:
            table = pa.Table.from_batches(pending).combine_chunks()
            yield table.slice(0, rows).to_batches()[0]
            rest = table.slice(rows)
            pending = rest.to_batches()
            held = rest.num_rows
    if held:
        tail = pa.Table.from_batches(pending).combine_chunks().to_batches()
        yield from tail


def _score_batch(
    batch: pa.RecordBatch, offset: int, source: _Input, model: _Model, schema: pa.Schema
) -> pa.RecordBatch:
    typed: dict[str, pa.Array] = {}
    for feature in model.features:
        if feature.name in batch.schema.names:
            column = batch.column(feature.name)
            typed[feature.name] = _typed(column, feature, offset, source)
        else:
            typed[feature.name] = pa.nulls(batch.num_rows, _ARROW_TYPES[feature.kind])
    frame = pd.DataFrame(
        {f.name: _model_input(typed[f.name], f.kind) for f in model.features},
        columns=[f.name for f in model.features],
    )
    outputs = _predict(model, frame)
    arrays = [typed.get(name, batch.column(name)) for name in batch.schema.names]
    return pa.RecordBatch.from_arrays([*arrays, *outputs], schema=schema)


def _typed(column: pa.Array, feature: _Feature, offset: int, source: _Input) -> pa.Array:
    """The column as the signature's Arrow type, or a DataValidationError naming it."""
    target = _ARROW_TYPES[feature.kind]
    if source.fmt == "csv" and feature.kind != "string":
        pattern = NUMBER_PATTERN if feature.kind == "double" else INTEGER_PATTERN
        valid = pc.fill_null(pc.match_substring_regex(column, pattern), True)
        if not pc.all(valid).as_py():
            _raise_bad_values(column, pc.invert(valid), feature, offset, source)
    try:
        converted = pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataValidationError(
            f"column '{feature.name}' of '{source.path}' has a value out of range for "
            f"{_describe(feature.kind)} in rows {offset + 1}-{offset + len(column)}: {exc}"
        ) from exc
    if feature.kind == "double":
        infinite = pc.fill_null(pc.is_inf(converted), False)
        if pc.any(infinite).as_py():
            _raise_bad_values(column, infinite, feature, offset, source, "infinite")
    if feature.kind == "long" and converted.null_count:
        _raise_bad_values(column, pc.is_null(converted), feature, offset, source, "missing")
    return converted


def _raise_bad_values(
    column: pa.Array,
    bad: pa.Array,
    feature: _Feature,
    offset: int,
    source: _Input,
    what: str | None = None,
) -> None:
    positions = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
    first = int(positions[0])
    problem = what or _not_a(feature.kind)
    example = column[first].as_py() if problem != "missing" else None
    raise DataValidationError(
        _bad_values_message(
            feature,
            source,
            problem,
            f"{len(positions)} {problem} value(s) in rows {offset + 1}-{offset + len(column)}",
            example,
            f"row {offset + first + 1}",
        )
    )


def _not_a(kind: str) -> str:
    return {"double": "non-numeric", "long": "non-integer", "string": "non-text"}[kind]


def _bad_values_message(
    feature: _Feature,
    source: _Input,
    problem: str,
    found: str,
    example: object,
    where: str | None,
) -> str:
    hint = {
        "missing": "the model takes this column as integers, which cannot be empty; fill the gaps",
        "infinite": "replace them with numbers or leave the cells empty",
    }.get(problem, "fix them, or leave the cells empty for a missing value")
    shown = " ".join(
        part
        for part in (
            f"e.g. {example!r}" if example is not None else "",
            f"at {where}" if where else "",
        )
        if part
    )
    return (
        f"column '{feature.name}' of '{source.path}' has {found}"
        + (f" ({shown})" if shown else "")
        + f"; {hint}"
    )


def _model_input(values: pa.Array, kind: str) -> np.ndarray:
    if kind == "string":
        # Object dtype with np.nan for gaps, as ingest hands training data to the model:
        # SimpleImputer recognises NaN but not None as missing in object columns.
        column = values.to_numpy(zero_copy_only=False).astype(object)
        column[pd.isna(column)] = np.nan
        return column
    if kind == "double":
        return values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return values.to_numpy(zero_copy_only=False)


def _predict(model: _Model, frame: pd.DataFrame) -> list[pa.Array]:
    try:
        # What Pipeline.predict and Pipeline.predict_proba each do (transform, then the final
        # step), with the transform done once: the same values as two pipeline calls.
        steps = len(model.pipeline.steps)
        transformed = model.pipeline[:-1].transform(frame) if steps > 1 else frame
        estimator = model.pipeline[-1]
        labels = np.asarray(estimator.predict(transformed))
        probabilities = (
            np.asarray(estimator.predict_proba(transformed), dtype=np.float64)
            if model.has_proba
            else None
        )
    except ValueError as exc:
        raise DataValidationError(f"the model refused the input: {exc}") from exc
    if model.classes is None:
        return [pa.array(labels.astype(np.float64, copy=False), pa.float64())]
    # str() of each label, as MLflow's string result type does in the Spark engine.
    outputs = [pa.array([str(label) for label in labels.tolist()], pa.string())]
    if probabilities is not None:
        outputs += [pa.array(probabilities[:, i]) for i in range(probabilities.shape[1])]
    return outputs


# --- spark engine ---------------------------------------------------------------------------


def _score_spark(
    source: _Input,
    model: _Model,
    schema: pa.Schema,
    partial: Path,
    request: ScoreRequest,
    tmp: Path,
) -> int:
    spark = _spark_session(request.progress)  # first: a clear error if pyspark is missing
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    # Arrow batches of chunk_rows rows: the same model calls as the pandas engine's chunks
    # within a partition.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(request.chunk_rows))
    parts = partial.with_name(f"{partial.name}.spark")
    try:
        with warnings.catch_warnings():
            # pyspark 4.3 warns on every pandas UDF that pandas 3 is not fully supported;
            # what this engine uses (Arrow iterator UDFs) is covered by its equality test.
            warnings.filterwarnings("ignore", "PySpark does not yet fully support pandas")
            frame = _spark_read(spark, source)
            features = _spark_features(frame, source, model)
            scored = _spark_predictions(spark, frame, features, source, model, tmp)
            scored.write.parquet(str(parts))
        checks = [check for check, _ in features.checks]
        return _merge_parts(parts, partial, schema, request.chunk_rows, checks, source)
    except (PySparkException, Py4JJavaError) as exc:
        raise PipelineError(f"Spark could not score '{source.path}': {_first_line(exc)}") from exc
    finally:
        shutil.rmtree(parts, ignore_errors=True)


def _spark_session(progress: bool) -> SparkSession:
    """The process's local Spark session (created once; later calls reuse it)."""
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ConfigError(
            "the spark engine needs pyspark: pip install -e '.[spark]' (and Java 17)"
        ) from exc
    # Spark's Python workers must run this interpreter (the venv's), not the first python3
    # on PATH; loopback only, and no warning that the hostname resolves to it.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.master(SPARK_MASTER).appName("pipeline-score")
    for key, value in SPARK_CONF.items():
        builder = builder.config(key, value)
    show = progress and sys.stderr.isatty()
    builder = builder.config("spark.ui.showConsoleProgress", str(show).lower())
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def stop_spark() -> None:
    """Stop the Spark session `run` started in this process, and its JVM.

    `SparkSession.stop` leaves the JVM running until Python exits; tests and the benchmark
    want its memory back as soon as they are done with Spark.
    """
    try:
        from pyspark import SparkContext
        from pyspark.sql import SparkSession
    except ImportError:
        return
    session = SparkSession.getActiveSession()
    if session is not None:
        session.stop()
    gateway = SparkContext._gateway
    if gateway is None:
        return
    gateway.shutdown()
    process = getattr(gateway, "proc", None)
    if process is not None:
        process.stdin.close()  # the launcher exits when its stdin closes
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    SparkContext._gateway = None
    SparkContext._jvm = None


def _spark_read(spark: SparkSession, source: _Input) -> DataFrame:
    from pyspark.sql import functions as sf
    from pyspark.sql.types import StringType, StructField, StructType

    if source.fmt == "parquet":
        frames = [spark.read.parquet(str(part)) for part in source.files]
        # One read per part, unioned in name order: Spark packs the files of one directory
        # read largest first, which would reorder the rows against the pandas engine.
        frame = frames[0]
        for other in frames[1:]:
            frame = frame.unionByName(other)
        return frame
    names = source.schema.names
    raw = (
        spark.read.schema(StructType([StructField(n, StringType()) for n in names]))
        .option("header", True)
        .option("mode", "FAILFAST")
        .option("escape", '"')  # RFC 4180 quotes, as Arrow reads them (Spark's default is \)
        .csv(str(source.path))
    )
    nulls = list(NULL_MARKERS)
    return raw.select(
        *[sf.when(_col(n).isin(nulls), sf.lit(None)).otherwise(_col(n)).alias(n) for n in names]
    )


@dataclass(frozen=True)
class _SparkCheck:
    feature: _Feature
    problem: str
    column: str
    """Hidden output column: null where the value is fine, else the offending text."""


@dataclass(frozen=True)
class _SparkFeatures:
    output: dict[str, Column]
    """Feature columns as written: the signature's types, null where a value is bad."""
    checks: list[tuple[_SparkCheck, Column]]


def _spark_features(frame: DataFrame, source: _Input, model: _Model) -> _SparkFeatures:
    """Typed feature columns and their checks, computed in the scoring job itself.

    A separate validation pass would parse the whole input a second time; instead every bad
    value is flagged in a hidden column and `_merge_parts` refuses to publish the result.
    """
    from pyspark.sql import functions as sf

    output: dict[str, Column] = {}
    checks: list[tuple[_SparkCheck, Column]] = []

    def check(feature: _Feature, problem: str, bad: Column) -> None:
        name = f"__check_{len(checks)}_{uuid.uuid4().hex[:8]}"
        example = sf.coalesce(_col(feature.name).cast("string"), sf.lit(""))
        checks.append((_SparkCheck(feature, problem, name), sf.when(bad, example)))

    for feature in model.features:
        if feature.name not in frame.columns:
            continue
        raw = _col(feature.name)
        if source.fmt == "csv" and feature.kind != "string":
            pattern = NUMBER_PATTERN if feature.kind == "double" else INTEGER_PATTERN
            value = sf.when(raw.rlike(pattern), raw.try_cast(_SPARK_TYPES[feature.kind]))
            check(feature, _not_a(feature.kind), raw.isNotNull() & value.isNull())
        else:
            value = raw.cast(_SPARK_TYPES[feature.kind])
        if feature.kind == "double":
            check(feature, "infinite", _is_infinite(value))
        if feature.kind == "long":
            check(feature, "missing", value.isNull())
        output[feature.name] = value
    return _SparkFeatures(output=output, checks=checks)


def _is_infinite(value: Column) -> Column:
    from pyspark.sql import functions as sf

    return sf.abs(value) == sf.lit(float("inf"))


def _spark_model_input(feature: _Feature, present: bool) -> Column:
    """What the model is given for one feature of the typed frame.

    Bad values are replaced so the UDF cannot fail on them; the checks then refuse the whole
    result, so such predictions are never published.
    """
    from pyspark.sql import functions as sf

    if not present:
        return sf.lit(None).cast(_SPARK_TYPES[feature.kind])
    value = _col(feature.name)
    if feature.kind == "double":
        return sf.when(~_is_infinite(value), value)
    if feature.kind == "long":
        # MLflow refuses a bigint column with gaps before the model sees it.
        return sf.coalesce(value, sf.lit(0).cast("bigint"))
    return value


def _spark_predictions(
    spark: SparkSession,
    frame: DataFrame,
    features: _SparkFeatures,
    source: _Input,
    model: _Model,
    tmp: Path,
) -> DataFrame:
    """The scored frame: input columns (features typed), prediction, probabilities, checks.

    MLflow's sklearn loader refuses skops files unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is
    true, because it trusts the type list written in the artifact's own MLmodel. The flag is
    therefore given only to the UDF's workers (spark_udf's `extra_env`), never to this
    process, and only for the local copy that `_load` downloaded and `model_io` checked; the
    list MLflow will trust is checked against the same allow-list first.
    """
    from pyspark.sql import functions as sf

    _check_pyfunc_loader(model)
    # Typed columns and checks in one projection, the model's calls on top of it: written as
    # one expression, Spark would parse and check every value again for each UDF's input.
    typed = frame.select(
        *[features.output.get(name, _col(name)).alias(name) for name in source.schema.names],
        *[expression.alias(check.column) for check, expression in features.checks],
    )
    present = set(source.schema.names)
    inputs = sf.struct(
        *[_spark_model_input(f, f.name in present).alias(f.name) for f in model.features]
    )
    kept = [_col(name) for name in source.schema.names]
    hidden = [_col(check.column) for check, _ in features.checks]
    udf = _spark_udf(spark, model.local_dir, "double" if model.classes is None else "string")
    if not model.has_proba:
        return typed.select(*kept, udf(inputs).alias(PREDICTION), *hidden)
    proba_udf = _spark_udf(spark, _with_predict_fn(model.local_dir, tmp), "array<double>")
    proba = f"__proba_{uuid.uuid4().hex}"
    scored = typed.select(
        *kept, udf(inputs).alias(PREDICTION), proba_udf(inputs).alias(proba), *hidden
    )
    return scored.select(
        *[_col(name) for name in (*source.schema.names, PREDICTION)],
        *[
            sf.col(proba).getItem(i).alias(f"{PROBA_PREFIX}{label}")
            for i, label in enumerate(model.classes or ())
        ],
        *hidden,
    )


def _spark_udf(spark: SparkSession, model_dir: Path, result_type: str) -> Callable[..., Column]:
    import mlflow.pyfunc

    udf: Callable[..., Column] = mlflow.pyfunc.spark_udf(
        spark,
        str(model_dir),
        result_type=result_type,
        env_manager="local",
        extra_env=_ALLOW_DESERIALIZATION,
    )
    return udf


def _check_pyfunc_loader(model: _Model) -> None:
    flavors = Model.load(str(model.local_dir / "MLmodel")).flavors
    pyfunc = flavors.get("python_function", {})
    sklearn = flavors.get("sklearn", {})
    trusted = sklearn.get("skops_trusted_types") or []
    foreign = [t for t in trusted if not t.startswith(model_io.TRUSTED_MODULE_PREFIXES)]
    if pyfunc.get("loader_module") != "mlflow.sklearn" or pyfunc.get("code") or foreign:
        raise RegistryError(
            f"model '{model.uri}' loads through {pyfunc.get('loader_module')!r} with code "
            f"{pyfunc.get('code')!r} and trusts {foreign or 'no foreign types'}; the spark "
            "engine runs only plain scikit-learn skops models"
        )


def _with_predict_fn(model_dir: Path, tmp: Path) -> Path:
    """A copy of the model whose pyfunc calls predict_proba: MLflow's `pyfunc_predict_fn`."""
    copy = tmp / "model-predict_proba"
    if not copy.exists():
        shutil.copytree(model_dir, copy)
        meta = Model.load(str(copy / "MLmodel"))
        meta.flavors["python_function"]["predict_fn"] = "predict_proba"
        meta.save(str(copy / "MLmodel"))
    return copy


def _merge_parts(
    parts: Path,
    partial: Path,
    schema: pa.Schema,
    chunk_rows: int,
    checks: Sequence[_SparkCheck],
    source: _Input,
) -> int:
    """Spark's part files, in partition order, as one Parquet file with the output schema."""
    files = sorted(parts.glob("part-*.parquet"))
    _raise_failed_checks(files, checks, source)
    rows = 0
    with pq.ParquetWriter(partial, schema) as writer:
        for part in files:
            with pq.ParquetFile(part) as handle:
                for batch in handle.iter_batches(batch_size=chunk_rows, columns=schema.names):
                    writer.write_table(pa.Table.from_batches([batch]).cast(schema))
                    rows += batch.num_rows
    return rows


def _raise_failed_checks(
    files: Sequence[Path], checks: Sequence[_SparkCheck], source: _Input
) -> None:
    if not checks:
        return
    counts = [0] * len(checks)
    examples: list[str | None] = [None] * len(checks)
    for part in files:
        flags = pq.read_table(part, columns=[check.column for check in checks])
        for index, check in enumerate(checks):
            column = flags.column(check.column)
            found = len(column) - column.null_count
            if found and examples[index] is None:
                examples[index] = pc.drop_null(column)[0].as_py()
            counts[index] += found
    for check, count, example in zip(checks, counts, examples, strict=True):
        if count:
            raise DataValidationError(
                _bad_values_message(
                    check.feature,
                    source,
                    check.problem,
                    f"{count} {check.problem} value(s)",
                    None if check.problem == "missing" else example,
                    None,
                )
            )


def _col(name: str) -> Column:
    from pyspark.sql import functions as sf

    # Backticks: a dot in a column name is not a struct field access.
    return sf.col("`" + name.replace("`", "``") + "`")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
