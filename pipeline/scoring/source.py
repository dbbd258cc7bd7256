"""The input of a scoring run: a CSV file, a Parquet file or a directory of Parquet parts.

Only headers and footers are read here; the rows are streamed later by an engine.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import DataValidationError

CSV_SUFFIXES = frozenset({".csv"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})


@dataclass(frozen=True)
class Source:
    path: Path
    fmt: Literal["csv", "parquet"]
    files: tuple[Path, ...]
    """The file itself, or the Parquet parts of a directory in name order."""
    schema: pa.Schema
    rows: int | None
    """Known up front for Parquet (footer metadata); None for CSV."""


def open_source(path: Path) -> Source:
    """The input's format, files and columns (CSV columns are all text), or a readable error."""
    if path.is_dir():
        return _parquet_directory(path)
    if not path.is_file():
        raise DataValidationError(f"input file '{path}' not found; pass an existing file")
    if path.suffix.lower() in CSV_SUFFIXES:
        names = _csv_header(path)
        schema = pa.schema([(name, pa.string()) for name in names])
        return Source(path=path, fmt="csv", files=(path,), schema=schema, rows=None)
    if path.suffix.lower() in PARQUET_SUFFIXES:
        return _parquet_source(path, (path,))
    raise DataValidationError(
        f"input '{path}' is neither .csv nor .parquet; convert it or rename it with its format"
    )


def _parquet_directory(path: Path) -> Source:
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
    return _parquet_source(path, parts)


def _parquet_source(path: Path, parts: tuple[Path, ...]) -> Source:
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
    return Source(path=path, fmt="parquet", files=parts, schema=schema, rows=rows)


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
