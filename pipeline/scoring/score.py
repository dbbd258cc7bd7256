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

This module wires the parts, each in its own module: `request` (what is asked), `source`
(the input's files and columns), `model` (which version, loaded once and checked), `columns`
(input columns against the signature) and the two engines.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pipeline.scoring import model as scoring_model
from pipeline.scoring import pandas_engine, spark_engine
from pipeline.scoring.columns import check_columns, output_schema
from pipeline.scoring.request import DEFAULT_CHUNK_ROWS, ScoreRequest, check_request
from pipeline.scoring.source import open_source

# The CLI and the benchmark build a request through this module, the one entry of the room.
__all__ = ["DEFAULT_CHUNK_ROWS", "ScoreRequest", "ScoreResult", "run"]

logger = logging.getLogger(__name__)


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


def run(request: ScoreRequest) -> ScoreResult:
    """Score `request.input_path` with the model and write `request.output_path` (Parquet)."""
    started = time.perf_counter()
    check_request(request)
    source = open_source(Path(request.input_path))
    uri, version = scoring_model.resolve_model_uri(request.model_uri, request.name)
    with tempfile.TemporaryDirectory(prefix="score-") as tmp:
        model = scoring_model.load(uri, version, Path(tmp))
        check_columns(source, model)
        schema = output_schema(source, model)
        output = Path(request.output_path)
        output.parent.mkdir(parents=True, exist_ok=True)
        with _written_atomically(output) as partial:
            if request.engine == "spark":
                rows = spark_engine.score(
                    source, model, schema, partial, request.chunk_rows, request.progress, Path(tmp)
                )
            else:
                rows = pandas_engine.score(
                    source, model, schema, partial, request.chunk_rows, request.progress
                )
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


@contextmanager
def _written_atomically(output: Path) -> Iterator[Path]:
    """Yield a temporary path beside `output`; rename it to `output` only on success."""
    partial = output.with_name(f".{output.name}.{uuid.uuid4().hex}.partial")
    try:
        yield partial
        os.replace(partial, output)
    finally:
        partial.unlink(missing_ok=True)
