"""Values outside the training domain: answered, but flagged per row and counted. No HTTP.

The domain is ``pipeline.contracts.InputDomain``, read from the version's run artifact
``INPUT_DOMAIN_ARTIFACT`` when the model is loaded (a version without it flags nothing). The
check is vectorised over a request's frame: only flagged cells go through
``ColumnDomain.outside`` to word their message.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.artifacts import download_artifacts

from pipeline.contracts import INPUT_DOMAIN_ARTIFACT, ColumnDomain, InputDomain

logger = logging.getLogger(__name__)

RowWarnings = dict[int, list[str]]
"""Row index -> the messages for that row's values outside the training domain."""


def load_domain(run_id: str | None, tracking_uri: str, label: str) -> InputDomain | None:
    """The training domain logged with the version's run, or None when there is none (or it
    cannot be read: flags are advice, so a model without them still serves)."""
    if run_id is None:
        return None
    with tempfile.TemporaryDirectory(prefix="serving-domain-") as tmp:
        try:
            path = download_artifacts(
                run_id=run_id,
                artifact_path=INPUT_DOMAIN_ARTIFACT,
                dst_path=tmp,
                tracking_uri=tracking_uri,
            )
            document = json.loads(Path(path).read_text())
        except Exception:  # absent for versions trained before it was written
            logger.info("%s has no readable %s: no input flags", label, INPUT_DOMAIN_ARTIFACT)
            return None
    try:
        return InputDomain.from_json(document)
    except (ValueError, TypeError) as exc:
        logger.warning(
            "%s: %s is malformed (%s): no input flags", label, INPUT_DOMAIN_ARTIFACT, exc
        )
        return None


def frame_warnings(domain: InputDomain | None, frame: pd.DataFrame) -> RowWarnings:
    """The flags of every row of ``frame`` (built as the model takes it), vectorised."""
    flagged: RowWarnings = {}
    if domain is None:
        return flagged
    for name, column in domain.columns.items():
        if name not in frame.columns:
            continue
        values = frame[name]
        for row in np.flatnonzero(_outside_mask(column, values)).tolist():
            message = column.outside(_native(values.iloc[row]))
            if message is not None:
                flagged.setdefault(row, []).append(message)
    return flagged


def record_warnings(
    domain: InputDomain | None, records: Sequence[Mapping[str, Any]]
) -> RowWarnings:
    """The flags of each record (the record way: a few rows, as dicts)."""
    if domain is None:
        return {}
    flagged: RowWarnings = {}
    for row, record in enumerate(records):
        messages = domain.warnings(record)
        if messages:
            flagged[row] = messages
    return flagged


def with_warnings(rows: list[dict[str, Any]], flags: RowWarnings) -> list[dict[str, Any]]:
    """``rows`` with a ``warnings`` list on each flagged one (copies: the originals may be
    queued for the prediction log)."""
    if not flags:
        return rows
    return [
        {**row, "warnings": flags[index]} if index in flags else row
        for index, row in enumerate(rows)
    ]


def flagged_columns(flags: RowWarnings) -> list[str]:
    """The column each flag names (its message starts with 'column: '), for the metrics."""
    return [message.split(":", 1)[0] for messages in flags.values() for message in messages]


def _outside_mask(column: ColumnDomain, values: pd.Series) -> np.ndarray:
    if column.categories is not None:
        present = values.notna().to_numpy()
        known = values.astype(str).isin(column.categories).to_numpy()
        return present & ~known
    if column.low is None or column.high is None or values.dtype.kind not in "iuf":
        return np.zeros(len(values), dtype=bool)
    numbers = values.to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        return (numbers < column.low) | (numbers > column.high)


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
