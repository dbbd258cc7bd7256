"""The pandas engine: the input streamed in chunks, each typed, predicted and appended.

The input is read by pyarrow's CSV reader (re-cut into `chunk_rows`-row batches) or as
Parquet batches; each chunk becomes one row group of a Parquet writer, so memory is bounded
by the chunk, not the file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from tqdm import tqdm

from pipeline.errors import DataValidationError
from pipeline.scoring.columns import (
    ARROW_TYPES,
    INTEGER_PATTERN,
    NULL_MARKERS,
    NUMBER_PATTERN,
    bad_values_message,
    describe,
    not_a,
)
from pipeline.scoring.model import Feature, FeatureKind, LoadedModel
from pipeline.scoring.source import Source


def score(
    source: Source,
    model: LoadedModel,
    schema: pa.Schema,
    partial: Path,
    chunk_rows: int,
    progress: bool,
) -> int:
    """Score `source` into the Parquet file `partial` with `schema`; the number of rows."""
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
            disable=None if progress else True,
            leave=False,
        ) as bar,
    ):
        for batch in _input_batches(source, chunk_rows):
            writer.write_batch(_score_batch(batch, rows, source, model, schema))
            rows += batch.num_rows
            bar.update(batch.num_rows)
    return rows


def _input_batches(source: Source, chunk_rows: int) -> Iterator[pa.RecordBatch]:
    if source.fmt == "parquet":
        for part in source.files:
            with pq.ParquetFile(part) as handle:
                for batch in handle.iter_batches(batch_size=chunk_rows):
                    yield batch.replace_schema_metadata(None)
        return
    yield from _rebatch(_csv_batches(source), chunk_rows)


def _csv_batches(source: Source) -> Iterator[pa.RecordBatch]:
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
    batch: pa.RecordBatch, offset: int, source: Source, model: LoadedModel, schema: pa.Schema
) -> pa.RecordBatch:
    typed: dict[str, pa.Array] = {}
    for feature in model.features:
        if feature.name in batch.schema.names:
            column = batch.column(feature.name)
            typed[feature.name] = _typed(column, feature, offset, source)
        else:
            typed[feature.name] = pa.nulls(batch.num_rows, ARROW_TYPES[feature.kind])
    frame = pd.DataFrame(
        {f.name: _model_input(typed[f.name], f.kind) for f in model.features},
        columns=[f.name for f in model.features],
    )
    outputs = _predict(model, frame)
    arrays = [typed.get(name, batch.column(name)) for name in batch.schema.names]
    return pa.RecordBatch.from_arrays([*arrays, *outputs], schema=schema)


def _typed(column: pa.Array, feature: Feature, offset: int, source: Source) -> pa.Array:
    """The column as the signature's Arrow type, or a DataValidationError naming it."""
    if source.fmt == "csv" and feature.kind != "string":
        _check_number_text(column, feature, offset, source)
    try:
        converted = pc.cast(column, ARROW_TYPES[feature.kind])
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise DataValidationError(
            f"column '{feature.name}' of '{source.path}' has a value out of range for "
            f"{describe(feature.kind)} in rows {offset + 1}-{offset + len(column)}: {exc}"
        ) from exc
    if feature.kind == "double":
        infinite = pc.fill_null(pc.is_inf(converted), False)
        if pc.any(infinite).as_py():
            _raise_bad_values(column, infinite, feature, offset, source, "infinite")
    if feature.kind == "long" and converted.null_count:
        _raise_bad_values(column, pc.is_null(converted), feature, offset, source, "missing")
    return converted


def _check_number_text(column: pa.Array, feature: Feature, offset: int, source: Source) -> None:
    # The pattern, not Arrow's cast, decides: the Spark engine applies the same one.
    pattern = NUMBER_PATTERN if feature.kind == "double" else INTEGER_PATTERN
    valid = pc.fill_null(pc.match_substring_regex(column, pattern), True)
    if not pc.all(valid).as_py():
        _raise_bad_values(column, pc.invert(valid), feature, offset, source)


def _raise_bad_values(
    column: pa.Array,
    bad: pa.Array,
    feature: Feature,
    offset: int,
    source: Source,
    what: str | None = None,
) -> None:
    positions = np.flatnonzero(bad.to_numpy(zero_copy_only=False))
    first = int(positions[0])
    problem = what or not_a(feature.kind)
    example = column[first].as_py() if problem != "missing" else None
    raise DataValidationError(
        bad_values_message(
            feature,
            source,
            problem,
            f"{len(positions)} {problem} value(s) in rows {offset + 1}-{offset + len(column)}",
            example,
            f"row {offset + first + 1}",
        )
    )


def _model_input(values: pa.Array, kind: FeatureKind) -> np.ndarray:
    if kind == "string":
        # Object dtype with np.nan for gaps, as ingest hands training data to the model:
        # SimpleImputer recognises NaN but not None as missing in object columns.
        column = values.to_numpy(zero_copy_only=False).astype(object)
        column[pd.isna(column)] = np.nan
        return column
    if kind == "double":
        return values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return values.to_numpy(zero_copy_only=False)


def _predict(model: LoadedModel, frame: pd.DataFrame) -> list[pa.Array]:
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
