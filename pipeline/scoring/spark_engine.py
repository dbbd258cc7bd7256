"""The Spark engine: a local Spark session reads the input, MLflow's `spark_udf` predicts.

The model runs through `mlflow.pyfunc.spark_udf`, i.e. MLflow's own loader inside Spark's
Python workers, on the local copy `model.load` downloaded and checked. The result is the
pandas engine's file: the same columns, types and values, row for row in input order.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from mlflow.models import Model

from pipeline.contracts import PROBA_PREFIX, refused_types
from pipeline.errors import ConfigError, DataValidationError, PipelineError, RegistryError
from pipeline.scoring.columns import (
    INTEGER_PATTERN,
    NULL_MARKERS,
    NUMBER_PATTERN,
    PREDICTION,
    bad_values_message,
    not_a,
)
from pipeline.scoring.model import Feature, LoadedModel
from pipeline.scoring.source import Source

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

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


def score(
    source: Source,
    model: LoadedModel,
    schema: pa.Schema,
    partial: Path,
    chunk_rows: int,
    progress: bool,
    tmp: Path,
) -> int:
    """Score `source` into the Parquet file `partial` with `schema`; the number of rows.

    `tmp` is the run's temporary directory, where the model's predict_proba copy is made.
    """
    spark = _spark_session(progress)  # first: a clear error if pyspark is missing
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    # Arrow batches of chunk_rows rows: the same model calls as the pandas engine's chunks
    # within a partition.
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", str(chunk_rows))
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
        return _merge_parts(parts, partial, schema, chunk_rows, checks, source)
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
    """Stop the Spark session `score` started in this process, and its JVM.

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


def _spark_read(spark: SparkSession, source: Source) -> DataFrame:
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
    feature: Feature
    problem: str
    column: str
    """Hidden output column: null where the value is fine, else the offending text."""


@dataclass(frozen=True)
class _SparkFeatures:
    output: dict[str, Column]
    """Feature columns as written: the signature's types, null where a value is bad."""
    checks: list[tuple[_SparkCheck, Column]]


def _spark_features(frame: DataFrame, source: Source, model: LoadedModel) -> _SparkFeatures:
    """Typed feature columns and their checks, computed in the scoring job itself.

    A separate validation pass would parse the whole input a second time; instead every bad
    value is flagged in a hidden column and `_merge_parts` refuses to publish the result.
    """
    from pyspark.sql import functions as sf

    output: dict[str, Column] = {}
    checks: list[tuple[_SparkCheck, Column]] = []

    def check(feature: Feature, problem: str, bad: Column) -> None:
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
            check(feature, not_a(feature.kind), raw.isNotNull() & value.isNull())
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


def _spark_model_input(feature: Feature, present: bool) -> Column:
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
    source: Source,
    model: LoadedModel,
    tmp: Path,
) -> DataFrame:
    """The scored frame: input columns (features typed), prediction, probabilities, checks.

    MLflow's sklearn loader refuses skops files unless MLFLOW_ALLOW_PICKLE_DESERIALIZATION is
    true, because it trusts the type list written in the artifact's own MLmodel. The flag is
    therefore given only to the UDF's workers (spark_udf's `extra_env`), never to this
    process, and only for the local copy that `model.load` downloaded and `model_io` checked; the
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


def _check_pyfunc_loader(model: LoadedModel) -> None:
    flavors = Model.load(str(model.local_dir / "MLmodel")).flavors
    pyfunc = flavors.get("python_function", {})
    sklearn = flavors.get("sklearn", {})
    trusted = sklearn.get("skops_trusted_types") or []
    foreign = refused_types(trusted)
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
    source: Source,
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
    files: Sequence[Path], checks: Sequence[_SparkCheck], source: Source
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
                bad_values_message(
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
