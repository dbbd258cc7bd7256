"""Opening the input reads headers and footers only, and names what is wrong with it."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import DataValidationError
from pipeline.scoring.source import open_source


def test_a_csv_is_opened_with_every_column_as_text_and_no_row_count(tmp_path: Path) -> None:
    path = tmp_path / "rows.csv"
    path.write_text("\ufeffa,b\n1,x\n", encoding="utf-8")
    source = open_source(path)
    assert (source.fmt, source.files, source.rows) == ("csv", (path,), None)
    assert source.schema == pa.schema([("a", pa.string()), ("b", pa.string())])


def test_a_directory_of_parts_is_read_in_name_order_skipping_hidden_files(tmp_path: Path) -> None:
    for name, rows in (("part-1.parquet", 3), ("part-0.parquet", 2), ("_SUCCESS.parquet", 9)):
        pq.write_table(pa.table({"a": list(range(rows))}), tmp_path / name)
    source = open_source(tmp_path)
    assert [p.name for p in source.files] == ["part-0.parquet", "part-1.parquet"]
    assert (source.fmt, source.rows) == ("parquet", 5)


def test_parts_with_different_schemas_are_refused(tmp_path: Path) -> None:
    pq.write_table(pa.table({"a": [1]}), tmp_path / "part-0.parquet")
    pq.write_table(pa.table({"a": ["x"]}), tmp_path / "part-1.parquet")
    with pytest.raises(DataValidationError, match="all parts must share one schema"):
        open_source(tmp_path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("empty.csv", "", "is empty; it needs a header row"),
        ("twice.csv", "a,b,a\n", "repeats the column(s) 'a' in its header"),
        ("rows.txt", "a\n", "is neither .csv nor .parquet"),
        ("broken.parquet", "not parquet", "is not a readable Parquet file"),
    ],
)
def test_an_unreadable_input_is_named_with_what_to_do(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataValidationError) as raised:
        open_source(path)
    assert message in str(raised.value)
    assert raised.value.exit_code == 3


def test_a_missing_file_and_an_empty_directory_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="not found; pass an existing file"):
        open_source(tmp_path / "nothing.csv")
    with pytest.raises(DataValidationError, match=r"holds no \.parquet files"):
        open_source(tmp_path)
