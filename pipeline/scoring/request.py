"""What a batch-scoring run is asked to do, and the checks on the request itself."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import ConfigError

Engine = Literal["pandas", "spark"]
ENGINES: tuple[str, ...] = ("pandas", "spark")
DEFAULT_CHUNK_ROWS = 100_000


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


def check_request(request: ScoreRequest) -> None:
    """Refuse an engine, chunk size or output path that cannot work, before any I/O."""
    if request.engine not in ENGINES:
        raise ConfigError(f"engine '{request.engine}' is unknown; choose one of {list(ENGINES)}")
    if isinstance(request.chunk_rows, bool) or request.chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be a positive number of rows, got {request.chunk_rows}")
    output = Path(request.output_path)
    if output.is_dir():
        raise ConfigError(f"output '{output}' is a directory; pass a file path like scores.parquet")
    if output.resolve() == Path(request.input_path).resolve():
        raise ConfigError(f"output '{output}' is the input file; choose another output path")
