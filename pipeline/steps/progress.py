"""Progress bars on the terminal for searches and long steps, silent when not a TTY."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")


def bar(
    items: Iterable[T], *, total: int | None = None, desc: str, unit: str = "it"
) -> Iterator[T]:
    """Wrap `items` in a bar on stderr; logs and pipes (CI, `mlflow run` captures) get none."""
    # disable=None is tqdm's "only on a TTY": CI logs stay free of carriage-return noise.
    yield from tqdm(
        items, total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, leave=False
    )
