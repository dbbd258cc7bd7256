"""The request's own checks fail before any file or registry is touched."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.scoring.request import ScoreRequest, check_request


def _request(tmp_path: Path, **options: object) -> ScoreRequest:
    fields: dict[str, object] = {
        "input_path": tmp_path / "rows.csv",
        "output_path": tmp_path / "scores.parquet",
        "name": "iris",
        **options,
    }
    return ScoreRequest(**fields)  # type: ignore[arg-type]


def test_a_sound_request_passes(tmp_path: Path) -> None:
    check_request(_request(tmp_path))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"engine": "dask"}, "engine 'dask' is unknown; choose one of ['pandas', 'spark']"),
        ({"chunk_rows": 0}, "chunk_rows must be a positive number of rows, got 0"),
        ({"chunk_rows": True}, "chunk_rows must be a positive number of rows, got True"),
    ],
)
def test_an_unknown_engine_or_a_bad_chunk_size_is_refused_by_name(
    tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        check_request(_request(tmp_path, **options))
    assert str(raised.value) == message
    assert raised.value.exit_code == 2


def test_an_output_that_is_a_directory_or_the_input_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory; pass a file path"):
        check_request(_request(tmp_path, output_path=tmp_path))
    same = tmp_path / "rows.csv"
    with pytest.raises(ConfigError, match="is the input file; choose another output path"):
        check_request(_request(tmp_path, output_path=same))
